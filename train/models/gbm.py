"""PCA + LightGBM on pooled spectrogram features (per channel and band: mean and std over time).

LightGBM because (1) its booster serialises to plain text, which a weights_only
checkpoint stores as a string (no pickle), and (2) it is fast multi-threaded histogram
boosting, so fitting on rank 0 takes seconds to minutes even for a full dataset's chunks.
The module holds no trainable parameters: everything lives in ``get_extra_state``
(PCA tensors, booster texts), so it travels in ``state_dict`` like any other model.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shards.base import distributed
from shards.base.distributed import all_gather_object
from shards.base.progress import progress as progress_bar
from shards.base.tasks import TaskSpec
from train.config import ModelConfig
from train.models.registry import Family, FitContext, register_family

if TYPE_CHECKING:
    from pipelines.batches import BatchLoader

DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.9,
    "verbosity": -1,
}


def pooled_features(x: torch.Tensor, bands: int | None = None) -> torch.Tensor:
    """(B, C, F, T) -> (B, 2*C*F') with F' = bands (adaptive average over F) or F."""
    if bands is not None and bands < x.shape[2]:
        x = F.adaptive_avg_pool2d(x, (bands, x.shape[3]))
    x = x.float()
    return torch.cat([x.mean(-1).flatten(1), x.std(-1, correction=0).flatten(1)], 1)


class GBMModel(nn.Module):
    """(B, C, F, T) -> (B, num_outputs) logits (log-probabilities / probability logits).

    ``fit`` (called by the trainer on rank 0) sets the PCA and one booster per head
    (single/hier) or per tag (multi).
    """

    def __init__(
        self,
        *,
        num_outputs: int,
        pca_components: int = 64,
        bands: int | None = None,
        rounds: int = 200,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pca_components < 1 or rounds < 1:
            raise ValueError("model.kwargs: gbm pca_components and rounds must be >= 1")
        self.num_outputs, self.pca_components, self.bands, self.rounds = (
            num_outputs,
            pca_components,
            bands,
            rounds,
        )
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.state: dict[str, Any] = {}
        self._boosters: list[Any] | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    def get_extra_state(self) -> dict[str, Any]:
        return dict(self.state)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.state, self._boosters = dict(state), None

    def project(self, feats: torch.Tensor) -> np.ndarray:
        """Pooled features (N, D) -> PCA scores (N, k) as float64 numpy."""
        s = self.state
        z = (feats.float().cpu() - s["mean"]) / s["scale"]
        return (z @ s["components"]).double().numpy()

    def fit(
        self, feats: torch.Tensor, y: torch.Tensor, kind: str, head_sizes: list[int], threads: int = 0
    ) -> None:
        """Fit PCA on (N, D) features, then the boosters on the PCA scores."""
        import lightgbm as lgb

        feats = feats.float().cpu()
        mean, scale = feats.mean(0), feats.std(0).clamp_min(1e-6)
        k = min(self.pca_components, feats.shape[0], feats.shape[1])
        _, _, v = torch.pca_lowrank((feats - mean) / scale, q=k, center=False, niter=4)
        self.state = {"mean": mean, "scale": scale, "components": v[:, :k].contiguous(), "kind": kind}
        z, y_np = self.project(feats), y.cpu().numpy()
        params = {**self.params, "num_threads": threads}
        texts: list[str] = []
        if kind == "multi":
            for j in range(y_np.shape[1]):
                texts.append(_fit_one(lgb, z, y_np[:, j], {**params, "objective": "binary"}, self.rounds))
        else:
            cols = y_np.reshape(len(y_np), -1)
            for j, n in enumerate(head_sizes):
                p = {**params, "objective": "multiclass", "num_class": n}
                texts.append(_fit_one(lgb, z, cols[:, j], p, self.rounds))
        self.state.update(boosters=texts, head_sizes=list(head_sizes))
        self._boosters = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError("gbm model used before fit (train it with `python -m train`)")
        z = self.project(pooled_features(x, self.bands))
        probs = [_predict(booster, z) for booster in self._loaded()]
        p = torch.from_numpy(np.concatenate(probs, 1)).float().clamp(1e-7, 1 - 1e-7)
        logits = torch.logit(p) if self.state["kind"] == "multi" else p.log()
        return logits.to(x.device)

    def _loaded(self) -> list[Any]:
        if self._boosters is None:
            import lightgbm as lgb

            self._boosters = [
                t if t.startswith("const:") else lgb.Booster(model_str=t) for t in self.state["boosters"]
            ]
        return self._boosters


def _fit_one(lgb: Any, z: np.ndarray, y: np.ndarray, params: dict[str, Any], rounds: int) -> str:
    """One booster as text; a label with one value only becomes a constant 'const:p'."""
    if params["objective"] == "binary" and len(np.unique(y)) < 2:
        return f"const:{float(y.mean() if len(y) else 0.0)}"
    booster = lgb.train(params, lgb.Dataset(z, label=y), num_boost_round=rounds)
    return booster.model_to_string()


def _predict(booster: Any, z: np.ndarray) -> np.ndarray:
    if isinstance(booster, str):
        return np.full((len(z), 1), float(booster.removeprefix("const:")))
    p = booster.predict(z)
    return p.reshape(len(z), -1)


def build_gbm(
    cfg: ModelConfig, *, in_chans: int, num_outputs: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    unused = [n for n in ("pretrained", "dropout", "drop_path") if getattr(cfg, n)]
    if unused:
        warnings.warn(f"model.{', model.'.join(unused)}: no effect on the gbm family", stacklevel=2)
    return GBMModel(num_outputs=num_outputs, **kwargs)


@torch.no_grad()
def extract(loader: BatchLoader, bands: int | None, *, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled features and (N, ...) labels of this rank's share of one epoch."""
    feats, labels = [], []
    for batch in progress_bar(loader, desc="gbm features", enabled=progress, leave=False):
        feats.append(pooled_features(batch["x"], bands).cpu())
        labels.append(batch["y"].cpu())
    return torch.cat(feats), torch.cat(labels)


def fit_distributed(
    module: nn.Module, loader: BatchLoader, task: TaskSpec, ctx: FitContext
) -> dict[str, float]:
    """The family's fit: every rank pools features of its share of the training loader's
    chunks on its own device; rank 0 gathers them, fits PCA + LightGBM and sends the
    fitted state back, so every rank validates the same model. Returns timing/size stats."""
    model, is_main, threads = cast(GBMModel, module), ctx.is_main, ctx.threads
    t0 = time.perf_counter()
    feats, labels = extract(loader, model.bands, progress=is_main)
    gathered = all_gather_object((feats, labels))
    t1 = time.perf_counter()
    stats: dict[str, float] = {}
    if is_main:
        x, y = torch.cat([f for f, _ in gathered]), torch.cat([lab for _, lab in gathered])
        model.fit(x, y, task.kind, task.head_sizes, threads=threads or 0)
        stats = {"gbm/samples": float(len(x)), "gbm/features": float(x.shape[1])}
    state = distributed.broadcast_object(model.get_extra_state() if is_main else None)
    model.set_extra_state(state)
    stats = distributed.broadcast_object(stats)
    stats.update({"gbm/extract_s": t1 - t0, "gbm/fit_s": time.perf_counter() - t1})
    return stats


register_family(Family(name="gbm", builder=build_gbm, fit=fit_distributed))
