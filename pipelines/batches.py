"""The loader contract as types: what the trainer, the evaluator and a family's own fit receive.

``pipelines.loader.MusicLoader`` (DALI, audio or image shards) and
``train.synthetic.SyntheticLoader`` both satisfy ``BatchLoader``; nothing downstream needs to
know which. Kept free of DALI so typing a loader never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

Batch = dict[str, torch.Tensor]
"""``{"x": float32 (B, C, F, T), "y": labels, "track": int64 (B,)}`` on the training device;
audio loaders add ``"start"`` (int64 (B,): each chunk's first sample in its track)."""


class BatchLoader(Protocol):
    """One ``for batch in loader`` pass is one epoch of this rank's batches."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int:
        """Batches one pass yields on this rank."""
        ...

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, F, T)`` of one chunk."""
        ...

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch behind the position (what a resume continues after)."""
        ...

    @property
    def skipped_shards(self) -> list[str]:
        """Shards left out of the plan (``loader.on_bad_shard = "skip"``); [] when none."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Plain data: where the loader is (resumed by ``load_state_dict``)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the loader holds (DALI's threads and device memory); a later pass may
        start again. Called before the process group goes (``Trainer.close``)."""
        ...
