"""The training loop's state between steps: what a resume checkpoint's ``"loop"`` entry holds.

:class:`LoopState` is that entry with typed fields. :meth:`LoopState.state_dict` writes the same plain
(JSON-able) dict the loop has always saved: the eight counters first, then ``stream``, ``stage_seconds`` and
``stage_selected`` once they have been set, so checkpoints written before this class existed resume as they
did, and the ones written now read back the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict


class Best(TypedDict):
    """The best evaluation so far among the checkpoints that compete for the run's model."""

    step: int  # global step
    val_acc: float


class StageBest(TypedDict):
    """The current stage's best evaluation (the checkpoint handed to the next stage)."""

    step: int  # global step
    stage_step: int
    val_acc: float


class StreamRecord(TypedDict):
    """What one stage trained on: its data stream's role and seed, and a running digest of every
    (image, view) it drew, in order (``final.json``'s ``data_stream``)."""

    role: str
    seed: int
    digest: str
    steps: int


#: fields written only once they are set (the dict a checkpoint holds has no key for them before)
_OPTIONAL = ("stream", "stage_seconds", "stage_selected")


@dataclass
class LoopState:
    global_step: int = 0  # steps run over every stage; the next step's number
    stage_index: int = 0  # the stage being run (the ones before it are done)
    stage_step: int = 0  # the current stage's next step
    best: Best | None = None  # the run's best evaluation so far (its model)
    stage_best: StageBest | None = None  # the current stage's best evaluation
    loss_sum: float = 0.0  # training loss summed since the last evaluation (this rank's shard)
    loss_n: int = 0  # steps in loss_sum
    elapsed: float = 0.0  # seconds the run had taken at its last checkpoint (a resumed run's clock goes on)
    stream: dict[str, StreamRecord] | None = None  # per stage name, from the stage's start
    stage_seconds: dict[str, float] | None = None  # per finished (or interrupted and resumed) stage
    stage_selected: dict[str, StageBest] | None = None  # the checkpoint each non-final stage handed on
    #: keys of a loaded checkpoint this version does not know: kept and written back as they were
    extra: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``"loop"`` entry: a plain dict (a copy; JSON types only)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in _OPTIONAL and value is None:
                continue
            out[f.name] = value
        out.update(self.extra)
        return json.loads(json.dumps(out))

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Take every key of a checkpoint's ``"loop"`` entry (as ``dict.update`` did): known keys set their
        field, others are kept in :attr:`extra`."""
        known = {f.name for f in fields(self)} - {"extra"}
        for k, v in d.items():
            if k in known:
                setattr(self, k, v)
            else:
                self.extra[k] = v

    # ---------------------------------------------------------------- stage bookkeeping
    def start_stream(self, stage: str, record: StreamRecord) -> None:
        """``stage``'s data stream starts (from its first step): its record begins."""
        if self.stream is None:
            self.stream = {}
        self.stream[stage] = record

    def add_stage_seconds(self, stage: str, seconds: float) -> None:
        if self.stage_seconds is None:
            self.stage_seconds = {}
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def hand_over(self, stage: str) -> None:
        """Record the stage's best as the checkpoint the next stage starts from (``final.json``), if it has one."""
        if self.stage_best is None:
            return
        if self.stage_selected is None:
            self.stage_selected = {}
        self.stage_selected[stage] = StageBest(**self.stage_best)

    def end_stage(self, index: int) -> None:
        """Stage ``index`` is done: the next one starts at its step 0, with no best yet."""
        self.stage_index, self.stage_step, self.stage_best = index + 1, 0, None
