"""The nuscenes_official state_dict reproduces the official checkpoint's keys and shapes (spec §5.2)."""

from pathlib import Path

import torch

from fastpillars_ros.model import build_model

MANIFEST = Path(__file__).parent / "data" / "model_nuscenes_official_state_dict.txt"


def _manifest() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in MANIFEST.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split()
        out[key] = () if shape == "scalar" else tuple(int(v) for v in shape.split("x"))
    return out


def test_state_dict_matches_pinned_manifest():
    sd = build_model("nuscenes_official").state_dict()
    manifest = _manifest()
    assert len(manifest) == 1074
    assert {k: tuple(v.shape) for k, v in sd.items()} == manifest


def test_state_dict_spot_checks_from_spec():
    sd = build_model("nuscenes_official").state_dict()
    assert len(sd) == 1074
    counts = {p: sum(k.startswith(p + ".") for k in sd) for p in ("backbone", "neck", "bbox_head")}
    assert counts == {"backbone": 605, "neck": 84, "bbox_head": 385}
    expect = {
        "backbone.pillar_pooling1.shared_mlps.0.weight": (64, 8),
        "backbone.pillar_pooling1.shared_mlps.1.running_var": (64,),
        "backbone.pillar_pooling1.score_fn.0.bias": (64,),
        "backbone.conv2_first_block.0.rbr_dense.conv.weight": (64, 64, 3, 3),
        "backbone.conv2.3.conv1.rbr_identity.running_var": (64,),
        "backbone.conv3_first_block.0.rbr_1x1.conv.weight": (128, 64, 1, 1),
        "backbone.conv4.2.conv2.rbr_dense.bn.bias": (256,),
        "backbone.conv5_first_block.0.rbr_dense.conv.weight": (512, 256, 3, 3),
        "backbone.conv5.0.conv2.rbr_identity.weight": (512,),
        "neck.block_5.1.weight": (256, 512, 3, 3),
        "neck.block_5.17.running_mean": (256,),
        "neck.deblock_5.0.weight": (256, 128, 2, 2),
        "neck.deblock_4.1.weight": (128, 256, 3, 3),
        "neck.block_4.1.weight": (256, 256, 3, 3),
        "bbox_head.shared_conv.0.weight": (64, 256, 3, 3),
        "bbox_head.shared_conv.1.running_var": (64,),
        "bbox_head.tasks.0.hm.3.bias": (1,),
        "bbox_head.tasks.1.hm.3.weight": (2, 64, 3, 3),
        "bbox_head.tasks.5.vel.3.weight": (2, 64, 3, 3),
        "bbox_head.tasks.3.iou.3.bias": (1,),
        "bbox_head.tasks.2.dim.0.weight": (64, 64, 3, 3),
        "bbox_head.tasks.4.rot.1.weight": (64,),
        "backbone.conv2.0.conv1.rbr_dense.bn.num_batches_tracked": (),
    }
    for key, shape in expect.items():
        assert tuple(sd[key].shape) == shape, key
    for absent in ("backbone.conv3_first_block.0.rbr_identity.weight", "neck.block_5.1.bias",
                   "backbone.pillar_pooling1.shared_mlps.0.bias", "reader.weight"):
        assert absent not in sd
    params = sum(p.numel() for p in build_model("nuscenes_official").parameters())
    assert abs(params - 23.28e6) < 0.01e6


def test_bn_eps_and_activations_follow_spec():
    model = build_model("nuscenes_official")
    assert model.backbone.pillar_pooling1.shared_mlps[1].eps == 1e-3
    assert model.backbone.conv2[0].conv1.rbr_dense.bn.eps == 1e-3
    assert model.neck.block_5[2].eps == 1e-3
    assert model.bbox_head.shared_conv[1].eps == 1e-5
    assert model.bbox_head.tasks[0].hm[1].eps == 1e-5
    assert isinstance(model.bbox_head.shared_conv[2], torch.nn.ReLU)
    assert model.bbox_head.tasks[0].reg[2].negative_slope == 0.01
    assert model.backbone.conv2[0].conv1.act.negative_slope == 0.01
    assert list(model.bbox_head.tasks[0].names) == ["reg", "height", "dim", "rot", "vel", "iou", "hm"]
