"""The run-folder layout: the one place that knows every file of a run and of an experiment.

A sweep folder holds ``sweep.json`` and one experiment folder per job
(``jobs/<id>/``, with ``job.json``, ``log.txt`` and, when finished, ``job.done``).
An experiment folder (``OUT``) holds ``experiment.json``, ``results.md``,
``summary.json``, ``report.html`` and one folder per run::

    OUT/<algorithm>[_<key><value>...][_hp<h>]/target-<i>-<domain>/seed<s>/   (_hp<h>: hparams seed h != 0)
        config.json        spec, training settings, DomainBed args, hparams, stages, domains, classes
        results.jsonl      one record per evaluation (see :mod:`vl2v.runs.records`)
        final.json         the run's summary (selected checkpoint, SWAD, teacher bill, times)
        done               written last: the run is finished (as in DomainBed)
        model.safetensors  the selected checkpoint (training-domain validation)
        swad.safetensors   the SWAD average (``--swad``, when a loss valley was found)
        last.safetensors   the weights at the last step
        predictions.json   per-image predictions of the selected model on the target's "in" split
        export/            ``vl2v export`` output (default)
        checkpoints/       while training: last.pt (resume state), best.safetensors,
                           stage<i>_best.safetensors; removed when the run is final

:class:`RunDir` names these files and reads them; writers (the training loop)
take the paths from it, so no other module spells a file name of a run. A run's summary
(:func:`run_summary`: ``final.json``, or the same computed from its records) and its row label
(:func:`run_label`) are read here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, TypedDict

from vl2v.runs.selection import select_record, summarize
from vl2v.utils.io import read_jsonl


class RunConfig(TypedDict, total=False):
    """``config.json`` of a run (written by the training loop)."""

    spec: dict[str, Any]  # algorithm, target, trial_seed, hparams_seed, hparams ([key, value] pairs), drawn (idem)
    train: dict[str, Any]  # the TrainConfig
    args: dict[str, Any]  # DomainBed-style args (dataset, algorithm, test_envs, trial_seed, teacher_identity, ...)
    hparams: dict[str, Any]
    stages: list[dict[str, Any]]
    domains: list[str]
    classes: list[str]
    input_size: int
    world_size: int


class RunFinal(TypedDict, total=False):
    """``final.json`` of a finished run."""

    run_dir: str
    algorithm: str
    target: int
    target_name: str
    trial_seed: int
    selected: dict[str, Any]  # see vl2v.runs.selection.summarize
    swad: dict[str, Any]
    queries: dict[str, float]  # the store's counters over the run (what it asked; parallel runs: as if alone)
    # what the run needed from the teacher (distinct answers: its bill if alone), what this process paid for it,
    # and the store hits in between (see vl2v.training.bill.TeacherAccount.bill)
    teacher_bill: dict[str, Any]
    stage_seconds: dict[str, float]
    n_train_images: int
    wall_time: float


@dataclass
class RunData:
    """Everything readable from one run folder (missing files: ``None`` / empty)."""

    path: Path
    done: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    final: RunFinal | None = None
    config: RunConfig | None = None


def run_name(algorithm: str, hparams: Iterable[tuple[str, Any]], target: int, domains: Sequence[str],
             trial_seed: int, hparams_seed: int = 0) -> str:
    """``<algorithm>[_<key><value>...][_hp<h>]/target-<i>-<domain>/seed<s>`` (relative to the experiment folder).

    ``_hp<h>`` names a random hyperparameter draw (``hparams_seed`` h != 0); seed 0 (the defaults) adds nothing.
    """
    hp = "".join(f"_{k}{v}" for k, v in hparams) + (f"_hp{hparams_seed}" if hparams_seed else "")
    return f"{algorithm}{hp}/target-{target}-{domains[target]}/seed{trial_seed}"


def spec_options(spec: dict[str, Any]) -> dict[str, Any]:
    """A run's hyperparameters that differ from the defaults, from ``config.json``'s ``spec``: the
    draw of its hparams seed (``drawn``), then its explicit ``algo:key=value`` options over it."""
    return {**dict(spec.get("drawn") or []), **dict(spec.get("hparams") or [])}


def label(algorithm: str, hparams: Iterable[Sequence[Any]] = ()) -> str:
    """The row label of a run in tables and figures: ``adip`` or ``adip (lam=0.25)``."""
    hp = list(hparams or [])
    return algorithm + (" (" + ", ".join(f"{k}={v}" for k, v in hp) + ")" if hp else "")


def run_label(data: RunData) -> str:
    """:func:`label` from a run's config (the algorithm from its records if the config is missing)."""
    cfg = data.config or {}
    hp = cfg.get("spec", {}).get("hparams") or []
    name = cfg.get("args", {}).get("algorithm") or (data.records[0]["args"]["algorithm"] if data.records else "?")
    return label(name, hp)


def run_summary(run: str | Path | RunData) -> dict[str, Any] | None:
    """``final.json`` of a run, or the same summary computed from its records (marked ``incomplete``).

    Adds ``_domains`` and ``_dataset`` (and ``label`` where ``final.json`` has none); ``None`` for a run
    without records or summary.
    """
    data = run if isinstance(run, RunData) else RunDir(run).load()
    cfg = data.config or {}
    if data.final is not None:
        f = dict(data.final)
        f["_domains"] = cfg.get("domains")
        f["_dataset"] = data.records[0]["args"]["dataset"] if data.records else None
        f.setdefault("label", run_label(data))
        if "oracle" not in f and data.records:  # runs written before oracle selection was recorded
            f["oracle"] = summarize(select_record(data.records, "oracle"), "oracle")
        return f
    recs = data.records
    if not recs:
        return None
    rec = select_record(recs)
    args = rec["args"]
    out = {"algorithm": args["algorithm"], "label": run_label(data), "target": args["test_envs"][0],
           "trial_seed": args["trial_seed"], "selected": summarize(rec),
           "oracle": summarize(select_record(recs, "oracle"), "oracle"), "incomplete": True,
           "run_dir": str(data.path), "_domains": cfg.get("domains"), "_dataset": args["dataset"]}
    if args.get("novel_classes"):  # an unfinished novel-class run: its fold (its novel scores come at the end)
        out["novel"] = {"fold": args["novel_classes"].get("fold")}
    return out


class RunDir:
    """One run folder: the name of every file in it, and typed readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_spec(cls, out: str | Path, algorithm: str, hparams: Iterable[tuple[str, Any]], target: int,
                 domains: Sequence[str], trial_seed: int, hparams_seed: int = 0) -> "RunDir":
        return cls(Path(out) / run_name(algorithm, hparams, target, domains, trial_seed, hparams_seed))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ------------------------------------------------------------------ files
    @property
    def config_json(self) -> Path:
        return self.path / "config.json"

    @property
    def results_jsonl(self) -> Path:
        return self.path / "results.jsonl"

    @property
    def final_json(self) -> Path:
        return self.path / "final.json"

    @property
    def done(self) -> Path:
        return self.path / "done"

    @property
    def model(self) -> Path:
        """The selected checkpoint's weights."""
        return self.path / "model.safetensors"

    @property
    def swad(self) -> Path:
        return self.path / "swad.safetensors"

    @property
    def last_weights(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.json"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_state(self) -> Path:
        """Resume state (model, optimizer, sampler, RNGs), removed when the run is final."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The best checkpoint so far (moved to :attr:`model` when the run is final)."""
        return self.checkpoints / "best.safetensors"

    def stage_best(self, i: int) -> Path:
        return self.checkpoints / f"stage{i}_best.safetensors"

    def stage_bests(self) -> list[Path]:
        return list(self.checkpoints.glob("stage*_best.safetensors"))

    def temp_files(self) -> list[Path]:
        """Temporary files of interrupted atomic writes in ``checkpoints/``."""
        return list(self.checkpoints.glob(".*.tmp"))

    def weights(self, which: str = "selected") -> Path:
        """``"selected"``: :attr:`model`; ``"swad"``: :attr:`swad`."""
        return self.swad if which == "swad" else self.model

    @staticmethod
    def which_weights(path: str | Path) -> str:
        """Inverse of :meth:`weights` for a weights file name."""
        return "swad" if Path(path).name == "swad.safetensors" else "selected"

    # ---------------------------------------------------------------- readers
    def is_run(self) -> bool:
        """A run folder holds ``results.jsonl`` (what :func:`find_runs` looks for)."""
        return self.results_jsonl.exists()

    def is_done(self) -> bool:
        return self.done.exists()

    def has_config(self) -> bool:
        return self.config_json.exists()

    def config(self) -> RunConfig | None:
        return json.loads(self.config_json.read_text()) if self.config_json.exists() else None

    def final(self) -> RunFinal | None:
        return json.loads(self.final_json.read_text()) if self.final_json.exists() else None

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.results_jsonl) if self.results_jsonl.exists() else []

    def load_predictions(self) -> dict[str, Any] | None:
        return json.loads(self.predictions.read_text()) if self.predictions.exists() else None

    def load(self) -> RunData:
        """Records, config and final summary of the run."""
        return RunData(self.path, self.is_done(), self.records(), self.final(), self.config())

    def summary(self) -> dict[str, Any] | None:
        """``final.json``, or the same summary computed from the records (see :func:`run_summary`)."""
        return run_summary(self.load())


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder (holding ``results.jsonl``) under the given paths, sorted."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if RunDir(p).is_run():
            found.add(p)
        elif p.is_dir():
            found.update(q.parent for q in p.rglob(RunDir(p).results_jsonl.name))
        else:
            raise FileNotFoundError(f"{p} is not a run directory or a folder of runs")
    return sorted(found)


class ExperimentDir:
    """The top folder of ``vl2v train``/``compare`` (``--out``): its files and its runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ExperimentDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def experiment_json(self) -> Path:
        return self.path / "experiment.json"

    @property
    def results_md(self) -> Path:
        return self.path / "results.md"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def run(self, algorithm: str, hparams: Iterable[tuple[str, Any]], target: int, domains: Sequence[str],
            trial_seed: int, hparams_seed: int = 0) -> RunDir:
        return RunDir.for_spec(self.path, algorithm, hparams, target, domains, trial_seed, hparams_seed)

    def exists(self) -> bool:
        """An experiment folder holds ``experiment.json``."""
        return self.experiment_json.exists()

    def load(self) -> dict[str, Any]:
        """``experiment.json``: config, dataset, domains, classes, teacher, data_issues, world_size."""
        return json.loads(self.experiment_json.read_text())

    def load_config_dict(self) -> dict[str, Any]:
        """The ``ExperimentConfig`` as stored (``dataclasses.asdict``); KeyError/ValueError when unreadable."""
        return self.load()["config"]

    def find_runs(self) -> list[Path]:
        return find_runs([self.path])


class JobDir(ExperimentDir):
    """One sweep job: an experiment folder (the job's ``--out``) plus ``job.json``, ``job.done`` and ``log.txt``."""

    @property
    def job_json(self) -> Path:
        return self.path / "job.json"

    @property
    def job_done(self) -> Path:
        return self.path / "job.done"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    def is_done(self) -> bool:
        return self.job_done.exists()


class SweepDir:
    """A sweep folder: ``sweep.json``, ``jobs/<id>/`` (see :class:`JobDir`) and ``submitit/`` (SLURM logs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def sweep_json(self) -> Path:
        return self.path / "sweep.json"

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    def job(self, job_id: str) -> JobDir:
        return JobDir(self.path / "jobs" / job_id)
