"""Checkpointing as a component, and the checkpoint -> eval hand-over.

Files live in ``OUT/checkpoints/``: ``step_00001234.pt`` (every N steps, each epoch
end, on SIGTERM; the newest ``keep_last`` are kept) and ``best.pt``. Each is written
atomically and holds only tensors and plain data, so ``torch.load(weights_only=True)``
reads it. Keys (docs/contracts.md): model, ema, optimizer, scheduler, scaler, step,
epoch, rng (per rank), loader (per rank), config, task, family, input_shape, metrics, best.

One state protocol (torchtitan's ``CheckpointManager``): every stateful component has
``state_dict()`` / ``load_state_dict()`` and is registered by name with the
``Checkpointer``, which collects and restores them; the Trainer lists no keys.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from pipelines.config import stored_features
from shards.base.atomic import WriteError, remove_quietly
from shards.base.distributed import all_gather_object, broadcast_object
from shards.base.errors import say_warning
from shards.base.tasks import TaskSpec
from train.checkpoint_io import newest_loadable, read_checkpoint, write_checkpoint
from train.config import CheckpointConfig, Experiment, experiment_from_tree
from train.precision import amp_dtype

__all__ = ["read_checkpoint", "write_checkpoint"]  # their home is train.checkpoint_io

STEP_RE = re.compile(r"^step_(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (torch CPU/CUDA, numpy, random) as tensors and plain data.

    CUDA: only this rank's own device (``[state]``): the other visible GPUs belong to other
    ranks, and a resume may see a different number of them (SLURM one GPU per task)."""
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):  # only a non-MT19937 global bit generator gives a dict
        raise RuntimeError("numpy's global RNG is not MT19937; its state cannot be checkpointed")
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(torch.cuda.current_device())] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": _plain_random_state(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        dev = torch.cuda.current_device()
        # [this device's state]; older checkpoints hold one per visible device: take ours
        torch.cuda.set_rng_state(cuda[0] if len(cuda) == 1 else cuda[min(dev, len(cuda) - 1)], dev)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _plain_random_state(s: tuple) -> list[Any]:
    return [s[0], list(s[1]), s[2]]


class Stateful(Protocol):
    """What the checkpointer saves: plain data / tensors out, the same back in."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class RNGState:
    """This process's RNG streams as a stateful component (saved per rank)."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)


class RunDescription:
    """What a checkpoint is of (config, task vocabulary, family, input shape, the shards'
    sample kind): written into every checkpoint for eval, never restored (a resume takes the
    current config)."""

    def __init__(
        self, exp: Experiment, task: TaskSpec, input_shape: tuple[int, int, int], sample_kind: str = "audio"
    ) -> None:
        self.exp, self.task, self.input_shape, self.sample_kind = exp, task, input_shape, sample_kind

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.exp.to_dict(), "task": self.task.vocab(), "family": self.exp.model.family,
                "input_shape": list(self.input_shape), "sample_kind": self.sample_kind}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: the vocabulary was checked before the model was built."""


@dataclass
class _Entry:
    obj: Stateful
    per_rank: bool  # a list with one state per rank (RNG, data position)
    fields: bool  # the state is a dict whose keys sit at the top level of the file
    required: bool


class Checkpointer:
    """When to save, atomic writes, keep-last-k + best, which file to resume from, and the
    registry of stateful components whose states make up a checkpoint."""

    def __init__(
        self,
        folder: str | Path,
        cfg: CheckpointConfig,
        *,
        is_main: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.folder, self.cfg, self.is_main = Path(folder), cfg, is_main
        self.rank, self.world_size = rank, world_size
        self.best: float | None = None
        self._entries: dict[str, _Entry] = {}

    # ------------------------------------------------------------ the state protocol
    def register(
        self,
        name: str,
        obj: Stateful,
        *,
        per_rank: bool = False,
        fields: bool = False,
        required: bool = False,
    ) -> None:
        """Save ``obj.state_dict()`` under ``name`` (``per_rank``: a list indexed by rank;
        ``fields``: its keys at the top level, e.g. step and epoch). ``required``: a
        checkpoint without it cannot be resumed."""
        if name in self._entries:
            raise ValueError(f"checkpoint component {name!r} registered twice")
        self._entries[name] = _Entry(obj, per_rank, fields, required)

    def state_dict(self) -> dict[str, Any]:
        """Every registered component's state (collective: per-rank states are gathered)."""
        state: dict[str, Any] = {"best": self.best, "world_size": self.world_size}
        for name, e in self._entries.items():
            value = e.obj.state_dict()
            if e.per_rank:
                value = all_gather_object(value)
            if e.fields:
                state.update(value)
            else:
                state[name] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every registered component. A component absent or empty in ``state``
        (an EMA added to a resumed run, an fp16 scaler after bf16) keeps its fresh state;
        per-rank states restart when the world size changed."""
        self.best = state.get("best")
        same_world = int(state.get("world_size", 1)) == self.world_size
        for name, e in self._entries.items():
            if e.fields:
                e.obj.load_state_dict(state)
                continue
            value = state.get(name)
            if value is None or (isinstance(value, (dict, list)) and not value):
                if e.required:
                    raise ValueError(f"checkpoint has no {name!r} state; it cannot be resumed")
                continue
            if e.per_rank:
                if not same_world:
                    continue
                value = value[self.rank]
            e.obj.load_state_dict(value)
        if not same_world and any(e.per_rank for e in self._entries.values()):
            names = [n for n, e in self._entries.items() if e.per_rank]
            warnings.warn(f"resuming with a different world size: {', '.join(names)} restart", stacklevel=2)

    def save_state(self, step: int) -> Path | None:
        """Collect every component's state (all ranks call it) and write step_N.pt."""
        return self.save(self.state_dict(), step)

    # ------------------------------------------------------------ files

    def due(self, step: int) -> bool:
        """True when ``step`` (optimiser steps done) hits the every_steps interval."""
        return self.cfg.every_steps is not None and step > 0 and step % self.cfg.every_steps == 0

    def step_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if STEP_RE.match(p.name))

    def latest(self) -> Path | None:
        files = self.step_files()
        return files[-1] if files else None

    def resume(self) -> tuple[Path | None, dict[str, Any] | None]:
        """The checkpoint to resume from and its state, the same on every rank (collective).
        auto: the newest step file that loads; rank 0 tries them newest first, and a damaged
        one (a kill during its write) is one warning line. Temporary files a killed run left go."""
        if self.cfg.resume != "auto":
            path = broadcast_object(self.resume_path())
            return path, read_checkpoint(path) if path else None
        found = None
        if self.is_main:
            for tmp in self.folder.glob(".*.pt.*.tmp") if self.folder.is_dir() else ():
                remove_quietly(tmp)
            files = self.step_files()
            found = newest_loadable(files)
            if files and found is None:
                say_warning(f"{self.folder}: no checkpoint there loads; training starts from scratch")
        path = broadcast_object(found[0] if found else None)
        if found is not None:
            return found
        return path, read_checkpoint(path) if path else None

    def resume_path(self) -> Path | None:
        """auto: the newest step file, if any; none: None; otherwise the given file (must exist)."""
        r = self.cfg.resume
        if r == "none":
            return None
        if r == "auto":
            return self.latest()
        p = Path(r)
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint.resume: {p} not found")
        return p

    def save(self, state: dict[str, Any], step: int) -> Path | None:
        """Write step_N.pt (rank 0 only) and prune to keep_last."""
        path = self.folder / f"step_{step:08d}.pt"
        self._write(state, path)
        if not self.is_main:
            return None
        for old in self.step_files()[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def _write(self, state: dict[str, Any], path: Path) -> None:
        """Rank 0 writes ``path``; every rank learns whether it could (collective), so a full
        disk stops every rank with the same line instead of leaving them at the next collective."""
        error: WriteError | None = None
        if self.is_main:
            try:
                write_checkpoint(state, path, kept="the checkpoints written before it are kept")
            except WriteError as e:
                error = e
        message = broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise WriteError(message)

    def improved(self, value: float, mode: str) -> bool:
        """Whether ``value`` beats the best so far (and remember it). An undefined (NaN)
        score never improves, and a NaN best (older checkpoints) is beaten by any number."""
        if value != value:
            return False
        if (
            self.best is None
            or self.best != self.best
            or (value > self.best if mode == "max" else value < self.best)
        ):
            self.best = value
            return True
        return False

    def save_best(self, state: dict[str, Any]) -> Path | None:
        path = self.folder / "best.pt"
        self._write(state, path)
        return path if self.is_main else None


def check_vocab(
    model_task: TaskSpec, data_task: TaskSpec, checkpoint: Path, shards: Path | str, hint: str = ""
) -> None:
    """The checkpoint's label vocabulary must be the data's (same kind, names, order): the
    one check for resuming (train) and for scoring (eval)."""
    a, b = model_task.vocab(), data_task.vocab()
    if a == b:
        return
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise ValueError(
        f"{checkpoint}: label vocabulary does not match the shards in {shards} (differs in {diff}); "
        f"checkpoint {model_task.kind} {_brief(model_task)} heads {model_task.head_sizes} vs shards "
        f"{data_task.kind} {_brief(data_task)} heads {data_task.head_sizes}: the checkpoint was trained "
        f"on a different label vocabulary{hint}"
    )


def _brief(task: TaskSpec) -> str:
    names = task.classes if task.kind != "hier" else [n for lv in task.levels for n in lv.classes]
    return f"{names[:6]}{'...' if len(names) > 6 else ''} ({len(names)})"


def checkpoint_task(ckpt: dict[str, Any], path: str | Path) -> TaskSpec:
    """The ``TaskSpec`` a checkpoint was trained on."""
    if "task" not in ckpt:
        raise ValueError(f"{path}: not a musicstream checkpoint (no 'task')")
    return TaskSpec(**ckpt["task"])


class TrainedModel:
    """A trained model on feature tensors, as eval sees it: ``predict_proba(x (B,C,F,T)) ->
    (B, sum(head_sizes))``. (On audio files: ``eval.predict.Predictor``.)"""

    def __init__(
        self,
        model: nn.Module,
        task: TaskSpec,
        experiment: Experiment,
        *,
        name: str,
        device: torch.device,
        sample_kind: str = "audio",
        amp: torch.dtype | None | str = "config",
    ) -> None:
        """``amp``: the autocast dtype to predict under (None = float32); "config" derives it from
        ``experiment.train.amp`` on ``device`` (a stored checkpoint). The Trainer hands its own."""
        from train.loss import TaskLoss

        self.model, self.task, self.experiment, self.name = model, task, experiment, name
        self.sample_kind = sample_kind  # what it was trained on: "audio" or "image" shards
        self.device = device
        self.head = TaskLoss(task)
        self.configs: dict[str, Any] = {  # features, augment, loader: what the loader is rebuilt from
            "features": experiment.features,
            "augment": experiment.augment,
            "loader": experiment.loader,
        }
        self.channels_last = experiment.train.channels_last
        # validation and evaluation run under the autocast the model was trained with
        self.amp = amp_dtype(experiment.train.amp, device) if isinstance(amp, str) else amp

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.model(x)
        return self.head.probabilities(logits.float())

    __call__ = predict_proba


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a checkpoint (EMA weights when present) for evaluation."""
    from train.models import build_model

    ckpt = read_checkpoint(path)
    for key in ("model", "config", "task", "input_shape"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a musicstream checkpoint (no {key!r})")
    kind = str(ckpt.get("sample_kind", "audio"))  # absent in checkpoints written before image shards
    config = ckpt["config"]
    if kind == "audio" and isinstance(config.get("features"), dict):  # image builds' cqt is an image
        config = {**config, "features": stored_features(config["features"])}
    exp = experiment_from_tree(config, str(path), strict=False)  # outlives config changes
    exp.model.pretrained = None  # the checkpoint carries the weights
    task = checkpoint_task(ckpt, path)
    shape = tuple(ckpt["input_shape"])
    model = build_model(exp.model, in_chans=shape[0], head_sizes=task.head_sizes, input_shape=shape)
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    dev = torch.device(device)
    model.to(dev).eval()
    if exp.train.channels_last:
        model.to(memory_format=torch.channels_last)
    name = f"{exp.model.family}:{Path(path).name}"
    return TrainedModel(model, task, exp, name=name, device=dev, sample_kind=kind)
