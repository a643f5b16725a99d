"""Checkpoint loading: forms, containers, prefixes and clear failures."""

import argparse

import pytest
import torch

from fastpillars_ros.model import build_model, load_checkpoint, read_state_dict, save_checkpoint
from fastpillars_ros.model.checkpoint import CheckpointMeta, checkpoint_meta, update_checkpoint_meta
from fastpillars_ros.model.testing import randomize_


@pytest.fixture(scope="module")
def trained():
    """A tiny model with random weights and BN statistics (stands in for a trained one) and a test canvas."""
    model = randomize_(build_model("tiny"), seed=11).eval()
    c, h, w = model.config.canvas_shape
    g = torch.Generator().manual_seed(0)
    canvas = torch.rand(1, c, h, w, generator=g) * (torch.rand(1, 1, h, w, generator=g) < 0.3)
    with torch.no_grad():
        ref = model.forward_dense(canvas)
    return model, canvas, ref


def _same_outputs(model, canvas, ref):
    with torch.no_grad():
        out = model.eval().forward_dense(canvas)
    for a, b in zip(ref, out, strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_training_form_roundtrip(tmp_path, trained):
    model, canvas, ref = trained
    path = tmp_path / "train.pth"
    save_checkpoint(model, path)
    sd, cfg = read_state_dict(path)
    assert cfg is not None and cfg["name"] == "tiny" and len(sd) == len(model.state_dict())
    fresh = load_checkpoint(build_model("tiny"), path)
    assert fresh.fusion_level == "train"
    _same_outputs(fresh, canvas, ref)


def test_fused_checkpoint_fuses_a_training_form_model(tmp_path, trained):
    model, canvas, ref = trained
    fused = build_model("tiny").eval()
    fused.load_state_dict(model.state_dict())
    fused.fuse("full")
    path = tmp_path / "fused.pth"
    torch.save({"state_dict": fused.state_dict()}, path)
    fresh = load_checkpoint(build_model("tiny"), path)
    assert fresh.fusion_level == "full"
    _same_outputs(fresh, canvas, ref)


def test_training_checkpoint_loads_into_fused_model(tmp_path, trained):
    model, canvas, ref = trained
    path = tmp_path / "train.pth"
    torch.save(model.state_dict(), path)  # bare state_dict
    target = build_model("tiny").eval().fuse("full")
    load_checkpoint(target, path)
    assert target.fusion_level == "full"
    _same_outputs(target, canvas, ref)


def test_repvgg_fused_checkpoint_loads_into_fully_fused_model(tmp_path, trained):
    model, canvas, ref = trained
    rep = build_model("tiny").eval()
    rep.load_state_dict(model.state_dict())
    rep.fuse("repvgg")
    path = tmp_path / "rep.pth"
    torch.save({"state_dict": rep.state_dict()}, path)
    target = load_checkpoint(build_model("tiny").eval().fuse("full"), path)
    _same_outputs(target, canvas, ref)


def test_det3d_container_with_module_prefix(tmp_path, trained):
    model, canvas, ref = trained
    path = tmp_path / "det3d.pth"
    torch.save({"meta": {"time": "Sun Dec 29 2024", "config": "model = dict(...)", "epoch": 20, "iter": 1234},
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}}, path)
    fresh = load_checkpoint(build_model("tiny"), path)
    _same_outputs(fresh, canvas, ref)


def test_official_size_det3d_checkpoint(tmp_path):
    model = build_model("nuscenes_official")
    path = tmp_path / "latest.pth"
    torch.save({"meta": {"time": "x"}, "state_dict": model.state_dict()}, path)
    target = build_model("nuscenes_official")
    load_checkpoint(target, path)
    key = "neck.block_5.1.weight"
    torch.testing.assert_close(target.state_dict()[key], model.state_dict()[key])


def test_mismatch_fails_with_one_message_listing_everything(tmp_path, trained):
    model, _, _ = trained
    sd = dict(model.state_dict())
    del sd["neck.block_5.1.weight"]
    sd["neck.extra.weight"] = torch.zeros(3)
    sd["bbox_head.shared_conv.0.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    target = build_model("tiny")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_checkpoint(target, path)
    msg = str(info.value)
    assert "missing keys (1)" in msg and "neck.block_5.1.weight" in msg
    assert "unexpected keys (1)" in msg and "neck.extra.weight" in msg
    assert "shape mismatches (1)" in msg and "bbox_head.shared_conv.0.bias: checkpoint (7,) vs model (32,)" in msg
    for k, v in target.state_dict().items():  # nothing was loaded
        assert torch.equal(v, before[k])


def test_wrong_model_checkpoint_names_mape_width(tmp_path):
    path = tmp_path / "kitti.pth"
    save_checkpoint(build_model("kitti"), path)
    with pytest.raises(ValueError, match="MAPE input width differs"):
        load_checkpoint(build_model("nuscenes_official"), path)


def test_not_a_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_checkpoint(build_model("tiny"), path)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(build_model("tiny"), tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds no model weights"):
        load_checkpoint(build_model("tiny"), tmp_path / "list.pth")


def test_python_objects_in_meta_are_refused_clearly(tmp_path, trained):
    model, _, _ = trained
    path = tmp_path / "pickled.pth"
    torch.save({"meta": {"args": argparse.Namespace(lr=1)}, "state_dict": model.state_dict()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(build_model("tiny"), path)


def test_thresholds_follow_the_arithmetic_they_were_calibrated_on():
    both = CheckpointMeta(score_thresholds={"car": 0.48}, float_score_thresholds={"car": 0.50})
    assert both.thresholds_for("int8") == {"car": 0.48}
    assert both.thresholds_for("bf16") == both.thresholds_for("fp32") == both.thresholds_for("fp16") == {"car": 0.50}
    only_int8 = CheckpointMeta(score_thresholds={"car": 0.48})
    assert only_int8.thresholds_for("fp32") == {"car": 0.48}  # the other set rather than none
    assert CheckpointMeta(float_score_thresholds={"car": 0.5}).thresholds_for("int8") == {"car": 0.5}


def test_a_bf16_set_is_used_by_bf16_alone_and_fp32_set_by_the_other_float_precisions():
    meta = CheckpointMeta(score_thresholds={"car": 0.48}, float_score_thresholds={"car": 0.50},
                          precision_score_thresholds={"bf16": {"car": 0.504}})
    assert meta.thresholds_for("bf16") == {"car": 0.504}
    assert meta.thresholds_for("fp32") == meta.thresholds_for("fp16") == {"car": 0.50}
    assert meta.thresholds_for("int8") == {"car": 0.48}


def test_weights_may_be_kept_out_of_int8_and_old_checkpoints_are_not(tmp_path, trained):
    model, _, _ = trained
    path = tmp_path / "w.pt"
    save_checkpoint(model, path)
    assert checkpoint_meta(path).auto_int8  # no entry: every arithmetic, as before the entry existed
    update_checkpoint_meta(path, auto_int8=False)
    update_checkpoint_meta(path, score_thresholds={"car": 0.5})  # another entry leaves it as it is
    assert not checkpoint_meta(path).auto_int8
