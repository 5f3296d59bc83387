"""Local pretrained weights: read a file, adapt input channels, drop mismatched heads.

Nothing is ever downloaded; ``ModelConfig.pretrained`` must name a local file
(a state_dict, optionally nested under "model"/"state_dict", as .pt/.pth/.safetensors).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from a local weights file without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.pretrained: {p} not found (weights are never downloaded)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"model.pretrained: {p} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def adapt_conv_weight(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, in_chans, kh, kw), keeping the response to a constant input."""
    if w.shape[1] == in_chans:
        return w
    # Every new channel gets the mean RGB filter, so a constant input gives the old output.
    return w.float().sum(1, keepdim=True).repeat(1, in_chans, 1, 1).div(in_chans).to(w.dtype)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> list[str]:
    """Load the entries whose shapes match; return the names left at their init."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    missing = sorted(set(own) - set(keep))
    if len(keep) == 0:
        raise ValueError(f"model.pretrained: {source} shares no weights with this model")
    return missing
