"""Pretrained weights as users get them: transformers' AST (parity with an implementation nobody
here wrote), timm's hub format through ``local-dir:`` and through an offline Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from train.config import ModelConfig
from train.models import build_model

TIMM_NAME = "test_efficientnet"  # timm's own tiny test network (0.36 M parameters)
TIMM_HUB_ID = "timm/test_efficientnet.r160_in1k"  # its default pretrained tag


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """transformers zero-inits tokens and position embeddings: give every tensor values so a
    wrong mapping cannot hide behind zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _hf_ast(
    tmp_path: Path, *, classifier: bool, mel: int = 36, frames: int = 46
) -> tuple[torch.nn.Module, Path]:
    from transformers import ASTConfig, ASTForAudioClassification, ASTModel

    cfg = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=mel,
        max_length=frames,
        num_labels=5,
    )
    hf = ASTForAudioClassification(cfg) if classifier else ASTModel(cfg)
    _randomize(hf)
    hf.eval()
    out = tmp_path / ("hf_cls" if classifier else "hf_base")
    hf.save_pretrained(out)
    return hf, out


def _our_ast(
    pretrained: str, *, in_chans: int = 1, shape: tuple[int, int] = (36, 46), outputs: int = 5
) -> torch.nn.Module:
    cfg = ModelConfig(
        family="ast",
        preset="audioset",
        kwargs={"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0},
        pretrained=pretrained,
    )
    model = build_model(cfg, in_chans=in_chans, head_sizes=[outputs], input_shape=(in_chans, *shape))
    return model.eval()


@pytest.mark.slow
def test_transformers_ast_classifier_parity(tmp_path: Path) -> None:
    """ASTForAudioClassification saved with save_pretrained -> our AST: the same logits; with
    3 identical input channels too (patch conv adapted to in_chans)."""
    hf, folder = _hf_ast(tmp_path, classifier=True)
    x = torch.randn(3, 1, 36, 46)  # (B, C, F, T); transformers takes (B, T, F)
    with torch.no_grad():
        want = hf(input_values=x[:, 0].transpose(1, 2)).logits
        ours = _our_ast(f"local-dir:{folder}")
        got = ours(x)
        got3 = _our_ast(f"local-dir:{folder}", in_chans=3)(x.repeat(1, 3, 1, 1))
    assert want.abs().max() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got3, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_transformers_ast_model_parity_and_grid_resampling(tmp_path: Path) -> None:
    """ASTModel (no classifier): our pooled output is its pooler_output; on another input size
    the position grid is resampled the way timm resamples ViT grids."""
    from timm.layers import resample_abs_pos_embed

    hf, folder = _hf_ast(tmp_path, classifier=False)
    x = torch.randn(2, 1, 36, 46)
    with torch.no_grad():
        want = hf(input_values=x[:, 0].transpose(1, 2)).pooler_output
        ours = _our_ast(f"local-dir:{folder}", outputs=3)
        torch.testing.assert_close(ours.pooled(x), want, atol=1e-4, rtol=0)
        wide = _our_ast(f"local-dir:{folder}", shape=(36, 96), outputs=3)
    pos = hf.embeddings.position_embeddings.detach()
    assert wide.grid == (3, 9)
    expect = resample_abs_pos_embed(pos[:, 2:], [3, 9], [3, 4], num_prefix_tokens=0)
    torch.testing.assert_close(wide.pos_embed.detach(), torch.cat([pos[:, :2], expect], 1))


def test_transformers_ast_architecture_mismatch_is_one_error(tmp_path: Path) -> None:
    folder = tmp_path / "cfg_only"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "audio-spectrogram-transformer", "hidden_size": 768, "num_hidden_layers": 12}
        )
    )
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"another architecture: hidden_size=768 \(model: 32\)"):
        _our_ast(f"local-dir:{folder}")


def _timm_source(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(TIMM_NAME, pretrained=False)


def _check_timm_weights(model: torch.nn.Module, src: torch.nn.Module, in_chans: int) -> None:
    """Every backbone tensor is the source's (first conv adapted); the classifier is fresh."""
    own, ref = model.state_dict(), src.state_dict()
    for k, v in ref.items():
        if k.startswith("classifier."):
            continue
        adapt = k == "conv_stem.weight" and in_chans != v.shape[1]
        want = v.sum(1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans if adapt else v
        torch.testing.assert_close(own[k], want, msg=k)
    assert own["classifier.weight"].shape == (4, ref["classifier.weight"].shape[1])


def _save_timm_hub(src: torch.nn.Module, folder: Path) -> None:
    from timm.models import save_for_hf

    save_for_hf(src, str(folder), safe_serialization=True)


def test_timm_local_dir_in_hub_format(tmp_path: Path) -> None:
    src = _timm_source()
    _save_timm_hub(src, tmp_path / "hub")
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["config.json", "model.safetensors"]
    for in_chans in (3, 1):
        cfg = ModelConfig(family=TIMM_NAME, pretrained=f"local-dir:{tmp_path / 'hub'}")
        model = build_model(cfg, in_chans=in_chans, head_sizes=[4], input_shape=(in_chans, 32, 32))
        _check_timm_weights(model, src, in_chans)
    with pytest.raises(
        ValueError, match="holds 'test_efficientnet' weights, but model.family is 'test_resnet'"
    ):
        build_model(
            ModelConfig(family="test_resnet", pretrained=f"local-dir:{tmp_path / 'hub'}"),
            in_chans=3,
            head_sizes=[4],
            input_shape=(3, 32, 32),
        )


def _populate_hf_cache(hf_home: Path, repo_id: str, files: Path) -> None:
    """The hub cache as huggingface_hub writes it: blobs named by hash, snapshot symlinks, refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in files.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        (repo / "blobs" / digest).write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)


_OFFLINE_SCRIPT = """
import sys, torch
from train.config import ModelConfig
from train.models import build_model
out = {}
for spec in sys.argv[2:]:
    try:
        m = build_model(ModelConfig(family=sys.argv[1], pretrained=spec), in_chans=1, head_sizes=[4],
                        input_shape=(1, 32, 32))
        out[spec] = m.state_dict()
    except ValueError as e:
        out[spec] = str(e)
torch.save(out, sys.stdout.buffer)
"""


def _offline(hf_home: Path, *specs: str) -> dict:
    """Build in a fresh process with HF_HOME/HF_HUB_OFFLINE set (huggingface_hub reads them at import)."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, TIMM_NAME, *specs], env=env, capture_output=True, check=True
    )
    import io

    return torch.load(io.BytesIO(res.stdout), weights_only=True)


@pytest.mark.slow
def test_timm_offline_hub_cache_and_clear_error_when_missing(tmp_path: Path) -> None:
    src = _timm_source(seed=3)
    _save_timm_hub(src, tmp_path / "files")
    _populate_hf_cache(tmp_path / "home", TIMM_HUB_ID, tmp_path / "files")
    out = _offline(tmp_path / "home", "timm", f"hf-hub:{TIMM_HUB_ID}")
    empty = _offline(tmp_path / "empty", "timm")["timm"]
    for spec in ("timm", f"hf-hub:{TIMM_HUB_ID}"):
        model = timm.create_model(TIMM_NAME, pretrained=False, in_chans=1, num_classes=4)
        model.load_state_dict(out[spec])
        _check_timm_weights(model, src, 1)
    assert isinstance(empty, str)
    assert f"{TIMM_HUB_ID} is not in the Hugging Face cache {tmp_path / 'empty' / 'hub'}" in empty
    assert "HF_HUB_OFFLINE is set" in empty and "hf download" in empty and "local-dir:" in empty


def _rank_zero_first_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from shards.base.distributed import rank_zero_first

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    marker = Path(folder) / "downloaded"

    def fetch() -> str:
        if rank == 0:
            import time

            time.sleep(0.5)
            marker.write_text("cache filled")
            return "first"
        return "cache hit" if marker.is_file() else "raced"  # rank 1 must see rank 0's download

    out = rank_zero_first(fetch)

    def fail() -> str:
        if rank == 0:
            raise ValueError("not in the Hugging Face cache")
        return "should not run"

    try:
        rank_zero_first(fail)
        err = "no error"
    except ValueError as e:
        err = str(e)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps([out, err]))
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank_zero_fetches_first_and_its_failure_reaches_every_rank(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_zero_first_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == ["first", "not in the Hugging Face cache"]
    assert r1 == ["cache hit", "not in the Hugging Face cache"]


def test_transformers_ast_through_the_offline_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf-hub:OWNER/NAME reads a save_pretrained folder from the hub cache, offline (the cache
    folder and the offline flag patched where huggingface_hub reads them at call time)."""
    from huggingface_hub import constants

    hf, folder = _hf_ast(tmp_path, classifier=True)
    _populate_hf_cache(tmp_path / "home", "MIT/ast-tiny-test", folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    x = torch.randn(2, 1, 36, 46)
    with torch.no_grad():
        torch.testing.assert_close(
            _our_ast("hf-hub:MIT/ast-tiny-test")(x),
            hf(input_values=x[:, 0].transpose(1, 2)).logits,
            atol=1e-4,
            rtol=0,
        )
    with pytest.raises(
        ValueError, match="MIT/ast-other is not in the Hugging Face cache .* HF_HUB_OFFLINE is set"
    ):
        _our_ast("hf-hub:MIT/ast-other")
