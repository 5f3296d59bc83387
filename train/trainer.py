"""The training loop: a ``Trainer`` with train() / train_step() / state_dict() / close().

Checkpointing (train.checkpoint), metrics (train.logger), stopping (train.stopping) and
data (train.data) are separate components it calls; validation is a function it is
handed (``python -m train`` wires eval's). Every stateful part registers itself with the
checkpointer by name, so the Trainer lists no checkpoint keys. Every rank runs the same
number of steps (the loader contract), so DDP collectives never deadlock.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from shards.base import distributed
from shards.base.atomic import atomic_write_text
from shards.base.distributed import DistInfo
from shards.base.logs import get_logger
from shards.base.progress import progress
from shards.base.tasks import TaskSpec, primary_metric
from train.checkpoint import (
    Checkpointer,
    RNGState,
    RunDescription,
    TrainedModel,
    check_vocab,
    checkpoint_task,
)
from train.config import Experiment
from train.curves import plot_run_curves
from train.data import build_data, data_source
from train.data_wait import DataWait, wait_postfix
from train.faults import BadShard, stop_on_bad_shard
from train.logger import MetricsLogger, validation_line, with_skipped
from train.loss import TaskLoss
from train.mixup import Mixup
from train.models.registry import FitContext, build_model, get_family
from train.optim import EMA, build_optimizer, build_scheduler, move_schedule
from train.precision import amp_dtype, deterministic_kernels
from train.progress import TrainProgress
from train.rank_sync import average_grads, broadcast_buffers, weight_spread
from train.stopping import StopSignal

if TYPE_CHECKING:
    from pipelines.batches import BatchLoader

log = get_logger("train")

Validator = Callable[[TrainedModel, "BatchLoader", TaskSpec], dict[str, float]]
"""validate(predictor, eval-mode loader, task) -> flat metrics (``track/accuracy``, ...);
collective: every rank calls it and gets the same numbers."""


class Trainer:
    """Builds everything from an ``Experiment`` and runs (or resumes) the run."""

    def __init__(
        self,
        exp: Experiment,
        *,
        info: DistInfo | None = None,
        hooks: list[Callable[[Trainer], None]] | None = None,
        validate: Validator | None = None,
    ) -> None:
        self.exp, self.hooks, self._validate = exp, list(hooks or []), validate
        self.info = info or distributed.init(exp.train.device)
        self.device = self.info.device
        if exp.train.threads:
            torch.set_num_threads(exp.train.threads)
        if exp.train.deterministic:
            deterministic_kernels()
        torch.manual_seed(exp.train.seed)
        self.out = exp.train.out
        i = self.info
        self.checkpointer = Checkpointer(
            self.out / "checkpoints", exp.checkpoint, is_main=i.is_main, rank=i.rank, world_size=i.world_size
        )
        # Everything that can refuse the run happens before model/loader (GPU) work.
        manifests, self.task = data_source(exp)  # the manifests, read once per start
        self.family = get_family(exp.model.family)  # model section checked when the config was read
        self.family.check_task(self.task.kind)
        resume, self.resume_state = self.checkpointer.resume()  # auto: the newest that loads
        if resume is not None and self.resume_state is not None:
            hint = "; use a fresh train.out or checkpoint.resume=none"
            data = ", ".join(exp.data.builds) or "synthetic data"
            check_vocab(checkpoint_task(self.resume_state, resume), self.task, resume, data, hint)
        self.data = build_data(
            exp, self.task, manifests, rank=i.rank, world_size=i.world_size, device=self.device
        )
        self.sample_kind = manifests[0].kind if manifests else "audio"
        self.head = TaskLoss(self.task, label_smoothing=exp.train.label_smoothing)
        self.mixup = Mixup(exp.augment.mixup_alpha, self.task, exp.train.seed, i.rank, self.family.trainable)
        self.model = self._build_model()
        # same init on every rank (above); from here each rank draws its own dropout /
        # drop-path masks (identical masks on every rank would correlate the noise)
        torch.manual_seed(exp.train.seed + i.rank)
        self.progress = TrainProgress()
        self.micro = 0
        self._group = exp.optim.grad_accum  # micro-batches in the current accumulation group
        self._saved_step = -1
        self.stop = StopSignal(i.distributed)
        self.stopped = False  # every rank agreed to stop (what train() acts on)
        self.logger = MetricsLogger(self.out, enabled=i.is_main, tensorboard=exp.train.tensorboard)
        self.data_wait = DataWait()  # per-rank wait for the next batch, gathered at each log step
        self._amp = amp_dtype(exp.train.amp, self.device, warn=True)
        self.ema: EMA | None = None
        self.ddp: DDP | None = None
        self.step_model: nn.Module = self.model
        self._register_state()
        if self.family.trainable:
            self._build_optimisation()
        if self.resume_state is not None:
            self.load_state_dict(self.resume_state)
        self._write_config()

    # the run's position, kept in one stateful component
    step = property(lambda self: self.progress.step, lambda self, v: setattr(self.progress, "step", v))
    epoch = property(lambda self: self.progress.epoch, lambda self, v: setattr(self.progress, "epoch", v))
    batch_in_epoch = property(
        lambda self: self.progress.batch_in_epoch, lambda self, v: setattr(self.progress, "batch_in_epoch", v)
    )
    metrics = property(
        lambda self: self.progress.metrics, lambda self, v: setattr(self.progress, "metrics", v)
    )

    # ----------------------------------------------------------------- setup
    def _build_model(self) -> nn.Module:
        shape = self.data.feature_shape
        model = build_model(self.exp.model, self.family, in_chans=shape[0], head_sizes=self.task.head_sizes,
                            input_shape=shape).to(self.device)  # fmt: skip
        if self.exp.train.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _register_state(self) -> None:
        c = self.checkpointer
        c.register("model", self.model, required=True)
        c.register("progress", self.progress, fields=True)
        c.register(
            "run", RunDescription(self.exp, self.task, self.data.feature_shape, self.sample_kind), fields=True
        )
        c.register("rng", RNGState(), per_rank=True)
        c.register("loader", self.data.train)  # the plan's position: the same on every rank
        c.register("mixup", self.mixup, per_rank=True)

    def _build_optimisation(self) -> None:
        """Optimiser, schedule, scaler, EMA and DDP: the gradient loop's parts (registered)."""
        o, t = self.exp.optim, self.exp.train
        per_epoch = max(1, -(-len(self.data.train) // o.grad_accum))  # a partial last group steps too
        self.total_steps = min(t.max_steps or 10**12, per_epoch * t.epochs)
        self.optimizer = build_optimizer(self.model, o)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, o)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self._amp == torch.float16)
        c = self.checkpointer
        c.register("optimizer", self.optimizer, required=True)
        c.register("scheduler", self.scheduler, required=True)
        c.register("scaler", self.scaler)  # empty when not fp16: a resume keeps a fresh scaler
        if t.ema_decay:
            self.ema = EMA(self.model, t.ema_decay)
            c.register("ema", self.ema)
        model: nn.Module = self.model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self.ddp = DDP(model, device_ids=ids)
        # compile wraps DDP (torch's DDP + compile recipe); no_sync() is taken from self.ddp,
        # because the compiled wrapper is not a DDP instance
        self.step_model = cast(nn.Module, torch.compile(model)) if t.compile else model

    def _write_config(self) -> None:
        if self.info.is_main:
            text = json.dumps(self.exp.to_dict(), indent=2, default=str)
            atomic_write_text(self.out / "config.json", text + "\n")

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run the remaining epochs (or the family's own fit); returns step, epoch, metrics, stopped."""
        if self.family.fit is not None:
            return self._fit_once(self.family.fit)
        restore = self.stop.install()
        try:
            while self.epoch < self.exp.train.epochs and not self._done():
                if self._run_epoch():
                    break
            restore()  # a second signal from here on stops the process (validation included)
            if self.batch_in_epoch and self.data.val is not None and self._validate is not None:
                self._end_of_epoch({})  # stopped inside an epoch (max_steps, a signal): validate once more
        except BadShard as e:  # a shard went bad under the run: checkpoint, then one line
            raise stop_on_bad_shard(self, e) from None
        finally:
            restore()
        self.sync_buffers()
        # the agreed flag, not this rank's: a signal that lands after the last agreement
        # must not make one rank skip a collective save that the others enter
        if not self.stopped and self._saved_step != self.step:
            self.save()
        prints, diff = weight_spread(self.model)  # ranks in step: 0.0 (else a warning)
        self.logger.log(self.step, self.epoch, {"sync/fingerprints": prints, "sync/max_diff": diff})
        return self.summary()

    def _run_epoch(self) -> bool:
        """One (possibly resumed) epoch; True when the run must stop (signal or max_steps)."""
        bar = progress(
            total=len(self.data.train), initial=self.batch_in_epoch, enabled=self.info.is_main,
            desc=f"epoch {self.epoch + 1}/{self.exp.train.epochs}", unit="batch", leave=False,
        )  # fmt: skip
        self.model.train()
        running, count = torch.zeros((), device=self.device), 0
        for batch in self.data_wait.timed(self.data.train):
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
            if self.stop.agreed():
                return self._stop(bar)
            if self.checkpointer.due(self.step):
                self.save()
            if self._done():
                break
        if self.micro:  # the loader ended before len(loader) batches: sync by hand, then step
            if self.info.distributed:
                average_grads(self.model, self.info.world_size)
            self._optimizer_step()
        if self.stop.settle():  # the agreement posted at the epoch's last step
            return self._stop(bar)
        bar.close()
        if self._done() and self.batch_in_epoch < len(self.data.train):
            return True  # max_steps inside an epoch: train() validates once more
        self.epoch += 1
        self.batch_in_epoch = 0
        self._end_of_epoch({})
        return False

    def _stop(self, bar: Any) -> bool:
        """Every rank agreed to stop: drain the agreement in flight, save, end the run."""
        self.stop.settle()
        self.stopped = True
        self.save()
        bar.close()
        return True

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward/backward one micro-batch; steps the optimiser every grad_accum calls.

        Returns the detached loss on the device (no host sync per step; ``.item()`` it to read)."""
        x, y = self.mixup(batch["x"], batch["y"])  # training only; (x, y) itself when mixup_alpha = 0
        if self.exp.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.micro == 0:
            self._group = self._group_size()
        last_micro = self.micro + 1 >= self._group
        # the last micro-batch of a group all-reduces (DDP); the epoch's last batch always
        # closes its group, so a partial group is synchronised like a full one
        sync = contextlib.nullcontext() if last_micro or self.ddp is None else self.ddp.no_sync()
        with sync:
            with torch.autocast(
                self.device.type, dtype=self._amp or torch.float32, enabled=self._amp is not None
            ):
                loss = self.head.loss(self.step_model(x), y)
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
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.micro = 0

    def _done(self) -> bool:
        return self.exp.train.max_steps is not None and self.step >= self.exp.train.max_steps

    def _log_train(self, mean_loss: torch.Tensor, bar: Any) -> None:
        loss = distributed.all_reduce_mean(mean_loss.reshape(1)).item()
        lr, wait = self.scheduler.get_last_lr()[0], self.data_wait.report()  # collective, all ranks
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", wait=wait_postfix(wait))
        self.logger.log(self.step, self.epoch, {"train/loss": loss, "train/lr": lr, **wait})

    def _fit_once(self, fit: Callable[..., dict[str, float]]) -> dict[str, Any]:
        """A family with its own fit (gbm): one pass over the training loader, then the
        same validation, logging and checkpointing as an epoch end."""
        context = FitContext(self.info.is_main, self.exp.train.threads)
        stats = fit(self.model, self.data.train, self.task, context)
        self.step, self.epoch = 1, self.exp.train.epochs
        self._end_of_epoch(stats)
        return self.summary()

    # ------------------------------------------------------------ validation
    def predictor(self) -> TrainedModel:
        """The model being validated (EMA weights when enabled), under the autocast this Trainer trains with."""
        module = self.ema.module if self.ema is not None else self.model
        return TrainedModel(
            module, self.task, self.exp, name=self.exp.model.family, device=self.device, amp=self._amp
        )

    def sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere: DDP only syncs them at the next
        forward, so after an epoch each rank would validate and save slightly different stats."""
        if self.info.distributed:
            broadcast_buffers([self.model] + ([self.ema.module] if self.ema is not None else []))

    def validate(self) -> dict[str, float]:
        """The handed validation function on the validation split ({} without either)."""
        self.sync_buffers()
        if self.data.val is None or self._validate is None:
            return {}
        metrics = self._validate(self.predictor(), self.data.val, self.task)
        for name, part in self.data.val_parts.items():  # mixed builds: each one's own too
            metrics |= {
                f"{name}/{k}": v for k, v in self._validate(self.predictor(), part, self.task).items()
            }
        self.model.train()
        return metrics

    def _end_of_epoch(self, stats: dict[str, float]) -> None:
        """Validate, log, save (each epoch end; once more when a run stops inside one). The best is
        updated *before* the step file is written: a resumed run never overwrites a better best.pt."""
        self.metrics = self.validate()
        stats = with_skipped(stats, self.data.train.skipped_shards)  # loader.on_bad_shard=skip
        self.logger.log(self.step, self.epoch, {**stats, **{f"val/{k}": v for k, v in self.metrics.items()}})
        improved = self._update_best()
        if self.metrics:  # the log's line per validation (the full set is in metrics.jsonl)
            log.info(validation_line(self.progress, len(self.data.train), self.exp.train.epochs, improved))
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

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return self.checkpointer.state_dict()  # tensors and plain data (weights_only); collective

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every component; on another rank count the loader's plan position is the same
        epoch's, counted in this count's batches, and the LR schedule moves to that share of the run."""
        self.checkpointer.load_state_dict(state)
        self.batch_in_epoch = self.data.train.batches_done
        if int(state.get("world_size", 1)) != self.info.world_size and self.family.trainable:
            o, n = self.exp.optim, len(self.data.train)
            move_schedule(self.scheduler, self.epoch, self.batch_in_epoch, n, self.total_steps, o)

    def save(self) -> None:
        self.checkpointer.save_state(self.step)  # collective (gathers RNG/loader state): every rank calls it
        self._saved_step = self.step
        distributed.barrier()

    def summary(self) -> dict[str, Any]:
        skipped = self.data.train.skipped_shards  # loader.on_bad_shard=skip: the shards left out
        return {"step": self.step, "epoch": self.epoch, "metrics": dict(self.metrics), "stopped": self.stopped,
                **({"skipped_shards": skipped} if skipped else {})}  # fmt: skip

    def close(self) -> None:
        """Release the loaders' DALI pipelines (before the caller destroys the process group:
        DALI issue #6166), close the logs, plot the curves."""
        self.data.close()
        self.logger.close()
        if self.info.is_main:
            plot_run_curves(self.out, f"{self.exp.model.family}: {self.out}")
