"""The DIoU box loss (train/box_loss.py): its overlap is the exact 3D IoU, its gradients move a box onto its target,
and `train --box-loss-weight` adds it to the training loss."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import _config, _opts, frames, ideal_maps

from fastpillars_ros.ops.iou import iou_3d_pairs
from fastpillars_ros.train import command
from fastpillars_ros.train.box_loss import diou_loss, iou_3d_differentiable
from fastpillars_ros.train.engine import train
from fastpillars_ros.train.losses import BatchTargets, LossWeights, compute_losses
from fastpillars_ros.train.targets import build_targets, head_geometry


def _random_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.c_[rng.uniform(-2, 2, (n, 3)), rng.uniform(0.3, 5, (n, 3)), rng.uniform(-4, 4, n)]
    b = a + np.c_[rng.normal(0, 1, (n, 3)), rng.normal(0, 0.5, (n, 3)), rng.normal(0, 0.7, n)]
    b[:, 3:6] = np.abs(b[:, 3:6]) + 0.1
    return a, b


def test_differentiable_iou_equals_the_exact_iou_on_random_pairs() -> None:
    a, b = _random_pairs(5000)
    b[:50] = a[:50]  # identical boxes
    b[50:100, 6] = a[50:100, 6] + math.pi / 2  # a quarter turn about the same centre
    b[100:150, :2] = a[100:150, :2] + 20.0  # far apart: IoU 0
    got = iou_3d_differentiable(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, iou_3d_pairs(a, b), atol=1e-9)
    assert np.all(got[:50] > 1 - 1e-9) and np.all(got[100:150] == 0.0)


def test_diou_loss_is_zero_for_identical_boxes_and_grows_with_the_offset() -> None:
    box = torch.tensor([[10.0, 2.0, -0.8, 4.0, 1.8, 1.5, 0.3]], dtype=torch.float64)
    shifts = [0.0, 0.2, 0.8, 3.0, 10.0]  # the last two: no overlap, the centre term still grows
    losses = []
    for d in shifts:
        moved = box.clone()
        moved[0, 0] += d
        losses.append(float(diou_loss(moved, box)[0]))
    assert losses[0] == pytest.approx(0.0, abs=1e-12)
    assert all(x < y for x, y in itertools.pairwise(losses))


def test_gradient_descent_on_the_loss_moves_a_box_onto_its_target() -> None:
    target = torch.tensor([[12.0, -3.0, -0.9, 4.2, 1.8, 1.55, 0.6]], dtype=torch.float64)
    start = torch.tensor([[13.2, -2.1, -0.5, 3.4, 2.3, 1.2, 1.1]], dtype=torch.float64)
    params = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([params], lr=0.02)
    for _ in range(400):
        opt.zero_grad()
        diou_loss(params, target).sum().backward()
        opt.step()
    iou = float(iou_3d_pairs(params.detach().numpy(), target.numpy())[0])
    assert float(iou_3d_pairs(start.numpy(), target.numpy())[0]) < 0.3 < 0.95 < iou


def test_box_loss_weight_adds_the_diou_term_to_the_training_loss() -> None:
    config = _config("kitti+axis")
    boxes = np.array([[10.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.3], [20.0, -8.0, -0.8, 1.8, 0.6, 1.7, 1.6]])
    t = build_targets(boxes, np.array([0, 2]), config)
    batch = BatchTargets([torch.from_numpy(h)[None] for h in t.hm], [torch.from_numpy(i)[None] for i in t.ind],
                         [torch.ones(1, len(i)) for i in t.ind], [torch.from_numpy(r)[None] for r in t.reg],
                         [torch.from_numpy(b)[None] for b in t.boxes], torch.from_numpy(t.ignore)[None])
    maps = ideal_maps(t, config)
    maps[0]["reg"] = maps[0]["reg"] + 0.3  # every box 0.3 cells off in x and y
    geo = head_geometry(config)
    plain, parts = compute_losses(maps, batch, config, geo)
    with_box, box_parts = compute_losses(maps, batch, config, geo, LossWeights(box=2.0))
    assert "box" not in parts and box_parts["box"] > 0.05
    assert float(with_box) == pytest.approx(float(plain) + box_parts["box"], rel=1e-5)
    _, exact = compute_losses(ideal_maps(t, config), batch, config, geo, LossWeights(box=2.0))
    assert exact["box"] < 1e-4


def test_training_with_the_box_loss_reduces_it(tmp_path: Path) -> None:
    summary = train(_opts(tmp_path / "run", epochs=3, loss_weights=LossWeights(box=1.0)), train_source=frames(6))
    first, last = summary["history"][0], summary["history"][-1]
    assert last["box"] < first["box"]


def test_resuming_with_another_box_loss_weight_is_an_error(tmp_path: Path) -> None:
    train(_opts(tmp_path / "run", epochs=2, max_steps=1), train_source=frames(4))
    with pytest.raises(ValueError, match="use the same --box-loss-weight"):
        train(_opts(tmp_path / "run", epochs=2, resume=True, loss_weights=LossWeights(box=0.5)),
              train_source=frames(4))


def test_a_negative_box_loss_weight_is_refused_naming_the_flag(tmp_path: Path, capsys) -> None:
    assert command.main(["--data", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run"),
                         "--box-loss-weight", "-0.5", "--no-progress"]) == 2
    assert "--box-loss-weight must be >= 0" in capsys.readouterr().err
