"""Audio Spectrogram Transformer (Gong et al. 2021) on (B, C, F, T) spectrograms.

Overlapping 16x16 patches with stride 10, a cls and a distillation token whose outputs
are averaged, positional embeddings interpolated to the input's patch grid (built for
``input_shape``, resampled on the fly when a batch has another size). A DeiT ImageNet
checkpoint can be loaded from a local file: its patch embedding is adapted to
``in_chans`` and its 14x14 position grid resampled to ours.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block

from train.config import ModelConfig
from train.models.pretrained import adapt_conv_weight, load_matching, read_state_dict
from train.models.registry import Family, register_family

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},  # DeiT-Ti
    "small": {"dim": 384, "depth": 12, "heads": 6},  # DeiT-S
    "base": {"dim": 768, "depth": 12, "heads": 12},  # DeiT-B (the AST paper)
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
    ) -> None:
        super().__init__()
        _, f, t = input_shape
        if f < patch or t < patch:
            raise ValueError(f"model ast: input (F={f}, T={t}) is smaller than one {patch}x{patch} patch")
        self.patch, self.stride = patch, stride
        self.grid = patch_grid((f, t), patch, stride)
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, N_PREFIX + self.grid[0] * self.grid[1], dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_outputs))
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            trunc_normal_(p, std=0.02)

    def pos_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid), num_prefix_tokens=N_PREFIX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, D, F', T')
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, F'*T', D)
        prefix = torch.cat([self.cls_token, self.dist_token], 1).expand(x.shape[0], -1, -1)
        x = torch.cat([prefix, x], 1) + self.pos_for(grid)
        x = self.norm(self.blocks(x))
        return self.head((x[:, 0] + x[:, 1]) / 2)


def load_deit(model: AST, path: Any) -> None:
    """Adapt a local DeiT (distilled or not) checkpoint: patch conv, position grid, no head."""
    state = read_state_dict(path)
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
    if cfg.pretrained is not None:
        load_deit(model, cfg.pretrained)
    return model


register_family(Family(name="ast", builder=build_ast, presets=PRESETS, default_preset="base"))
