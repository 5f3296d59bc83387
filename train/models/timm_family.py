"""timm image models on spectrograms: resnet50, efficientnet_b0/b2/b4, or any timm name.

Built with ``pretrained=False`` (no downloads); ImageNet weights come only from a local
file, with the first conv adapted to ``in_chans`` and the classifier re-initialised.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import timm
import torch.nn as nn

from train.config import ModelConfig
from train.models.pretrained import adapt_conv_weight, load_matching, read_state_dict
from train.models.registry import Family, register_family

NAMED = ("resnet50", "efficientnet_b0", "efficientnet_b2", "efficientnet_b4")


def build_timm(
    cfg: ModelConfig, *, in_chans: int, num_outputs: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    """timm.create_model(cfg.family, pretrained=False, in_chans=, num_classes=) + local weights."""
    model = timm.create_model(
        cfg.family,
        pretrained=False,
        in_chans=in_chans,
        num_classes=num_outputs,
        drop_rate=cfg.dropout,
        drop_path_rate=cfg.drop_path or None,
        **kwargs,
    )
    reset_classifier(model)
    if cfg.pretrained is not None:
        load_timm_weights(model, cfg.pretrained, in_chans)
    return model


def reset_classifier(model: nn.Module) -> None:
    """Small-normal classifier init: timm's EfficientNet init scales with 1/sqrt(num_classes),
    which for our 2-50 outputs gives initial logits of size ~10 and a loss that first explodes."""
    head = cast("Callable[[], nn.Module]", model.get_classifier)()  # a timm model's method
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def load_timm_weights(model: nn.Module, path: Any, in_chans: int) -> None:
    """Load local ImageNet weights: adapt the first conv, skip the classifier."""
    state = read_state_dict(path)
    pretrained_cfg = cast("dict[str, Any]", model.pretrained_cfg)  # a timm model's attribute
    first = pretrained_cfg.get("first_conv")
    classifier = pretrained_cfg.get("classifier")
    if first and f"{first}.weight" in state:
        state[f"{first}.weight"] = adapt_conv_weight(state[f"{first}.weight"], in_chans)
    if classifier:
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    missing = [k for k in load_matching(model, state, source=str(path)) if not k.startswith(f"{classifier}.")]
    if missing:
        warnings.warn(
            f"model.pretrained: {len(missing)} tensors not in {path}, e.g. {missing[:3]}", stacklevel=2
        )


def timm_family(name: str) -> Family:
    """An unregistered timm model name as a family (no presets)."""
    return Family(name=name, builder=build_timm)


for _name in NAMED:
    register_family(timm_family(_name))
