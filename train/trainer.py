"""The training loop: a ``Trainer`` with train() / train_step() / state_dict() / close().

Checkpointing (train.checkpoint), metrics (train.logger), validation (train.validation)
and data (train.data) are separate components it calls. Every rank runs the same
number of steps (the loader contract), so DDP collectives never deadlock.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from shards.atomic import atomic_write_text
from train import distributed
from train.checkpoint import Checkpointer, ChunkPredictor, check_vocab, read, rng_state, set_rng_state
from train.config import Experiment
from train.data import build_data, read_task
from train.distributed import DistInfo
from train.logger import MetricsLogger
from train.models import build_model, check_model_config
from train.optim import EMA, build_optimizer, build_scheduler
from train.tasks import TaskHead
from train.validation import primary_metric, validate

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from train.models.gbm import GBMModel

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """Builds everything from an ``Experiment`` and runs (or resumes) the run."""

    def __init__(
        self,
        exp: Experiment,
        *,
        info: DistInfo | None = None,
        hooks: list[Callable[[Trainer], None]] | None = None,
    ) -> None:
        self.exp, self.hooks = exp, list(hooks or [])
        self.info = info or distributed.init(exp.train.device)
        self.device = self.info.device
        if exp.train.threads:
            torch.set_num_threads(exp.train.threads)
        torch.manual_seed(exp.train.seed)
        self.out = exp.train.out
        self.checkpointer = Checkpointer(self.out / "checkpoints", exp.checkpoint, is_main=self.info.is_main)
        # Everything that can refuse the run happens before model/loader (GPU) work.
        self.task = read_task(exp)
        self.family = check_model_config(exp.model, self.task.kind)
        resume = distributed.broadcast_object(self.checkpointer.resume_path())
        self.resume_state = read(resume) if resume else None
        if self.resume_state is not None:
            check_vocab(self.resume_state, self.task, str(resume))
        self.data = build_data(exp, rank=self.info.rank, world_size=self.info.world_size, device=self.device)
        self.head = TaskHead(self.task, label_smoothing=exp.train.label_smoothing)
        self.raw = build_model(
            exp.model,
            in_chans=self.data.feature_shape[0],
            head_sizes=self.task.head_sizes,
            input_shape=self.data.feature_shape,
            task_kind=self.task.kind,
        ).to(self.device)
        if exp.train.channels_last:
            self.raw.to(memory_format=torch.channels_last)
        # same init on every rank (above); from here each rank draws its own dropout /
        # drop-path masks (identical masks on every rank would correlate the noise)
        torch.manual_seed(exp.train.seed + self.info.rank)
        self.step, self.epoch, self.micro = 0, 0, 0
        self._group = exp.optim.grad_accum  # micro-batches in the current accumulation group
        self.batch_in_epoch = 0  # batches consumed in the current epoch (resume-aware)
        self._saved_step = -1
        self.metrics: dict[str, float] = {}
        self.stop_requested = False  # set by the signal handler on this rank
        self.stopped = False  # every rank agreed to stop (what train() acts on)
        self.logger = MetricsLogger(self.out, enabled=self.info.is_main)
        self._amp = self._amp_dtype()
        if self.family.trainable:
            self._build_optimisation()
        if self.resume_state is not None:
            self.load_state_dict(self.resume_state)
        self._write_config()

    # ----------------------------------------------------------------- setup
    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.exp.train.amp
        if amp == "none":
            return None
        if self.device.type != "cuda":
            warnings.warn(f"train.amp={amp!r} has no effect on CPU; training in float32", stacklevel=2)
            return None
        return AMP_DTYPES[amp]

    def _build_optimisation(self) -> None:
        o, t = self.exp.optim, self.exp.train
        per_epoch = max(1, -(-len(self.data.train) // o.grad_accum))  # a partial last group steps too
        self.total_steps = min(t.max_steps or 10**12, per_epoch * t.epochs)
        self.optimizer = build_optimizer(self.raw, o)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, o)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self._amp == torch.float16)
        self.ema = EMA(self.raw, t.ema_decay) if t.ema_decay else None
        model: nn.Module = self.raw
        self.ddp: DDP | None = None
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self.ddp = DDP(model, device_ids=ids)
        # compile wraps DDP (torch's DDP + compile recipe); no_sync() is taken from self.ddp,
        # because the compiled wrapper is not a DDP instance
        self.model = torch.compile(model) if t.compile else model

    def _write_config(self) -> None:
        if self.info.is_main:
            text = json.dumps(self.exp.to_dict(), indent=2, default=str)
            atomic_write_text(self.out / "config.json", text + "\n")

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs (or fit the gbm); returns step, epoch, metrics, stopped."""
        if not self.family.trainable:
            return self._fit_gbm()
        restore = self._install_signals()
        try:
            while self.epoch < self.exp.train.epochs and not self._done():
                if self._run_epoch():
                    break
        finally:
            restore()
        self.sync_buffers()
        # the agreed flag, not this rank's: a signal that lands after the last agreement
        # must not make one rank skip a collective save that the others enter
        if not self.stopped and self._saved_step != self.step:
            self.save()
        self.check_ranks_in_sync()
        return self.summary()

    def _run_epoch(self) -> bool:
        """One (possibly resumed) epoch; True when the run must stop (signal or max_steps)."""
        bar = tqdm(
            total=len(self.data.train), initial=self.batch_in_epoch, disable=not self.info.is_main,
            desc=f"epoch {self.epoch + 1}/{self.exp.train.epochs}", dynamic_ncols=True, leave=False,
        )  # fmt: skip
        self.raw.train()
        running, count = torch.zeros((), device=self.device), 0
        for batch in self.data.train:
            loss = self.train_step(batch)
            running, count = running + loss, count + 1
            self.batch_in_epoch += 1
            bar.update(1)
            if self.micro:
                continue
            if self.step % self.exp.train.log_every == 0:
                self._log_train(running / count, bar)
                running, count = torch.zeros((), device=self.device), 0
            for hook in self.hooks:
                hook(self)
            if self._should_stop():
                self.stopped = True
                self.save()
                bar.close()
                return True
            if self.checkpointer.due(self.step):
                self.save()
            if self._done():
                break
        bar.close()
        if self.micro:  # the loader ended before len(loader) batches: sync by hand, then step
            self._all_reduce_grads()
            self._optimizer_step()
        if self._done() and self.batch_in_epoch < len(self.data.train):
            return True  # max_steps inside an epoch: stop without a half-epoch validation
        self.epoch += 1
        self.batch_in_epoch = 0
        self.metrics = self.validate()
        self.logger.log(self.step, self.epoch, {f"val/{k}": v for k, v in self.metrics.items()})
        self._save_with_best()
        return False

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward/backward one micro-batch; steps the optimiser every grad_accum calls.

        Returns the detached loss on the device (no host sync per step; ``.item()`` it to read)."""
        x, y = batch["x"], batch["y"]
        if self.exp.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.micro == 0:
            self._group = self._group_size()
        last_micro = self.micro + 1 >= self._group
        # the last micro-batch of a group all-reduces (DDP); the epoch's last batch always
        # closes its group, so a partial group is synchronised like a full one
        ddp = getattr(self, "ddp", None)
        sync = contextlib.nullcontext() if last_micro or ddp is None else ddp.no_sync()
        with sync:
            with torch.autocast(
                self.device.type, dtype=self._amp or torch.float32, enabled=self._amp is not None
            ):
                loss = self.head.loss(self.model(x), y)
            self.scaler.scale(loss / self._group).backward()
        self.micro += 1
        if last_micro:
            self._optimizer_step()
        return loss.detach().float()

    def _group_size(self) -> int:
        """Micro-batches in the accumulation group starting now: grad_accum, or fewer when
        the epoch ends first (``len(loader)`` is the same on every rank)."""
        accum = self.exp.optim.grad_accum
        left = len(self.data.train) - self.batch_in_epoch
        return min(accum, left) if left > 0 else accum

    def _optimizer_step(self) -> None:
        clip = self.exp.optim.clip_norm
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw)
        self.step += 1
        self.micro = 0

    def _all_reduce_grads(self) -> None:
        """Average gradients over ranks (what DDP does when a group's last backward syncs)."""
        if not self.info.distributed:
            return
        for p in self.raw.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.info.world_size

    def _done(self) -> bool:
        return self.exp.train.max_steps is not None and self.step >= self.exp.train.max_steps

    def _should_stop(self) -> bool:
        """SIGTERM/SIGINT on any rank stops every rank at the same (the next) optimiser step.

        Ranks agree through a one-element all-reduce every step on a CPU (gloo) group: no
        host-GPU sync per step, and a preempted job (torchrun gives its workers ~30 s after
        SIGTERM) saves at once instead of up to ``log_every`` steps later."""
        if not self.info.distributed:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._control_group())
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _control_group(self) -> Any:
        """The process group for CPU control flags: the default one under gloo, a gloo
        group beside NCCL otherwise (created on first use: every rank reaches it at the same step)."""
        if getattr(self, "_ctl", None) is None:
            if torch.distributed.get_backend() == "gloo":
                self._ctl = torch.distributed.group.WORLD
            else:
                # every rank is a member (ranks=None), so this is a ProcessGroup, never NON_GROUP_MEMBER
                self._ctl = cast("ProcessGroup", torch.distributed.new_group(backend="gloo"))
        return self._ctl

    def _log_train(self, mean_loss: torch.Tensor, bar: tqdm) -> None:
        loss = distributed.all_reduce_mean(mean_loss.reshape(1)).item()
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self.logger.log(self.step, self.epoch, {"train/loss": loss, "train/lr": lr})

    # ------------------------------------------------------------ validation
    def predictor(self) -> ChunkPredictor:
        """The model being validated (EMA weights when enabled) as eval's ChunkPredictor."""
        ema: EMA | None = getattr(self, "ema", None)
        module = ema.module if ema is not None else self.raw
        return ChunkPredictor(module, self.task, self.exp, name=self.exp.model.family, device=self.device)

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere: DDP only syncs them at the next
        forward, so after an epoch each rank would validate and save slightly different stats."""
        if not self.info.distributed:
            return
        ema: EMA | None = getattr(self, "ema", None)
        modules = [self.raw] + ([ema.module] if ema is not None else [])
        for module in modules:
            for buf in module.buffers():
                torch.distributed.broadcast(buf, src=0)

    def validate(self) -> dict[str, float]:
        self.sync_buffers()
        if self.data.val is None:
            return {}
        metrics = validate(self.predictor(), self.data.val, self.task, self.exp.eval)
        self.raw.train()
        return metrics

    def _save_with_best(self) -> None:
        """Epoch-end save. The best value is updated *before* the step file is written, so a
        run resumed from it knows this epoch's score and never overwrites a better best.pt."""
        improved = self._update_best()
        self.save()
        if improved:
            self.checkpointer.save_best(self.state_dict())

    def _update_best(self) -> bool:
        name, mode = self.exp.train.best_metric or primary_metric(self.task.kind), self.exp.train.best_mode
        if not self.metrics:
            return False
        if name not in self.metrics:
            warnings.warn(
                f"train.best_metric {name!r} not among {sorted(self.metrics)}; no best.pt", stacklevel=2
            )
            return False
        return self.checkpointer.improved(self.metrics[name], mode)

    def _fit_gbm(self) -> dict[str, Any]:
        from train.gbm_fit import fit_distributed

        # the only non-trainable family is gbm: its builder returns a GBMModel
        stats = fit_distributed(
            cast("GBMModel", self.raw),
            self.data.train,
            self.task,
            is_main=self.info.is_main,
            threads=self.exp.train.threads,
        )
        self.step, self.epoch = 1, self.exp.train.epochs
        self.metrics = self.validate()
        self.logger.log(self.step, self.epoch, {**stats, **{f"val/{k}": v for k, v in self.metrics.items()}})
        self._save_with_best()
        return self.summary()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run or eval needs, as tensors and plain data (weights_only)."""
        state: dict[str, Any] = {
            "model": self.raw.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "config": self.exp.to_dict(),
            "task": self.task.vocab(),
            "family": self.exp.model.family,
            "input_shape": list(self.data.feature_shape),
            "metrics": dict(self.metrics),
            "best": self.checkpointer.best,
            "world_size": self.info.world_size,
        }
        state["rng"] = self._gather(rng_state())
        state["loader"] = self._gather(self.data.train.state_dict())
        if self.family.trainable:
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                ema=self.ema.state_dict() if self.ema is not None else None,
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.metrics, self.checkpointer.best = dict(state.get("metrics") or {}), state.get("best")
        if self.family.trainable:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):  # empty when saved without fp16 (bf16, or CPU): keep a fresh scaler
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        if int(state.get("world_size", 1)) == self.info.world_size:
            set_rng_state(state["rng"][self.info.rank])
            self.data.train.load_state_dict(state["loader"][self.info.rank])
        else:
            warnings.warn(
                "resuming with a different world size: RNG and loader position restart", stacklevel=2
            )

    def save(self) -> None:
        state = self.state_dict()  # collective (gathers RNG/loader state): every rank calls it
        self.checkpointer.save(state, self.step)
        self._saved_step = self.step
        distributed.barrier()

    def _gather(self, obj: Any) -> list[Any]:
        """This object from every rank, as a list indexed by rank (all ranks get it)."""
        if not self.info.distributed:
            return [obj]
        out: list[Any] = [None] * self.info.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def check_ranks_in_sync(self) -> float:
        """Max difference of a float64 weight fingerprint across ranks (0.0 when in step); logged."""
        tensors = [p.detach().double() for p in self.raw.state_dict().values() if torch.is_tensor(p)]
        fp = sum(
            float((t.flatten() * torch.arange(1, t.numel() + 1, dtype=t.dtype, device=t.device)).sum())
            for t in tensors
        )
        prints = [float(v) for v in self._gather(fp)]
        diff = max(prints) - min(prints)
        self.logger.log(self.step, self.epoch, {"sync/fingerprints": prints, "sync/max_diff": diff})
        if diff != 0.0:
            warnings.warn(f"ranks ended with different weights (fingerprints {prints})", stacklevel=2)
        return diff

    def summary(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "metrics": dict(self.metrics),
            "stopped": self.stopped,
        }

    def _install_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT -> checkpoint at the next step boundary and return cleanly."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            self.stop_requested = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def close(self) -> None:
        self.logger.close()
        if self.info.is_main:
            self._plot_curves()

    def _plot_curves(self) -> None:
        """``OUT/curves.png``: loss and validation metrics so far (also after a stop or a crash)."""
        from eval.plots import plot_training_curves
        from train.logger import read_metrics

        try:
            plot_training_curves(
                read_metrics(self.out), self.out / "curves.png", f"{self.exp.model.family}: {self.out}"
            )
        except (OSError, ValueError, RuntimeError) as e:  # a plot must never lose a finished run
            warnings.warn(f"{self.out / 'curves.png'}: could not plot the training curves: {e}", stacklevel=2)
