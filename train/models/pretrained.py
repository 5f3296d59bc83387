"""Pretrained weights as timm / Hugging Face users name them, plus the shared adaptation helpers.

``ModelConfig.pretrained`` is one of:

- ``"timm"``: the model's default pretrained tag (its ``pretrained_cfg["hf_hub_id"]``,
  e.g. ``timm/resnet50.a1_in1k``), fetched like ``hf-hub:``;
- ``"hf-hub:OWNER/NAME[@REV]"``: a Hugging Face hub repo through ``huggingface_hub``'s
  cache (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads the cache only);
- ``"local-dir:/path"``: a folder in the hub's own layout (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``), as timm's ``save_for_hf`` or
  transformers' ``save_pretrained`` write it;
- a local weights file (a state_dict, optionally nested under "model"/"state_dict", as
  .pt/.pth/.bin/.safetensors).

Every form resolves to ``Weights`` (tensors + the folder's ``config.json``); each family
then maps and adapts them. Hub fetches run on local rank 0 first, the other ranks then
read the cache it filled (``rank_zero_first``), so N ranks never race one download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn

from shards.base.distributed import rank_zero_first
from shards.base.errors import first_line

HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
TIMM_DEFAULT = "timm"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
T = TypeVar("T")


@dataclass
class Weights:
    """Tensors of a pretrained model plus its ``config.json`` (empty for a bare weights file)."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """How the user named them (for messages)."""


def fetch_weights(spec: str | Path, *, default_hub_id: str | None = None) -> Weights:
    """Resolve ``spec`` (module docstring) to tensors; hub forms on local rank 0 first."""
    s = str(spec)
    if s == TIMM_DEFAULT:
        if not default_hub_id:
            raise ValueError(
                "model.pretrained: 'timm' names the model's default timm weights, but this model has "
                "none on the hub; give hf-hub:OWNER/NAME, local-dir:/path or a weights file"
            )
        return rank_zero_first(lambda: _from_hub(default_hub_id, s))
    if s.startswith(HUB):
        repo = s[len(HUB) :]
        if not repo:
            raise ValueError(f"model.pretrained: {s!r} names no repo (hf-hub:OWNER/NAME)")
        return rank_zero_first(lambda: _from_hub(repo, s))
    if s.startswith(LOCAL_DIR):
        return _from_dir(Path(s[len(LOCAL_DIR) :]), s)
    return Weights(read_state_dict(s), {}, s)


def _from_dir(folder: Path, spec: str) -> Weights:
    if not folder.is_dir():
        raise FileNotFoundError(f"model.pretrained: {spec}: {folder} is not a folder")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"model.pretrained: {spec}: no config.json in {folder} (hub layout expected)")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return Weights(read_state_dict(folder / name), _read_json(cfg), spec)
    raise FileNotFoundError(f"model.pretrained: {spec}: none of {list(WEIGHT_FILES)} in {folder}")


def _from_hub(repo: str, spec: str) -> Weights:
    """config.json + the first weights file the repo has, through the hub cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, rev = repo.partition("@")
    not_cached = False

    def get(filename: str) -> Path | None:
        nonlocal not_cached
        try:
            return Path(hf_hub_download(repo_id, filename, revision=rev or None))
        except LocalEntryNotFoundError:  # offline (or unreachable) and not in the cache
            not_cached = True
            return None
        except EntryNotFoundError:  # the repo has no such file
            return None
        except HfHubHTTPError as e:  # unknown repo, gated, ...
            raise ValueError(f"model.pretrained: {spec}: {first_line(e)}") from None

    cfg = get("config.json")
    weights = next((p for name in WEIGHT_FILES if (p := get(name)) is not None), None)
    if cfg is None or weights is None:
        if not_cached:
            raise ValueError(not_cached_message(repo_id, spec))
        raise ValueError(
            f"model.pretrained: {spec}: {repo_id} has no config.json + {' or '.join(WEIGHT_FILES)}"
        )
    return Weights(read_state_dict(weights), _read_json(cfg), spec)


def not_cached_message(repo_id: str, spec: str) -> str:
    """The one error for weights that are neither cached nor reachable: how to get them."""
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
    return (
        f"model.pretrained: {spec}: {repo_id} is not in the Hugging Face cache {constants.HF_HUB_CACHE} "
        f"and {why}; fetch it once where there is network (`hf download {repo_id}` with the same HF_HOME, "
        f"then copy that folder here), or point model.pretrained at local-dir:/path (config.json + "
        f"model.safetensors) or at a weights file"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"model.pretrained: {path}: unreadable config.json: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model.pretrained: {path}: config.json is not an object")
    return data


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors from a local weights file without unpickling arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"model.pretrained: {p} not found (a weights file, or hf-hub:OWNER/NAME, local-dir:/path, timm)"
        )
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
