"""Where a run is: optimiser step, epoch, batch within the epoch, the last validation metrics.

A stateful component like any other (saved as top-level checkpoint keys), so a resumed run
continues at the same batch of the same epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainProgress:
    """Where the run is (saved as top-level checkpoint keys: step, epoch, batch_in_epoch, metrics)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "metrics": dict(self.metrics)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.metrics = dict(state.get("metrics") or {})
