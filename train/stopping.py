"""Preemption: SIGTERM/SIGINT on any rank stops every rank at the same optimiser step.

Ranks agree through a one-element all-reduce every step on a CPU (gloo) group: no
host-GPU sync per step, and a preempted job (torchrun gives its workers ~30 s after
SIGTERM) saves at once instead of up to ``log_every`` steps later.
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
        self._ctl: Any = None

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (every rank must call it at the same step)."""
        if not self.distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._control_group())
        self.requested = bool(flag.item())
        return self.requested

    def _control_group(self) -> Any:
        """The process group for CPU control flags: the default one under gloo, a gloo
        group beside NCCL otherwise (created on first use: every rank reaches it at the same step)."""
        if self._ctl is None:
            if torch.distributed.get_backend() == "gloo":
                self._ctl = torch.distributed.group.WORLD
            else:
                # every rank is a member (ranks=None), so this is a ProcessGroup, never NON_GROUP_MEMBER
                self._ctl = cast("ProcessGroup", torch.distributed.new_group(backend="gloo"))
        return self._ctl

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
