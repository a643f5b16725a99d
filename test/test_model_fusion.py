"""Fused (RepVGG re-parameterised, Conv+BN folded) and unfused dense networks agree."""

import pytest
import torch

from fastpillars_ros.model import build_model
from fastpillars_ros.model.repvgg import RepVGGBlock
from fastpillars_ros.model.testing import randomize_

# Canvas (H, W) per config. The dense part is fully convolutional, so the large configs are checked on
# a reduced canvas (divisible by the total stride 16) to keep the test fast.
CANVAS = {"tiny": None, "kitti": (64, 48), "nuscenes_official": (64, 64)}


def _rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))


def _canvas(cfg, hw, seed=0):
    c, h, w = cfg.canvas_shape
    if hw is not None:
        h, w = hw
    g = torch.Generator().manual_seed(seed)
    # Sparse, non-negative like real MAPE output (max branch is floored at 0).
    return torch.rand(1, c, h, w, generator=g) * (torch.rand(1, 1, h, w, generator=g) < 0.3)


@pytest.mark.parametrize("name", ["tiny", "kitti", "nuscenes_official"])
@torch.no_grad()
def test_fused_matches_unfused_with_random_bn_statistics(name):
    model = randomize_(build_model(name), seed=1).eval()
    canvas = _canvas(model.config, CANVAS[name])
    ref = model.forward_dense(canvas)
    partial = [dict(t) for t in model.fuse("repvgg").forward_dense(canvas)]
    full = model.fuse("full").forward_dense(canvas)
    assert model.fusion_level == "full"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.neck.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.bbox_head.modules())
    for t_ref, t_rep, t_full in zip(ref, partial, full, strict=True):
        assert list(t_ref) == list(t_full)
        for key in t_ref:
            assert t_ref[key].shape == t_full[key].shape
            assert _rel_err(t_ref[key], t_rep[key]) <= 1e-4, (name, key, "repvgg")
            assert _rel_err(t_ref[key], t_full[key]) <= 1e-4, (name, key, "full")


@torch.no_grad()
def test_repvgg_block_fusion_strided_and_identity():
    for cin, cout, stride in [(8, 8, 1), (8, 16, 2), (8, 16, 1)]:
        block = randomize_(RepVGGBlock(cin, cout, stride), seed=cin + stride).eval()
        assert (block.rbr_identity is not None) == (cin == cout and stride == 1)
        x = torch.randn(2, cin, 11, 13)
        ref = block(x)
        block.fuse()
        keys = set(block.state_dict())
        assert keys == {"rbr_reparam.weight", "rbr_reparam.bias"}
        assert _rel_err(ref, block(x)) <= 1e-5


def test_fused_state_dict_has_official_deploy_keys():
    model = build_model("nuscenes_official").eval()
    model.fuse("repvgg")
    sd = model.state_dict()
    assert len(sd) == 549
    assert sd["backbone.conv2_first_block.0.rbr_reparam.weight"].shape == (64, 64, 3, 3)
    assert sd["backbone.conv5.0.conv2.rbr_reparam.bias"].shape == (512,)
    assert "neck.block_5.2.running_var" in sd
    model.fuse("full")
    sd = model.state_dict()
    assert "neck.block_5.2.running_var" not in sd and sd["neck.block_5.1.bias"].shape == (256,)
    assert sd["neck.deblock_5.0.bias"].shape == (128,)
    with pytest.raises(ValueError, match="un-fuse"):
        model.fuse("repvgg")
