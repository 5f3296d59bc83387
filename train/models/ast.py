"""Audio Spectrogram Transformer (Gong et al. 2021) on (B, C, F, T) spectrograms.

Overlapping 16x16 patches with stride 10, a cls and a distillation token whose outputs
are averaged, positional embeddings interpolated to the input's patch grid (built for
``input_shape``, resampled on the fly when a batch has another size). ``model.pretrained``
may name a DeiT ImageNet checkpoint (a file, or ``hf-hub:``/``local-dir:`` in timm's layout)
or an AudioSet AST in Hugging Face transformers format (``hf-hub:MIT/ast-finetuned-audioset-10-10-0.4593``
or a ``save_pretrained`` folder, mapped by ``train.models.ast_hf``): the patch embedding is
adapted to ``in_chans`` and the position grid resampled to ours.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, cast

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block

from train.config import ModelConfig
from train.models.pretrained import Weights, adapt_conv_weight, load_matching
from train.models.registry import Family, register_family

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},  # DeiT-Ti
    "small": {"dim": 384, "depth": 12, "heads": 6},  # DeiT-S
    "base": {"dim": 768, "depth": 12, "heads": 12},  # DeiT-B (the AST paper)
    # the AudioSet checkpoints in transformers format (MIT/ast-finetuned-audioset-*): their
    # LayerNorm eps and the LayerNorm of their classifier (ASTMLPHead)
    "audioset": {"dim": 768, "depth": 12, "heads": 12, "norm_eps": 1e-12, "head_norm": True},
}
N_PREFIX = 2  # cls + distillation tokens


def patch_grid(size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """(F', T') patches along frequency and time."""
    return ((size[0] - patch) // stride + 1, (size[1] - patch) // stride + 1)


class AST(nn.Module):
    """(B, C, F, T) -> (B, num_outputs) logits."""

    def __init__(
        self,
        *,
        in_chans: int,
        num_outputs: int,
        input_shape: tuple[int, int, int],
        dim: int,
        depth: int,
        heads: int,
        patch: int = 16,
        stride: int = 10,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        head_norm: bool = False,
    ) -> None:
        super().__init__()
        _, f, t = input_shape
        if f < patch or t < patch:
            raise ValueError(f"model ast: input (F={f}, T={t}) is smaller than one {patch}x{patch} patch")
        self.patch, self.stride, self.mlp_ratio, self.norm_eps = patch, stride, mlp_ratio, norm_eps
        self.dim, self.depth, self.heads = dim, depth, heads
        norm = cast("type[nn.Module]", partial(nn.LayerNorm, eps=norm_eps))  # timm types it as a class
        self.grid = patch_grid((f, t), patch, stride)
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, N_PREFIX + self.grid[0] * self.grid[1], dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, norm_layer=norm)
                for r in rates
            ]
        )
        self.norm = norm(dim)
        self.head_norm = norm(dim) if head_norm else nn.Identity()  # transformers' ASTMLPHead has one
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_outputs))
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            trunc_normal_(p, std=0.02)

    def pos_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid), num_prefix_tokens=N_PREFIX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(self.pooled(x)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, D): the mean of the cls and distillation outputs (transformers'
        ``ASTModel`` ``pooler_output``)."""
        x = self.patch_embed(x)  # (B, D, F', T')
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, F'*T', D)
        prefix = torch.cat([self.cls_token, self.dist_token], 1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], 1) + self.pos_for(grid)
        x = self.norm(self.blocks(x))
        return (x[:, 0] + x[:, 1]) / 2


def load_deit(model: AST, weights: Weights) -> None:
    """Adapt a DeiT (distilled or not) checkpoint: patch conv, position grid, no head."""
    state, path = dict(weights.state), weights.source
    w = state.get("patch_embed.proj.weight")
    if w is None:
        raise ValueError(
            f"model.pretrained: {path} has no patch_embed.proj.weight (not a DeiT/ViT checkpoint)"
        )
    if w.shape[-1] != model.patch:
        raise ValueError(f"model.pretrained: {path} has {w.shape[-1]}px patches, AST uses {model.patch}")
    state["patch_embed.weight"] = adapt_conv_weight(
        state.pop("patch_embed.proj.weight"), model.patch_embed.in_channels
    )
    if "patch_embed.proj.bias" in state:
        state["patch_embed.bias"] = state.pop("patch_embed.proj.bias")
    pos = state.get("pos_embed")
    if pos is not None:
        prefix = 2 if "dist_token" in state else 1
        side = int(math.isqrt(pos.shape[1] - prefix))
        grid_pos = resample_abs_pos_embed(
            pos[:, prefix:], list(model.grid), [side, side], num_prefix_tokens=0
        )
        pre = pos[:, :prefix] if prefix == 2 else pos[:, :1].repeat(1, 2, 1)
        state["pos_embed"] = torch.cat([pre, grid_pos], 1)
    if "dist_token" not in state and "cls_token" in state:
        state["dist_token"] = state["cls_token"].clone()
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    load_matching(model, state, source=str(path))


def build_ast(
    cfg: ModelConfig, *, in_chans: int, num_outputs: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    model = AST(
        in_chans=in_chans,
        num_outputs=num_outputs,
        input_shape=input_shape,
        dropout=cfg.dropout,
        drop_path=cfg.drop_path,
        **kwargs,
    )
    return model


def no_default_weights(model: nn.Module) -> str | None:
    """``model.pretrained = "timm"`` has nothing to name for our AST: say what to give instead."""
    raise ValueError(
        "model.pretrained: ast has no default timm weights; use hf-hub:MIT/ast-finetuned-audioset-10-10-0.4593 "
        "(AudioSet), hf-hub:timm/deit_base_distilled_patch16_224.fb_in1k (ImageNet) or a local copy"
    )


def load_ast_weights(model: nn.Module, weights: Weights, in_chans: int) -> None:
    """An AudioSet AST in transformers' format (``train.models.ast_hf``) or a DeiT checkpoint."""
    from train.models.ast_hf import is_hf_ast, load_hf_ast

    assert isinstance(model, AST)
    if is_hf_ast(weights):
        load_hf_ast(model, weights)
    else:
        load_deit(model, weights)


register_family(
    Family(name="ast", builder=build_ast, presets=PRESETS, default_preset="base",
           load_weights=load_ast_weights, default_hub_id=no_default_weights)
)  # fmt: skip
