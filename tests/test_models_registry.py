"""The model registry: every family maps (B, C, F, T) to (B, sum(heads)); local weights adapt."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from train.config import ModelConfig
from train.models import build_model, list_families
from train.models.ast import AST, patch_grid

SHAPE = (2, 32, 48)  # (C, F, T), deliberately not square and not 3 channels
HEADS = [2, 5]


def _build(family: str, **kw) -> torch.nn.Module:
    return build_model(
        ModelConfig(family=family, **kw), in_chans=SHAPE[0], head_sizes=HEADS, input_shape=SHAPE
    )


def test_registry_lists_the_families() -> None:
    assert {
        "resnet50",
        "efficientnet_b0",
        "efficientnet_b2",
        "efficientnet_b4",
        "ast",
        "customcnn",
        "gbm",
    } <= set(list_families())


@pytest.mark.parametrize(
    ("family", "kw"),
    [
        ("customcnn", {"preset": "tiny"}),
        ("ast", {"preset": "tiny", "kwargs": {"depth": 2}}),
        ("efficientnet_b0", {}),
        ("resnet18", {}),  # any timm name works
    ],
)
def test_forward_shape(family: str, kw: dict) -> None:
    model = _build(family, **kw).eval()
    out = model(torch.randn(3, *SHAPE))
    assert out.shape == (3, sum(HEADS)) and torch.isfinite(out).all()


def test_unknown_family_and_task_mismatch() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        _build("not_a_model")
    with pytest.raises(ValueError, match="too small"):
        build_model(
            ModelConfig(family="customcnn", preset="base"), in_chans=1, head_sizes=[2], input_shape=(1, 4, 4)
        )
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        build_model(
            ModelConfig(family="ast", preset="tiny"), in_chans=1, head_sizes=[2], input_shape=(1, 8, 64)
        )
    with pytest.raises(ValueError, match="does not accept"):
        _build("customcnn", preset="tiny", kwargs={"widht": 3})


def test_ast_overlapping_patches_and_pos_interpolation() -> None:
    model = _build("ast", preset="tiny", kwargs={"depth": 1}).eval()
    assert patch_grid((32, 48), 16, 10) == (2, 4)  # stride 10 < 16: overlapping patches
    assert model.pos_embed.shape[1] == 2 + 2 * 4  # cls + dist + grid
    longer = model(torch.randn(1, 2, 32, 96))  # another time length: pos-embed resampled
    assert longer.shape == (1, 7)


def test_ast_loads_a_local_deit_checkpoint(tmp_path: Path) -> None:
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10)
    path = tmp_path / "deit.pth"
    torch.save({"model": deit.state_dict()}, path)
    model = _build("ast", preset="tiny", pretrained=path)
    assert isinstance(model, AST)
    assert torch.equal(model.blocks[3].attn.qkv.weight, deit.blocks[3].attn.qkv.weight)
    assert torch.equal(model.dist_token, deit.dist_token)
    # 3 -> 2 input channels: the adapted filters keep their response to a constant image
    src = deit.patch_embed.proj.weight.sum(1)
    assert torch.allclose(model.patch_embed.weight.sum(1), src, atol=1e-5)
    assert model.pos_embed.shape[1] == 2 + 8


def test_timm_loads_local_weights_and_adapts(tmp_path: Path) -> None:
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    model = _build("resnet18", pretrained=path)
    assert torch.equal(model.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    assert model.conv1.weight.shape[1] == 2 and model.fc.out_features == 7


def test_missing_weights_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth not found .a weights file, or hf-hub:"):
        _build("efficientnet_b0", pretrained=tmp_path / "nope.pth")


def test_gbm_fits_and_round_trips_through_state_dict() -> None:
    torch.manual_seed(0)
    model = _build("gbm", kwargs={"pca_components": 8, "rounds": 20, "params": {"min_data_in_leaf": 5}})
    x = torch.randn(80, *SHAPE)
    y = torch.stack([torch.randint(0, 2, (80,)), torch.randint(0, 5, (80,))], 1)
    x[:, 0, :4] += y[:, 1].view(-1, 1, 1).float()  # level-1 class moves the low bands
    model.fit(
        torch.cat([x.mean(-1).flatten(1), x.std(-1, correction=0).flatten(1)], 1), y, "hier", HEADS, threads=1
    )
    out = model(x)
    assert out.shape == (80, 7)
    acc = (out[:, 2:].argmax(1) == y[:, 1]).float().mean().item()
    assert acc > 0.8
    clone = _build("gbm")
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(x), out)
    with pytest.raises(RuntimeError, match="before fit"):
        _build("gbm")(x)


def test_customcnn_honours_local_weights_and_warns_on_unused_options(tmp_path: Path) -> None:
    """model.pretrained is never silently ignored: customcnn loads it; options a family has no
    use for (customcnn drop_path; gbm pretrained/dropout) warn."""
    src = _build("customcnn", preset="tiny")
    path = tmp_path / "cnn.pt"
    torch.save({"model": src.state_dict()}, path)  # a musicstream checkpoint holds it under "model"
    model = _build("customcnn", preset="tiny", pretrained=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    with pytest.warns(UserWarning, match="drop_path has no effect"):
        _build("customcnn", preset="tiny", drop_path=0.1)
    with pytest.warns(UserWarning, match="no effect on the gbm"):
        _build("gbm", dropout=0.1)
