"""The nuscenes_official state_dict reproduces the official code's key names and shapes (spec §5.2).

Two references: the pinned manifest file (generated once from build_model and reviewed), and
:func:`official_layout`, an independent statement written from the official module definitions as recorded in
``shared/design/fastpillars-model.md`` §2-§5.2 (not from build_model), so that a change to the model code and
a regenerated manifest cannot agree with each other by construction.
"""

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


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    """One BatchNorm: weight, bias, running_mean, running_var [C] and num_batches_tracked []."""
    keys = {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}
    return {**keys, f"{prefix}.num_batches_tracked": ()}


def _repvgg(prefix: str, cin: int, cout: int, stride: int) -> dict[str, tuple[int, ...]]:
    """RepVGGBlock, training form (§2.1): 3x3 and 1x1 conv+BN branches, identity BN iff cin == cout and s == 1."""
    out = {f"{prefix}.rbr_dense.conv.weight": (cout, cin, 3, 3), **_bn(f"{prefix}.rbr_dense.bn", cout),
           f"{prefix}.rbr_1x1.conv.weight": (cout, cin, 1, 1), **_bn(f"{prefix}.rbr_1x1.bn", cout)}
    if cin == cout and stride == 1:
        out.update(_bn(f"{prefix}.rbr_identity", cin))
    return out


def official_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official nuScenes FastPillars (``015pillar_res34_2dconv_rep_6631``), training form."""
    sd: dict[str, tuple[int, ...]] = {}
    # MAPE under the backbone (§1.6, §5.2): Linear 8->64 without bias, BN1d, score Linear 64->64 with bias.
    mape = "backbone.pillar_pooling1"
    sd[f"{mape}.shared_mlps.0.weight"] = (64, 8)
    sd.update(_bn(f"{mape}.shared_mlps.1", 64))
    sd[f"{mape}.score_fn.0.weight"], sd[f"{mape}.score_fn.0.bias"] = (64, 64), (64,)
    # Backbone stages "6631" (§2.2): a first RepVGG block, then n RepDense2DBasicBlocks (conv1, conv2).
    cin = 64
    for stage, (cout, stride, blocks) in enumerate(((64, 1, 6), (128, 2, 6), (256, 2, 3), (512, 2, 1)), start=2):
        sd.update(_repvgg(f"backbone.conv{stage}_first_block.0", cin, cout, stride))
        for b in range(blocks):
            for conv in ("conv1", "conv2"):
                sd.update(_repvgg(f"backbone.conv{stage}.{b}.{conv}", cout, cout, 1))
        cin = cout
    # Neck RPNV2 (§3): Sequential slots (pad, conv, BN, act, conv, BN, act, ...); convs without bias.
    for block, first_in in (("block_5", 512), ("block_4", 256)):
        sd[f"neck.{block}.1.weight"] = (256, first_in, 3, 3)
        sd.update(_bn(f"neck.{block}.2", 256))
        for conv in (4, 7, 10, 13, 16):
            sd[f"neck.{block}.{conv}.weight"] = (256, 256, 3, 3)
            sd.update(_bn(f"neck.{block}.{conv + 1}", 256))
    sd["neck.deblock_5.0.weight"] = (256, 128, 2, 2)  # ConvTranspose: [in, out, kH, kW]
    sd.update(_bn("neck.deblock_5.1", 128))
    sd["neck.deblock_4.1.weight"] = (128, 256, 3, 3)
    sd.update(_bn("neck.deblock_4.2", 128))
    # Head CenterHead_FP (§4.1-4.2): shared conv with bias + BN; 6 SepHeads of 7 branches each.
    sd["bbox_head.shared_conv.0.weight"], sd["bbox_head.shared_conv.0.bias"] = (64, 256, 3, 3), (64,)
    sd.update(_bn("bbox_head.shared_conv.1", 64))
    for task, hm in enumerate((1, 2, 2, 1, 2, 2)):
        for branch, channels in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2), ("iou", 1),
                                 ("hm", hm)):
            p = f"bbox_head.tasks.{task}.{branch}"
            sd[f"{p}.0.weight"], sd[f"{p}.0.bias"] = (64, 64, 3, 3), (64,)
            sd.update(_bn(f"{p}.1", 64))
            sd[f"{p}.3.weight"], sd[f"{p}.3.bias"] = (channels, 64, 3, 3), (channels,)
    return sd


def test_official_layout_statement_has_the_spec_counts():
    layout = official_layout()
    counts = {p: sum(k.startswith(p + ".") for k in layout) for p in ("backbone", "neck", "bbox_head")}
    assert len(layout) == 1074 and counts == {"backbone": 605, "neck": 84, "bbox_head": 385}


def test_state_dict_matches_the_official_layout():
    sd = build_model("nuscenes_official").state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    expected = official_layout()
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected


def test_pinned_manifest_equals_the_official_layout():
    assert _manifest() == official_layout()


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
