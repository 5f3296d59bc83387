"""timm image models on spectrograms: resnet50, efficientnet_b0/b2/b4, or any timm name.

Built with ``pretrained=False``, then ``model.pretrained`` (``train.models.pretrained``:
``timm`` = the model's default tag, ``hf-hub:timm/NAME``, ``local-dir:/path`` in timm's
``save_for_hf`` layout, or a weights file) is loaded with the first conv adapted to
``in_chans`` and the classifier re-initialised.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import timm
import torch.nn as nn

from train.config import ModelConfig
from train.models.pretrained import Weights, adapt_conv_weight, load_matching
from train.models.registry import Family, register_family

NAMED = ("resnet50", "efficientnet_b0", "efficientnet_b2", "efficientnet_b4")


def build_timm(
    cfg: ModelConfig, *, in_chans: int, num_outputs: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    """timm.create_model(cfg.family, pretrained=False, in_chans=, num_classes=) + pretrained weights."""
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
    return model


def timm_hub_id(model: nn.Module) -> str | None:
    """The model's default pretrained tag on the hub (what ``model.pretrained = "timm"`` names)."""
    return cast("dict[str, Any]", model.pretrained_cfg).get("hf_hub_id")  # a timm model's attribute


def check_architecture(weights: Weights, family: str) -> None:
    """A timm hub folder names its architecture: refuse weights of another network."""
    arch = weights.config.get("architecture")
    if arch is not None and family and arch != family.split(".")[0]:
        raise ValueError(
            f"model.pretrained: {weights.source} holds {arch!r} weights, but model.family is {family!r}"
        )


def reset_classifier(model: nn.Module) -> None:
    """Small-normal classifier init: timm's EfficientNet init scales with 1/sqrt(num_classes),
    which for our 2-50 outputs gives initial logits of size ~10 and a loss that first explodes."""
    head = cast("Callable[[], nn.Module]", model.get_classifier)()  # a timm model's method
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)


def load_timm_weights(model: nn.Module, weights: Weights, in_chans: int) -> None:
    """Load ImageNet weights of the same architecture: adapt the first conv, skip the classifier."""
    pretrained_cfg = cast("dict[str, Any]", model.pretrained_cfg)  # a timm model's attribute
    check_architecture(weights, str(pretrained_cfg.get("architecture", "")))
    state, path = dict(weights.state), weights.source
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
    return Family(name=name, builder=build_timm, load_weights=load_timm_weights, default_hub_id=timm_hub_id)


for _name in NAMED:
    register_family(timm_family(_name))
