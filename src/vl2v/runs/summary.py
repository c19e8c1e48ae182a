"""Runs grouped by dataset (for the tables, report and HTML report), and the choice among random
hyperparameter draws (DomainBed's training-domain selection across ``hparams_seed``). Run labels and the
summary of one run (:func:`label`, :func:`run_label`, :func:`run_summary`) are read with the run folder in
:mod:`vl2v.runs.layout` and re-exported here."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# label, run_label and run_summary live with the run folder's readers (RunDir.summary uses them); they stay
# importable from here
from vl2v.runs.layout import RunData, RunDir, find_runs, label, run_label, run_summary

__all__ = ["DatasetGroup", "HParamPick", "RunEntry", "collect_runs", "group_by_dataset", "label", "run_label",
           "run_summary", "select_hparams", "trial_key"]


@dataclass
class RunEntry:
    """One run as the reports see it: its folder, its files' contents and its summary."""

    run: RunDir
    data: RunData
    summary: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.data.config or {})

    @property
    def args(self) -> dict[str, Any]:
        return self.config.get("args") or (self.data.records[0]["args"] if self.data.records else {})

    @property
    def dataset(self) -> str:
        """The run's dataset; a novel-class benchmark's runs are a dataset of their own (other classes trained)."""
        name = self.summary.get("_dataset") or self.args.get("dataset") or "?"
        novel = self.args.get("novel_classes")
        return f"{name}, {novel['count']} classes held out (novel-class benchmark)" if novel else name

    @property
    def domains(self) -> list[str]:
        return list(self.summary.get("_domains") or self.config.get("domains") or [])

    @property
    def classes(self) -> list[str]:
        return list(self.config.get("classes") or [])

    @property
    def label(self) -> str:
        """The run's row label (its summary's, else the algorithm's name)."""
        return str(self.summary.get("label") or self.summary.get("algorithm"))

    @property
    def incomplete(self) -> bool:
        return bool(self.summary.get("incomplete"))

    @property
    def hparams_seed(self) -> int:
        return int(self.args.get("hparams_seed") or 0)

    @property
    def drawn(self) -> dict[str, Any]:
        """The hyperparameters drawn by the run's hparams seed (explicit options excluded; ``{}`` for seed 0)."""
        return dict(self.config.get("spec", {}).get("drawn") or [])

    @property
    def val_acc(self) -> float:
        """Training-domain validation accuracy of the run's selected checkpoint (``-inf`` if none)."""
        v = (self.summary.get("selected") or {}).get("val_acc")
        return float("-inf") if v is None else float(v)


@dataclass
class HParamPick:
    """The hyperparameter draw chosen for one (label, target, trial seed) among ``candidates`` hparams seeds."""

    label: str
    target: int
    trial_seed: int
    hparams_seed: int
    val_acc: float
    candidates: list[int]
    values: dict[str, Any]


def trial_key(summary: dict[str, Any]) -> int | tuple[int, int]:
    """A run's trial in the tables: its trial seed; in a novel-class benchmark ``(fold, trial seed)``, so the
    folds are trials of their own (each holds other classes out) and a mean runs over folds and seeds."""
    fold = (summary.get("novel") or {}).get("fold")
    return int(summary["trial_seed"]) if fold is None else (int(fold), int(summary["trial_seed"]))


def select_hparams(entries: Iterable[RunEntry]) -> tuple[list[RunEntry], list[HParamPick]]:
    """Per (label, target, trial seed), the run whose selected checkpoint has the best training-domain
    validation accuracy among its hparams seeds (DomainBed's ``collect_results``); ties go to the lowest seed.

    Runs are grouped by their label, which names only explicit ``algo:key=value`` options, so explicit
    variants (a lambda sweep) stay separate rows. Groups with a single hparams seed are kept whole, as
    they are. Returns the kept runs (in their order) and one :class:`HParamPick` per group that had a choice.
    """
    entries = list(entries)
    groups: dict[tuple, list[RunEntry]] = {}
    for e in entries:
        key = (e.label, int(e.summary["target"]), trial_key(e.summary))
        groups.setdefault(key, []).append(e)
    dropped: set[int] = set()
    picks: list[HParamPick] = []
    for (lab, t, s), es in groups.items():
        seeds = sorted({e.hparams_seed for e in es})
        if len(seeds) < 2:
            continue
        best = max(es, key=lambda e: (e.val_acc, -e.hparams_seed))
        dropped.update(id(e) for e in es if e is not best)
        picks.append(HParamPick(str(lab), t, int(best.summary["trial_seed"]), best.hparams_seed, best.val_acc, seeds,
                                best.drawn))
    return [e for e in entries if id(e) not in dropped], picks


def collect_runs(paths: Iterable[str | Path]) -> list[RunEntry]:
    """Every run under ``paths`` (see :func:`find_runs`) with a summary, in the order found."""
    out: list[RunEntry] = []
    for path in find_runs(list(paths)):
        rd = RunDir(path)
        data = rd.load()
        s = run_summary(data)
        if s is not None:
            out.append(RunEntry(rd, data, s))
    return out


@dataclass
class DatasetGroup:
    """The runs of one dataset; ``domains`` and ``classes`` from the first run that names them.

    ``entries``: every run; ``chosen``: the runs the tables show, one hyperparameter draw per
    (label, target, trial seed) where several hparams seeds ran (see :func:`select_hparams`), else all.
    """

    name: str
    domains: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    entries: list[RunEntry] = field(default_factory=list)

    @property
    def incomplete(self) -> int:
        return sum(e.incomplete for e in self.entries)

    @property
    def chosen(self) -> list[RunEntry]:
        return select_hparams(self.entries)[0]

    @property
    def picks(self) -> list[HParamPick]:
        return select_hparams(self.entries)[1]

    @property
    def finals(self) -> list[dict[str, Any]]:
        """Summaries of :attr:`chosen` (the tables' input)."""
        return [e.summary for e in self.chosen]

    def domain_names(self) -> list[str]:
        """``domains``, or the target indices as names when no run recorded its domains."""
        if self.domains:
            return self.domains
        return [str(i) for i in range(1 + max(int(e.summary["target"]) for e in self.entries))]


def group_by_dataset(entries: Iterable[RunEntry]) -> dict[str, DatasetGroup]:
    """Runs grouped by dataset, datasets in the order their first run is found."""
    groups: dict[str, DatasetGroup] = {}
    for e in entries:
        g = groups.setdefault(e.dataset, DatasetGroup(e.dataset))
        if not g.domains and e.domains:
            g.domains = e.domains
        if not g.classes and e.classes:
            g.classes = e.classes
        g.entries.append(e)
    for g in groups.values():
        _split_labels_by_teacher(g.entries)
    return groups


def _split_labels_by_teacher(entries: list[RunEntry]) -> None:
    """A label whose runs used different teachers (``vl2v report runs/conse runs/lit``) becomes one row per
    teacher, ``adip [teacher lit]``, so no mean mixes two teachers; labels with one teacher stay as they are."""
    by_label: dict[str, set[str]] = {}
    for e in entries:
        by_label.setdefault(e.label, set()).add(_teacher_key(e))
    mixed = {lab for lab, ts in by_label.items() if len(ts) > 1}
    if not mixed:
        return
    names: dict[str, set[str]] = {}
    for e in entries:
        names.setdefault(str(e.args.get("teacher") or "?"), set()).add(_teacher_key(e))
    for e in entries:
        lab = e.label
        if lab in mixed:
            name = str(e.args.get("teacher") or "?")
            if len(names[name]) > 1:  # one name, two identities (e.g. two builds of lit): add a digest
                name += " " + hashlib.sha256(_teacher_key(e).encode()).hexdigest()[:8]
            e.summary = {**e.summary, "label": f"{lab} [teacher {name}]"}


#: a privileged diagnostic teacher's identity names its target and trial seed: the teacher of a row is its
#: alpha and base, whichever target and seed each run was bound to
_BOUND = re.compile(r"^(DIAGNOSTIC-privileged\(alpha=[^;]+);target=[^;]+;trial_seed=\d+;head=[^;]+;(.*)$")


def _teacher_key(e: RunEntry) -> str:
    ident = str(e.args.get("teacher_identity") or e.args.get("teacher") or "?")
    m = _BOUND.match(ident)
    return f"{m.group(1)};{m.group(2)}" if m else ident
