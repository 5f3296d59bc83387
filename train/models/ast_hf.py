"""AudioSet AST checkpoints in Hugging Face transformers format -> the project's ``AST``.

transformers' ``ASTModel`` / ``ASTForAudioClassification`` (``config.json`` with
``model_type = "audio-spectrogram-transformer"``) is the same network as ours: a 16x16
patch conv with frequency/time strides, cls + distillation tokens, pre-norm ViT layers,
a final LayerNorm and the mean of the two token outputs; the classifier (``ASTMLPHead``)
is a LayerNorm and a Linear. What the mapping does:

- keys: both spellings transformers has used (hub checkpoints such as
  ``MIT/ast-finetuned-audioset-10-10-0.4593``: ``encoder.layer.N.attention.attention.query``;
  transformers 5: ``layers.N.attention.q_proj``), separate q/k/v fused into timm's ``qkv``;
- patch embedding: 1 input channel adapted to ``in_chans`` (``adapt_conv_weight``);
- position embeddings: the checkpoint's ``(num_mel_bins, max_length)`` patch grid
  resampled (bicubic, timm's ``resample_abs_pos_embed``) to ours;
- classifier: its LayerNorm -> ``head_norm``; its Linear -> ``head`` only when the sizes
  match (527 AudioSet classes), else our head keeps its fresh init.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from train.models.pretrained import Weights, adapt_conv_weight, load_matching

MODEL_TYPE = "audio-spectrogram-transformer"
PREFIX = "audio_spectrogram_transformer."  # ASTForAudioClassification's base model
# our block key -> the checkpoint's, per spelling (transformers 5, then the hub's original)
LAYER_KEYS: tuple[dict[str, str], ...] = (
    {
        "layer": "layers.{i}.",
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    },
    {
        "layer": "encoder.layer.{i}.",
        "q": "attention.attention.query",
        "k": "attention.attention.key",
        "v": "attention.attention.value",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    },
)


def is_hf_ast(weights: Weights) -> bool:
    return weights.config.get("model_type") == MODEL_TYPE


def source_grid(cfg: dict[str, Any]) -> tuple[int, int]:
    """The checkpoint's (frequency, time) patch grid, as ``ASTEmbeddings.get_shape`` computes it."""
    p = int(cfg.get("patch_size", 16))
    f = (int(cfg.get("num_mel_bins", 128)) - p) // int(cfg.get("frequency_stride", 10)) + 1
    t = (int(cfg.get("max_length", 1024)) - p) // int(cfg.get("time_stride", 10)) + 1
    return f, t


def check_config(cfg: dict[str, Any], model: Any, source: str) -> None:
    """The checkpoint's architecture must be the model's; one error lists every difference."""
    want = {
        "hidden_size": model.dim,
        "num_hidden_layers": model.depth,
        "num_attention_heads": model.heads,
        "intermediate_size": round(model.dim * model.mlp_ratio),
        "patch_size": model.patch,
        "frequency_stride": model.stride,
        "time_stride": model.stride,
        "hidden_act": "gelu",
        "qkv_bias": True,
    }
    defaults = {
        "patch_size": 16,
        "frequency_stride": 10,
        "time_stride": 10,
        "hidden_act": "gelu",
        "qkv_bias": True,
    }
    diff = [
        f"{k}={cfg.get(k, defaults.get(k))!r} (model: {v!r})"
        for k, v in want.items()
        if cfg.get(k, defaults.get(k)) != v
    ]
    if diff:
        raise ValueError(
            f"model.pretrained: {source} is an AST with another architecture: {', '.join(diff)}; "
            f'use model.preset = "audioset" for the AudioSet checkpoints, or matching model.kwargs'
        )
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if abs(eps - model.norm_eps) > 1e-15:
        warnings.warn(
            f"model.pretrained: {source} was trained with layer_norm_eps={eps:g}, the model uses "
            f"norm_eps={model.norm_eps:g} (model.kwargs norm_eps, or preset audioset)",
            stacklevel=3,
        )


def map_state(weights: Weights, model: Any) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under our names, adapted to the model's channels and grid."""
    sd = {k.removeprefix(PREFIX): v for k, v in weights.state.items()}
    names = next((n for n in LAYER_KEYS if any(k.startswith(n["layer"].format(i=0)) for k in sd)), None)
    if names is None or "embeddings.patch_embeddings.projection.weight" not in sd:
        raise ValueError(f"model.pretrained: {weights.source}: no AST encoder layers / patch embedding found")
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "dist_token": sd["embeddings.distillation_token"],
        "patch_embed.weight": adapt_conv_weight(
            sd["embeddings.patch_embeddings.projection.weight"], model.patch_embed.in_channels
        ),
        "patch_embed.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    pos = sd["embeddings.position_embeddings"]
    grid = resample_abs_pos_embed(
        pos[:, 2:], list(model.grid), list(source_grid(weights.config)), num_prefix_tokens=0
    )
    out["pos_embed"] = torch.cat([pos[:, :2], grid], 1)
    for i in range(model.depth):
        src = names["layer"].format(i=i)
        dst = f"blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.qkv.{part}"] = torch.cat([sd[f"{src}{names[x]}.{part}"] for x in "qkv"], 0)
            for ours in ("attn.proj", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}{ours}.{part}"] = sd[f"{src}{names[ours]}.{part}"]
            out[f"{dst}norm1.{part}"] = sd[f"{src}layernorm_before.{part}"]
            out[f"{dst}norm2.{part}"] = sd[f"{src}layernorm_after.{part}"]
    for part in ("weight", "bias"):
        if f"classifier.layernorm.{part}" in sd:
            out[f"head_norm.{part}"] = sd[f"classifier.layernorm.{part}"]
        if f"classifier.dense.{part}" in sd:
            out[f"head.1.{part}"] = sd[f"classifier.dense.{part}"]
    return out


def load_hf_ast(model: Any, weights: Weights) -> None:
    """Load a transformers AST checkpoint into ``model`` (a ``train.models.ast.AST``)."""
    check_config(weights.config, model, weights.source)
    try:
        state = map_state(weights, model)
    except KeyError as e:
        raise ValueError(
            f"model.pretrained: {weights.source}: missing tensor {e} for an AST checkpoint"
        ) from None
    missing = load_matching(model, state, source=weights.source)
    encoder = [k for k in missing if not k.startswith(("head.", "head_norm."))]
    if encoder:
        raise ValueError(f"model.pretrained: {weights.source}: tensors not loaded: {encoder[:4]}")
