"""``MusicLoader``: the DALI pipeline as the trainer and evaluator see it (built by
``pipelines.loader.build_loader``).

Yields ``{x: float32 (B, C, F, T) on device, y: labels, track: int64 (B,)}``. How the
contract's guarantees are met (details in docs/pipeline.md):

- training reads the sample plan (``pipelines.sample_plan``, through
  ``pipelines.train_stream``): one epoch's items whatever the rank count, dealt to ranks in
  equal batches; its position is plain data, resumable on any rank count;
- exactly-once evaluation: each rank sticks to its contiguous shard, the last batch is
  partial, and DALI's padding repeats are dropped here by their track id;
- resumable: the plan's position (epoch, the positions left, the batches taken), from
  which a rebuilt pipeline starts.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from pipelines.chunk_pick import ChunkPick
from pipelines.feature_stack import FeatureAssembler, masks_from_draws, stats_path
from pipelines.graph import READER, GraphSpec, build_pipeline
from pipelines.handoff import BufferLease, to_device
from pipelines.memory import release_pool_memory
from pipelines.remote import CacheGate
from pipelines.shard_cache import ShardCache
from pipelines.shard_checks import (
    read_fault,
)
from pipelines.train_stream import STATE_VERSION, TrainStream
from shards.base.tasks import TaskSpec
from shards.format import SEGMENT_FIELDS, Manifest


def labels_to_y(lbl: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """``lbl (B, label_width)`` int64 -> single ``(B,)`` int64, multi ``(B, n)`` float32, hier ``(B, L)``."""
    if task.kind == "single":
        return lbl[:, 0]
    if task.kind == "multi":
        return lbl.to(torch.float32)
    return lbl


GRAPH_VERSION = STATE_VERSION
"""The loader state's layout, saved with its position (1: per-chunk window chains, 2: the
windows as one batch, both DALI reader checkpoints; 3: the sample plan's position): a position
of another version restarts its epoch."""


class MusicLoader:
    """Re-iterable loader: one ``for batch in loader`` pass is one epoch on this rank.

    The DALI pipeline is built on first use (a resume's ``load_state_dict`` never builds one only
    to replace it) and runs no batch before the first ``next()``. An evaluation loader shuts
    its pipeline down after every pass and gives DALI's pooled device memory back, so the
    validation pipeline holds nothing while the model trains. ``close()`` releases it for good
    (before the process group goes: DALI issue #6166)."""

    def __init__(
        self,
        spec: GraphSpec,
        manifest: Manifest,
        task: TaskSpec,
        device: torch.device,
        samples: int | None = None,
        channels_last: bool = False,
        gate: CacheGate | None = None,
        stream: TrainStream | None = None,
        label_map: torch.Tensor | None = None,
    ) -> None:
        self.spec = spec
        self.stream = stream  # training: the sample plan's batches for this rank
        self.label_map = label_map  # evaluation of a mixed build: its labels in the run's vocabulary
        self.gate = gate  # object-store builds in cache mode: holds each batch until its shards are local
        self.samples = samples  # samples (segments) in the split, all ranks: len()
        self.manifest = manifest
        self.task = task
        self.device = device
        self.mode = spec.mode
        self.epoch = 0
        self.assembler = FeatureAssembler(
            spec.features,
            device,
            stats_path(spec.features, manifest.root),
            channels_last=channels_last,
            computed=manifest.kind == "audio",
        )
        self.lease = BufferLease(device, depth=spec.loader.prefetch)  # DALI outputs torch still reads
        self._dali: Any = None  # the DALI iterator (gated for object-store caches), built on first use
        self._pipe: Any = None  # its pipeline
        self._restore: str | None = None  # a DALI checkpoint the next pipeline starts from
        self._seen: set[int] = set()  # eval: samples already yielded this epoch (drops DALI padding)
        self._batch = 0  # DALI batches consumed in this epoch (== len(self._it) at its end)

    graph: Any = None  # the DALI graph function (None: the audio graph); the image loader sets its own

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    @property
    def _it(self) -> Any:
        """The DALI iterator, built on first use from the pending checkpoint (if any)."""
        if self._dali is None:
            self._dali = self._make_iterator(self._restore)
            self._restore = None
        return self._dali

    def _make_iterator(self, checkpoint: str | None) -> Any:
        if self.gate is not None:  # DALI reads ahead from the moment the iterator exists
            self.gate.wait(self.epoch, self._batch, restored=checkpoint is not None)
        if self.stream is not None and self.stream.reader.caches:
            self.stream.warm()
        pipe = self._pipe = build_pipeline(self.spec, checkpoint, graph=self.graph)
        # training: the plan's source ends each epoch (size -1); evaluation: the reader's ranges
        size = {"size": -1} if self.mode == "train" else {"reader_name": READER}
        it = DALIGenericIterator(
            [pipe],
            self.output_names,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=False,
            prepare_first_batch=False,  # no batch is computed (nor held) before the first next()
            **size,
        )
        return it if self.gate is None else self.gate.wrap(it, lambda: (self.epoch, self._batch))

    def close(self) -> None:
        """Shut the DALI pipeline down and give its pooled memory back. The loader stays usable:
        a later pass builds a new pipeline (training: from the position reached)."""
        self._shutdown()
        release_pool_memory(self.device)

    def _shutdown(self) -> None:
        """Wait for torch's reads of the held outputs, then stop the pipeline's threads and free
        its buffers now (``Pipeline._shutdown`` is DALI's own atexit path; dropping the last
        reference would leave it to the garbage collector)."""
        self.lease.release_all()
        if self._pipe is not None:
            self._pipe._shutdown()
        self._dali = self._pipe = None

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, F, T)`` of one chunk."""
        f = self.spec.features
        return len(f.channels), f.n_mels, self.spec.framing.frames

    def __len__(self) -> int:
        """Batches one pass yields on this rank. Training: the plan's epoch in this rank count's
        batches, the same on every rank (``TrainStream.__len__``). Evaluation: this rank's own
        samples in whole or partial batches; DALI's length is the largest rank's, whose extra
        batch would hold only padding repeats (dropped here)."""
        if self.stream is not None:
            return len(self.stream)
        if self.samples is None:
            return len(self._it)
        n, w, r = self.samples, self.spec.world_size, self.spec.rank
        mine = (r + 1) * n // w - r * n // w  # the reader's contiguous range for this shard
        return -(-mine // self.spec.batch_size)

    @property
    def caches(self) -> list[ShardCache]:
        """The shard caches this loader reads through (object-store builds, ``remote = "cache"``)."""
        if self.stream is not None:
            return list(self.stream.reader.caches.values())
        return [self.gate.cache] if self.gate is not None else []

    @property
    def skipped_shards(self) -> list[str]:
        """Training shards left out of the plan (``loader.on_bad_shard = "skip"``)."""
        return self.stream.skipped() if self.stream is not None else []

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch behind the position (after a resume on another rank
        count: the global batches before it, in this count's batches)."""
        return self.stream.done if self.stream is not None else self._batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.stream is not None:
            yield from self._train_pass(self.stream)
            return
        it = self._it
        if self._batch < len(it):  # else restored at the end of an epoch: this pass is its (empty) rest
            with self._read_faults():
                for out in it:
                    self._batch += 1
                    batch = self._convert(out[0])
                    self.lease.hold(out[0])  # DALI gets these buffers back once torch has read them
                    out = None  # the lease's reference is the only one left (close() can free them)
                    if batch is not None:
                        yield batch
        self._seen.clear()
        self._batch = 0
        self.epoch += 1  # before reset(): a shard-cache gate waits on exactly (epoch, 0) there
        self.close()  # evaluation: nothing stays resident between validations

    def _train_pass(self, stream: TrainStream) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the plan's epoch on this rank, then the next epoch's plan (agreed by
        every rank: the shards found bad leave it)."""
        it = self._it
        with self._read_faults():
            for out in it:
                stream.consumed += 1
                batch = self._convert(out[0])
                self.lease.hold(out[0])  # DALI gets these buffers back once torch has read them
                out = None
                if batch is not None:
                    yield batch
        stream.next_epoch()
        self.epoch = stream.epoch
        it.reset()  # DALI asks the plan's source for the new epoch's first batch from here

    @contextlib.contextmanager
    def _read_faults(self) -> Iterator[None]:
        """A reader error mid-epoch from a shard truncated or damaged under the run becomes
        ``shards.format.verify.BadShard`` naming it (one line, not DALI's trace); other errors pass."""
        try:
            yield
        except RuntimeError as e:
            found = read_fault(self.manifest, self.spec.tars, e)
            if found is None:
                raise
            raise found from None

    def _convert(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """One DALI batch -> ``{x, y, track}`` on ``self.device``.

        ``lbl``, ``tid`` and ``nchunks`` are CPU outputs (the reader is CPU-only and they never
        go to the GPU), so all bookkeeping is host-side; what reaches the GPU goes as pinned,
        non-blocking copies and is indexed with integer tensors, so no step here waits for the
        GPU (a blocking ``.to(cuda)``, a boolean-mask index or ``repeat_interleave`` with device
        repeats would each synchronise the host with the training stream every batch).
        """
        framing = self.spec.framing
        tid = out["tid"][:, 0].to(torch.int64).cpu()  # .cpu(): no-ops, they are CPU outputs
        seg = out["seg"].to(torch.int64).cpu() if "seg" in out else None
        uid = seg[:, 0] if seg is not None else tid  # unique per sample (segment)
        nchunks = out["nchunks"].reshape(-1).to(torch.int64).cpu()
        keep = self._keep(uid)
        if not keep.any():
            return None
        if self.mode == "train" and int(nchunks.sum()) == 0:  # every draw thinned away (rare):
            nchunks = nchunks.clone()  # a batch is still owed to DDP
            nchunks[0] = 1
        n_max = int(nchunks.max())
        sel = keep[:, None] & (torch.arange(n_max)[None, :] < nchunks[:, None])
        dense = bool(sel.all())
        rows, cols = sel.nonzero(as_tuple=True)  # (sample, chunk) of each real chunk, on the host
        # copied once to DALI's device for every channel
        pick = None if dense else tuple(to_device(i, out["mel"].device) for i in (rows, cols))

        cut = ChunkPick(n_max, pick, framing)
        # DALI's outputs are frame-major (B, frames, rows): transposed views, no copy. The MFCC
        # and chroma filter banks are matmuls on them, frame-local like everything up to here;
        # the CQT's input is the real chunks' samples (its output is per chunk already).
        power = out["power"].transpose(1, 2) if "power" in out else None
        wave = cut.real(out["wave"]) if "wave" in out else None
        raw = self.assembler.raw_channels(out["mel"].transpose(1, 2), None, power, wave)
        mask = None
        if "mask" in out:  # the draws (B, K, R, 2), CPU: picked on the host, masks made on the device
            m = out["mask"][:, :n_max]
            m = m.flatten(0, 1) if pick is None else m[rows, cols]
            mask = self._masks(m, out["mel"].device)
        per_chunk = self.assembler.per_chunk
        x = self.assembler.stack([c if n in per_chunk else cut.frames(c) for n, c in raw.items()], mask)
        lbl = self._labels(out["lbl"].to(torch.int64).cpu()[rows])
        starts = self._starts(out, seg, rows, cols)
        if self.stream is not None and self.stream.trace is not None:
            src = out["src"].reshape(-1).to(torch.int64).cpu()[rows]
            self.stream.write_trace(rows, tid[rows], starts, lbl, src, self.spec.features.sample_rate)
        return {
            "x": x.to(self.device, non_blocking=True),
            "y": to_device(labels_to_y(lbl, self.task), self.device),
            "track": to_device(tid[rows], self.device),
            "start": to_device(starts, self.device),
        }

    def _labels(self, lbl: torch.Tensor) -> torch.Tensor:
        """``lbl`` rows in the run's vocabulary (a mixed build's evaluation: mapped by name)."""
        if self.label_map is None:
            return lbl
        if self.task.kind == "single":
            return self.label_map[lbl]
        out = torch.zeros(len(lbl), self.task.label_width, dtype=torch.int64)
        out[:, self.label_map] = lbl
        return out

    def _starts(
        self, out: dict[str, torch.Tensor], seg: torch.Tensor | None, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """Each chunk's first sample within its track, at the feature rate (host int64)."""
        sp = self.spec
        offset = torch.zeros_like(rows)
        if seg is not None:
            offset = seg[rows, SEGMENT_FIELDS.index("start")] * sp.features.sample_rate // sp.shards_rate
        if "start" in out:  # training: the drawn offsets within the sample
            return offset + out["start"].to(torch.int64).cpu()[rows, cols]
        return offset + cols * sp.framing.chunk

    def _masks(self, draws: torch.Tensor, device: torch.device) -> torch.Tensor:
        """SpecAugment masks ``(N, F, T)`` on ``device`` from the kept chunks' draws ``(N, R, 2)``."""
        _, f, t = self.feature_shape
        return masks_from_draws(to_device(draws, device), self.spec.augment, f, t)

    def _keep(self, ids: torch.Tensor) -> torch.Tensor:
        """CPU bool ``(B,)``: the samples to yield. Eval drops DALI's ``pad_last_batch`` repeats
        of the last sample by its unique id (a segment's own, not its track's); training keeps all."""
        keep = torch.ones(ids.numel(), dtype=torch.bool)
        if self.mode == "eval":
            for i, t in enumerate(ids.tolist()):
                keep[i] = t not in self._seen
                self._seen.add(t)
        return keep

    def state_dict(self) -> dict[str, Any]:
        """Plain data. Training: the plan's position (``TrainStream.state_dict``); evaluation:
        the DALI checkpoint and what this epoch has yielded."""
        if self.stream is not None:
            return self.stream.state_dict()
        dali = (
            self._restore if self._dali is None and self._restore is not None else self._it.checkpoints()[0]
        )
        return {
            "dali": dali,
            "graph": GRAPH_VERSION,
            "epoch": self.epoch,
            "seen": sorted(self._seen),
            "batch": self._batch,
        }

    def load_state_dict(self, state: dict[str, Any] | list[Any]) -> None:
        """Restore the saved position: the next batches are the ones the saved loader would have
        produced (training: on any rank count). The pipeline is rebuilt on first use. A position
        saved by another layout (a list per rank, a DALI checkpoint) restarts its epoch."""
        self._shutdown()
        if isinstance(state, list):  # before issue 31: one DALI position per rank
            state = state[min(self.spec.rank, len(state) - 1)] if state else {}
        self.epoch = int(state.get("epoch", 0))
        saved = int(state.get("graph", 1))
        if saved != GRAPH_VERSION:
            warnings.warn(
                f"the loader position in this checkpoint was saved by input graph version {saved} "
                f"(this one is {GRAPH_VERSION}): epoch {self.epoch} restarts from its beginning",
                stacklevel=2,
            )
            if self.stream is not None:
                self.stream.restart(self.epoch)
            self._restore, self._seen, self._batch = None, set(), 0
            return
        if self.stream is not None:
            self.stream.load_state_dict(state)
            return
        self._restore = state["dali"]
        self._seen = set(state.get("seen", []))
        self._batch = int(state.get("batch", 0))
