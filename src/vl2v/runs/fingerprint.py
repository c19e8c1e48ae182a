"""Which settings determine a run's numbers, and how two configurations differ in them.

An output folder is reused: finished runs are skipped, interrupted ones resumed. That is
only honest when the runs there were made with the settings of the command now asking
for them; otherwise old numbers would be printed under the new command's header. This
module names the settings that change a run's numbers (everything in the configuration
except the few listed in :data:`NOT_NUMBERS`, which choose *which* runs to make, *where*,
or *how fast*), and compares two configurations on them:

- :func:`config_diff` compares two ``ExperimentConfig`` dicts (``experiment.json``'s
  ``config`` against the new command), before any data is loaded;
- :func:`run_diff` compares a run's ``config.json`` with what the new command would write
  there (the resolved values: device, thread count, teacher identity, prompt names).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

#: ExperimentConfig keys (dotted below ``train``) that do not change any run's numbers: which runs
#: (algorithms, targets, seeds; the hparams seed names its own run folders), where (output, store, data
#: root), how fast (loader workers, parallel jobs, data mode, prefix cache, evaluation batch, checkpoint
#: files), how the teacher is reached (black-box wrapper: same embeddings) and how strictly data problems
#: stop the run (a run that finished had none that --strict-data refuses). ``threads`` does change
#: numbers (float sums split differently), but ``None`` means "resolved later": it is compared per run,
#: on the resolved count, by :func:`run_diff`.
NOT_NUMBERS = frozenset({
    "algorithms", "targets", "seeds", "hparams_seed", "out_dir", "store", "data_root", "data_mode", "workers",
    "jobs", "threads", "strict_data", "blackbox",
    "train.eval_batch_size", "train.save_checkpoints", "train.cache_prefix",
})

#: keys of a run's recorded ``args`` (config.json) that determine its numbers, besides the ``train`` block
RUN_ARGS = ("dataset", "holdout_fraction", "teacher", "teacher_options", "teacher_identity", "student",
            "student_pretrained", "student_weights", "freeze_bn", "views", "view_seed", "store_dtype", "max_side",
            "threads")

#: the command-line flag of a setting, where it is not ``--`` + the key with ``-`` for ``_``
FLAGS = {
    "teacher_options": "--teacher-opt", "student_pretrained": "--no-pretrained", "data_dir": "--data",
    "class_names": "--prompt-names/--classnames", "templates": "--template(s)", "teacher_identity": "--teacher",
    "swad_cfg": "--swad", "holdout_fraction": "(API only)", "view_seed": "(API only)", "store_dtype": "(API only)",
    "freeze_bn": "(API only)", "weight_decay": "(API only)", "eval_source_in": "(API only)",
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``train.schedule.steps``); other values as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("teacher_options",):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _norm(key: str, v: Any) -> Any:
    """A value in a comparable form: JSON's (tuples are lists), option values as text, a data folder by name."""
    if key == "data_dir" and v is not None:
        return Path(str(v)).name
    if key.endswith("teacher_options") and isinstance(v, dict):
        return {str(k): str(x) for k, x in v.items()}
    return json.loads(json.dumps(v, default=str))


def _differences(old: dict[str, Any], new: dict[str, Any], skip: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    skip = set(skip)
    out = []
    for k in sorted(set(old) | set(new)):
        if k in skip or k not in old:  # a key an older vl2v did not record: nothing to compare it with
            continue
        a, b = _norm(k, old.get(k)), _norm(k, new.get(k))
        if a != b:
            out.append((k, old.get(k), new.get(k)))
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every setting that changes numbers and differs between two ``ExperimentConfig``
    dicts (``dataclasses.asdict``). ``train.class_names`` is compared only when both are resolved (the new
    command resolves it after loading the data; :func:`run_diff` compares it per run)."""
    a, b = flatten(old), flatten(new)
    skip = set(NOT_NUMBERS)
    if a.get("train.class_names") is None or b.get("train.class_names") is None:
        skip.add("train.class_names")
    return _differences(a, b, skip)


def run_fingerprint(train: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """The values that determine a run's numbers, from its ``train`` block and recorded ``args``."""
    fp = {f"train.{k}": v for k, v in flatten(train).items() if f"train.{k}" not in NOT_NUMBERS}
    fp.update({f"args.{k}": args[k] for k in RUN_ARGS if k in args})
    return fp


def run_diff(recorded: dict[str, Any], train: dict[str, Any], args: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Differences between a run's ``config.json`` and the ``train``/``args`` a new command would record.
    A command whose algorithms need no teacher loads none (``teacher_identity`` None): not a difference."""
    skip = ["args.teacher_identity"] if args.get("teacher_identity") is None else []
    return _differences(run_fingerprint(recorded.get("train") or {}, recorded.get("args") or {}),
                        run_fingerprint(train, args), skip)


def flag_of(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    return FLAGS.get(leaf, "--" + leaf.replace("_", "-"))


def describe(diffs: list[tuple[str, Any, Any]], limit: int = 4) -> str:
    """``steps (--steps) 128 -> 5; image_size (--image-size) 128 -> 64`` (at most ``limit``, then a count)."""
    def short(v: Any) -> str:
        text = json.dumps(v, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    parts = [f"{k.split('.', 1)[-1] if k.startswith(('train.', 'args.')) else k} ({flag_of(k)}) "
             f"{short(a)} -> {short(b)}" for k, a, b in diffs[:limit]]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(parts) + more
