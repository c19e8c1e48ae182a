"""SWAD weight averaging with the LossValley rule (Cha et al., NeurIPS 2021).

Between two evaluations the parameters are averaged step by step into a
*segment*. At every evaluation the segment closes with the source-validation
loss of the model at that moment.

* Start of the valley: the first segment whose loss is not beaten by any of
  the next ``n_converge - 1`` segments (the loss stopped decreasing). The
  threshold is ``mean(loss over those n_converge segments) * (1 + tolerance_ratio)``.
* Averaging: from the start, each segment is included once the next
  ``n_tolerance`` segments are known and their minimum loss is still below the
  threshold; the first time it is not, the valley ends ("dead").
* At the end of training the remaining pending segments are included while the
  minimum loss over what is left stays below the threshold.

The result is the equal-weight mean of the included segment averages. The
paper's settings are ``n_converge=3, n_tolerance=6, tolerance_ratio=0.3``.
Only the parameters trained in the stage are averaged; BatchNorm statistics
are frozen in our students, so no BN re-estimation is needed.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from vl2v.config import SWADConfig


@dataclass
class Segment:
    params: dict[str, torch.Tensor]
    loss: float
    start: int
    end: int


class LossValley:
    def __init__(self, model: nn.Module, cfg: SWADConfig = SWADConfig()) -> None:
        self.cfg = cfg
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self._sum: dict[str, torch.Tensor] | None = None
        self._count = 0
        self._start: int | None = None
        self.window: deque[Segment] = deque(maxlen=cfg.n_converge)
        self.pending: deque[Segment] = deque()
        self.state = "search"  # search -> valley -> dead
        self.threshold: float | None = None
        self.valley_start: int | None = None
        self.valley_end: int | None = None
        self._final_sum: dict[str, torch.Tensor] | None = None
        self.n_segments = 0
        self.log: list[str] = []

    # ------------------------------------------------------------ stepping
    @torch.no_grad()
    def observe(self, model: nn.Module, step: int) -> None:
        """Add the current parameters to the open segment (call after every update)."""
        if self.state == "dead":
            return
        params = dict(model.named_parameters())
        if self._sum is None:
            self._sum = {n: params[n].detach().to("cpu", torch.float64, copy=True) for n in self.names}
            self._start = step
        else:
            for n in self.names:
                self._sum[n].add_(params[n].detach().to("cpu", torch.float64))
        self._count += 1

    def close_segment(self, val_loss: float, step: int) -> None:
        """Close the open segment with the source-validation loss measured at ``step``."""
        if self.state == "dead" or self._sum is None:
            self._sum, self._count = None, 0
            return
        seg = Segment({n: (t / self._count).float() for n, t in self._sum.items()}, float(val_loss), int(self._start or step), step)
        self._sum, self._count = None, 0
        if self.state == "search":
            self.window.append(seg)
            if len(self.window) == self.cfg.n_converge:
                losses = [s.loss for s in self.window]
                if min(range(len(losses)), key=losses.__getitem__) == 0:
                    self.state = "valley"
                    self.threshold = (sum(losses) / len(losses)) * (1.0 + self.cfg.tolerance_ratio)
                    self.valley_start = self.window[0].start
                    self._include(self.window[0])
                    self.pending.extend(list(self.window)[1:])
                    self.log.append(f"SWAD valley starts at step {self.valley_start} (threshold {self.threshold:.4f})")
        else:
            self.pending.append(seg)
            self._advance(final=False)

    def _advance(self, final: bool) -> None:
        n_tol = self.cfg.n_tolerance
        while self.pending and (final or len(self.pending) >= n_tol):
            look = list(self.pending)[:n_tol]
            if min(s.loss for s in look) > (self.threshold or float("inf")):
                if not final:
                    self.state = "dead"
                    self.log.append(f"SWAD valley ends at step {self.valley_end}")
                self.pending.clear()
                return
            self._include(self.pending.popleft())

    def _include(self, seg: Segment) -> None:
        if self._final_sum is None:
            self._final_sum = {n: t.double().clone() for n, t in seg.params.items()}
        else:
            for n, t in seg.params.items():
                self._final_sum[n].add_(t.double())
        self.n_segments += 1
        self.valley_end = seg.end

    # -------------------------------------------------------------- result
    def averaged_state(self) -> dict[str, torch.Tensor] | None:
        """Averaged parameters, or None when no valley was found (loss never converged)."""
        if self.state == "valley":
            self._advance(final=True)
            self.state = "done"
        if self._final_sum is None:
            return None
        return {n: (t / self.n_segments).float() for n, t in self._final_sum.items()}

    def apply_to(self, model: nn.Module) -> bool:
        avg = self.averaged_state()
        if avg is None:
            return False
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in avg.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))
        return True

    def summary(self) -> dict:
        return {"segments_averaged": self.n_segments, "valley_start": self.valley_start,
                "valley_end": self.valley_end, "threshold": self.threshold, "state": self.state}

    # ------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        def seg(s: Segment) -> dict:
            return {"params": s.params, "loss": s.loss, "start": s.start, "end": s.end}

        return copy.deepcopy({"names": list(self.names), "sum": self._sum, "count": self._count, "start": self._start,
                "window": [seg(s) for s in self.window], "pending": [seg(s) for s in self.pending],
                "state": self.state, "threshold": self.threshold, "valley_start": self.valley_start,
                "valley_end": self.valley_end, "final_sum": self._final_sum, "n_segments": self.n_segments})

    def load_state_dict(self, d: dict) -> None:
        d = copy.deepcopy(d)
        def seg(x: dict) -> Segment:
            return Segment(x["params"], float(x["loss"]), int(x["start"]), int(x["end"]))

        self.names = list(d["names"])
        self._sum, self._count, self._start = d["sum"], int(d["count"]), d["start"]
        self.window = deque([seg(x) for x in d["window"]], maxlen=self.cfg.n_converge)
        self.pending = deque(seg(x) for x in d["pending"])
        self.state, self.threshold = d["state"], d["threshold"]
        self.valley_start, self.valley_end = d["valley_start"], d["valley_end"]
        self._final_sum, self.n_segments = d["final_sum"], int(d["n_segments"])
