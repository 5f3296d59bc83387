"""The real chunks of a DALI batch, cut from the loader's outputs without copies where possible.

DALI hands over per sample a slot for every chunk it laid out (K in training, the batch's
longest sample in evaluation); the loader keeps the real ones: all slots up to ``n_max`` (a view)
when every sample has them, else the (sample, slot) pairs it picked (a gather).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.config import Framing


@dataclass(frozen=True)
class ChunkPick:
    """The real chunks of a DALI batch: the first ``n_max`` slots of every sample, or the
    ``pick`` (sample, slot) index pairs (on DALI's device) when some slots are not real."""

    n_max: int
    pick: tuple[torch.Tensor, ...] | None
    framing: Framing

    def real(self, v: torch.Tensor) -> torch.Tensor:
        """``(B, slots, ...)`` -> ``(B, n_max, ...)`` (a view) when every chunk is real, else ``(N, ...)``."""
        v = v[:, : self.n_max]
        return v if self.pick is None else v[self.pick[0], self.pick[1]]

    def frames(self, a: torch.Tensor) -> torch.Tensor:
        """``(B, rows, frames_all)`` -> the chunks ``(B, n_max, rows, T)`` or ``(N, rows, T)``:
        frame ``j * stride_frames + t`` of the layout is frame t of chunk j."""
        fr, (b, height, _), s = self.framing, a.shape, a.stride()
        shape = (b, self.n_max, height, fr.frames)
        return self.real(a.as_strided(shape, (s[0], fr.stride_frames * s[2], s[1], s[2])))
