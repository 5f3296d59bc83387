"""A compact spectrogram CNN: residual blocks with squeeze-excitation, attention pooling.

Frequency is averaged out after the conv stages; the remaining (B, D, T') sequence is
pooled by learned attention over time, so the clip embedding weights the informative
frames. Sizes are presets (data), not code branches.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from train.config import ModelConfig
from train.models.pretrained import Weights, load_matching
from train.models.registry import Family, register_family

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"widths": [16, 32, 64], "blocks": [1, 1, 1]},
    "small": {"widths": [32, 64, 128, 256], "blocks": [1, 1, 2, 1]},
    "base": {"widths": [64, 128, 256, 512], "blocks": [2, 2, 2, 2]},
}


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, ch // reduction)
        self.fc = nn.Sequential(
            nn.Linear(ch, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, ch), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class ResSEBlock(nn.Module):
    """conv-bn-relu-conv-bn-SE + (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            SqueezeExcite(cout),
        )
        self.short = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class AttentionPool(nn.Module):
    """(B, D, T') -> (B, D): softmax-weighted mean over time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Conv1d(dim, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.score(x).softmax(-1)
        return (x * w).sum(-1)


class CustomCNN(nn.Module):
    """(B, C, F, T) -> (B, num_outputs) logits."""

    def __init__(
        self, *, in_chans: int, num_outputs: int, widths: list[int], blocks: list[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(
                f"model customcnn: widths {widths} and blocks {blocks} need equal, non-zero lengths"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(ResSEBlock(cin, w, stride=2 if j == 0 and i > 0 else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.pool = AttentionPool(cin)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, D, F', T')
        return self.head(self.pool(x.mean(2)))


def build_customcnn(
    cfg: ModelConfig, *, in_chans: int, num_outputs: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    min_side = 2 ** (len(kwargs.get("widths", [1])) - 1)
    if min(input_shape[1:]) < min_side:
        raise ValueError(f"model customcnn: input {input_shape} too small for {min_side}x downsampling")
    if cfg.drop_path:
        warnings.warn("model.drop_path has no effect on customcnn (no stochastic depth)", stacklevel=2)
    return CustomCNN(in_chans=in_chans, num_outputs=num_outputs, dropout=cfg.dropout, **kwargs)


def load_customcnn_weights(model: nn.Module, weights: Weights, in_chans: int) -> None:
    """A customcnn state_dict or musicstream checkpoint (a file or local-dir:): matching tensors."""
    load_matching(model, weights.state, source=weights.source)


register_family(
    Family(name="customcnn", builder=build_customcnn, presets=PRESETS, default_preset="small",
           load_weights=load_customcnn_weights)
)  # fmt: skip
