"""The hand-off of DALI's output buffers to torch, ordered on the GPU (every loader uses it).

With ``exec_dynamic`` (our pipelines) DALI 2.4's ``DALIGenericIterator`` does not copy: it
returns ``torch.from_dlpack`` views of DALI's own buffers (``nvidia/dali/plugin/pytorch/
__init__.py``: ``copy = not is_exec_dynamic``), after ``share_outputs()`` synchronised DALI's
stream with the host. The loader's conversion only *queues* its reads of those views (the
filter-bank matmuls, min/max, the copies into ``x``) on torch's current stream, and the host
runs ahead. Once the last Python reference to a view drops, the DLPack deleter returns the
buffer to DALI's pool, whose next iterations reuse it on DALI's stream: nothing orders that
reuse after torch's queued reads, and a batch can silently read another batch's features.
``Tensor.record_stream`` cannot help: it only delays torch's own caching allocator, and these
buffers belong to DALI.

``BufferLease`` keeps each batch's DALI outputs referenced until a CUDA event recorded on
torch's stream after the conversion has completed, so DALI gets a buffer back only once torch
has read it. At most ``depth`` batches are held: when the host is further ahead of the GPU, it
waits for the oldest batch's event (the GPU is then busy, so the wait costs no GPU time); that
bounds the device memory the hand-off pins to ``depth`` batches of DALI outputs
(docs/pipeline.md, "Device memory"). The alternative, copying every output on torch's stream,
would double the largest tensors of a batch (the power spectrogram) and add a full read and
write of them per batch; the lease costs one event per batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import torch


class BufferLease:
    """Holds DALI output views until torch's reads of them completed (CUDA); no-op on the CPU,
    where every read has happened by the time the conversion returns."""

    def __init__(self, device: torch.device, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth: must be >= 1, got {depth}")
        self.device, self.depth = device, depth
        self._held: deque[tuple[Any, Mapping[str, torch.Tensor]]] = deque()
        self.waits = 0  # times the host waited for the GPU (it was more than ``depth`` batches ahead)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, outputs: Mapping[str, torch.Tensor]) -> None:
        """Keep ``outputs`` (one DALI batch) until the work queued on torch's stream so far is done."""
        if self.device.type != "cuda":
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._held.append((event, outputs))
        while self._held and self._held[0][0].query():  # done: DALI may have these back
            self._held.popleft()
        while len(self._held) > self.depth:
            event, _ = self._held.popleft()
            event.synchronize()
            self.waits += 1

    def release_all(self) -> None:
        """Wait for every held batch's reads, then let DALI have the buffers back."""
        while self._held:
            event, _ = self._held.popleft()
            event.synchronize()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the GPU: a pinned,
    non-blocking copy (a plain ``.to("cuda")`` synchronises the stream, i.e. waits for
    everything queued on it, such as the previous training step)."""
    if device.type != "cuda" or t.device == device:
        return t
    return t.pin_memory().to(device, non_blocking=True)
