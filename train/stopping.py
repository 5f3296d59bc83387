"""Preemption: SIGTERM/SIGINT on any rank stops every rank at the same optimiser step.

Ranks agree through a one-element all-reduce on a CPU (gloo) group of their own, posted
asynchronously at every step and read at the next one: no rank waits for the others at the
step it posts (the reduce of step s has completed long before step s+1 reads it, unless a rank
fell a whole step behind), and every rank reads the same result at the same step, so all stop
together, one step after the signal. A preempted job (torchrun gives its workers ~30 s after
SIGTERM) still saves at once instead of up to ``log_every`` steps later. One process agrees
with itself at the step of the signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class StopSignal:
    """``requested``: this rank got a signal; ``agreed()``: some rank did (collective)."""

    def __init__(self, distributed: bool) -> None:
        self.distributed = distributed
        self.requested = False
        # a gloo group of every rank for the flags, beside the training collectives; made here
        # (collective, as the Trainer is built on every rank), not at a step where it would wait
        self._ctl: Any = torch.distributed.new_group(backend="gloo") if distributed else None
        self._pending: tuple[torch.Tensor, Any] | None = None  # the last posted flag and its reduce

    def agreed(self) -> bool:
        """Whether every rank must stop now (every rank calls it at the same step). Distributed:
        posts this step's flag and answers with the previous step's agreement."""
        if not self.distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        group = cast("ProcessGroup", self._ctl)  # every rank is a member: never NON_GROUP_MEMBER
        work = torch.distributed.all_reduce(
            flag, op=torch.distributed.ReduceOp.MAX, group=group, async_op=True
        )
        previous, self._pending = self._pending, (flag, work)
        return previous is not None and self._read(previous)

    def settle(self) -> bool:
        """Wait for the flag in flight (at an epoch's end or the loop's): whether some rank asked
        to stop by then. Collective; afterwards nothing is outstanding on the control group."""
        if self._pending is None:  # nothing in flight (one process agrees at once)
            return False
        previous, self._pending = self._pending, None
        return self._read(previous)

    def _read(self, posted: tuple[torch.Tensor, Any]) -> bool:
        flag, work = posted
        work.wait()
        if flag.item():
            self.requested = True
        return bool(flag.item())

    def install(self) -> Callable[[], None]:
        """SIGTERM/SIGINT -> ``requested``; returns the function that restores the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            self.requested = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore
