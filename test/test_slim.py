"""Slimming a trained model to narrower layers (``train/slim.py``, ``fastpillars-ros slim``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fastpillars_ros.cli import main as cli_main
from fastpillars_ros.model import build_model, load_checkpoint, save_checkpoint
from fastpillars_ros.ops.pillarize import decorate, pillarize
from fastpillars_ros.sim.generate import simulate_frame, write_frame
from fastpillars_ros.train.slim import CONCAT, channel_importance, channel_plan, keep_most_important, slim_state_dict

SMALL = Path(__file__).parent / "data" / "train_small.yaml"


def _random_statistics(model: torch.nn.Module, seed: int = 0) -> None:
    """BN layers with non-trivial statistics and affine terms, so that every branch shapes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _scan(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = model.config
    rng = np.random.default_rng(seed)
    lo, hi = np.array(cfg.pc_range[:3]), np.array(cfg.pc_range[3:])
    pts = np.concatenate([rng.uniform(lo, hi, (3000, 3)), rng.uniform(0, 1, (3000, 1))], axis=1).astype(np.float32)
    pillars = pillarize(pts, cfg.pc_range, cfg.pillar_size)
    feats = torch.from_numpy(decorate(pts, pillars, cfg.pc_range, cfg.pillar_size))
    return feats, torch.from_numpy(pillars.point_pillar), torch.from_numpy(pillars.coords)


@torch.no_grad()
def _outputs(model, scan) -> list[torch.Tensor]:
    model.eval()
    maps = model.forward_dense(model.encode(*scan))
    return [t for task in maps for t in task.values()]


def test_permuting_every_channel_space_leaves_the_outputs_unchanged():
    # Same widths, every space's channels shuffled: only a plan that ties each tensor's rows and columns to
    # the right spaces (identity branches, the neck's concatenation, transposed convolutions) keeps the maps.
    wide = build_model(SMALL)
    _random_statistics(wide)
    plan = channel_plan(wide)
    assert plan.activations["backbone.conv2_first_block.0"] == "backbone.pillar_pooling1"  # identity ties them
    g = torch.Generator().manual_seed(1)
    keep = {s: (torch.arange(w) if s in plan.fixed else torch.randperm(w, generator=g))
            for s, w in plan.widths.items() if s != CONCAT}
    up4, up5 = plan.concat_parts
    keep[CONCAT] = torch.cat([keep[up4], plan.widths[up4] + keep[up5]])
    shuffled = build_model(SMALL)
    shuffled.load_state_dict(slim_state_dict(wide, plan, keep))
    scan = _scan(wide)
    for a, b in zip(_outputs(wide, scan), _outputs(shuffled, scan), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _narrow_config(tmp_path: Path, head_conv: int = 8) -> Path:
    data = yaml.safe_load(SMALL.read_text())
    data["name"] = "train_small_narrow"
    data["head"]["head_conv"] = head_conv
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_slimming_keeps_the_active_channels_and_drops_the_silent_ones(tmp_path):
    # Half of every head branch's hidden channels are silent (BN scale and shift 0, so 0 after the activation):
    # slimming to half the width must keep exactly the others, and the maps must not change.
    wide = build_model(SMALL)
    _random_statistics(wide)
    silent = torch.arange(0, 16, 2)
    with torch.no_grad():
        for task in wide.bbox_head.tasks:
            for name in task.names:
                bn = getattr(task, name)[1]
                bn.weight[silent] = 0.0
                bn.bias[silent] = 0.0
    scan = _scan(wide)
    narrow = build_model(_narrow_config(tmp_path))
    plan = channel_plan(wide)
    importance = channel_importance(wide, plan, lambda m: m.forward_dense(m.encode(*scan)))
    keep = keep_most_important(plan, importance, channel_plan(narrow))
    assert torch.equal(keep["bbox_head.tasks.0.hm.0"], torch.arange(1, 16, 2))
    assert len(keep["backbone.conv3"]) == plan.widths["backbone.conv3"]  # unchanged widths keep everything
    narrow.load_state_dict(slim_state_dict(wide, plan, keep))
    for a, b in zip(_outputs(wide, scan), _outputs(narrow, scan), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_slimming_refuses_to_widen_or_to_change_a_head_output(tmp_path):
    wide = build_model(SMALL)
    plan = channel_plan(wide)
    importance = {s: torch.ones(w, dtype=torch.float64) for s, w in plan.widths.items()}
    with pytest.raises(ValueError, match="cannot widen"):
        keep_most_important(plan, importance, channel_plan(build_model(_narrow_config(tmp_path, head_conv=32))))


def test_slim_command_writes_a_narrow_checkpoint_that_trains_from(tmp_path, capsys):
    data = tmp_path / "sim"
    for i in range(2):
        write_frame(data, f"{i:06d}", simulate_frame(3, i, "hdl64"))
    wide = build_model(SMALL)
    _random_statistics(wide)
    save_checkpoint(wide, tmp_path / "wide.pt")
    narrow_yaml = _narrow_config(tmp_path)
    out = tmp_path / "narrow.pt"
    assert cli_main(["slim", "--checkpoint", str(tmp_path / "wide.pt"), "--config", str(narrow_yaml),
                     "--data", str(data), "--frames", "2", "--out", str(out)]) == 0
    assert "measured on 2 scans" in capsys.readouterr().out
    narrow = load_checkpoint(build_model(narrow_yaml), out)  # strict: every key, every shape
    assert narrow.bbox_head.tasks[0].hm[0].out_channels == 8
    assert cli_main(["slim", "--checkpoint", str(out), "--config", str(SMALL), "--data", str(data),
                     "--out", str(tmp_path / "wider.pt")]) == 2
    assert "cannot widen" in capsys.readouterr().err
