"""Training: targets (inverse of the head decoding), focal loss, augmentation, the loop (loss goes down,
determinism, resume) and the CLI command. Synthetic frames only (points in boxes + a ground plane) and a
test-only small model (test/data/train_small.yaml), so the whole file runs in well under a minute."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpillars_ros.boxes import points_in_boxes, wrap_angle
from fastpillars_ros.config import HEAD_CHANNELS, ModelConfig, load_model_config
from fastpillars_ros.model import build_model
from fastpillars_ros.model.checkpoint import load_checkpoint
from fastpillars_ros.model.head import decode_head_outputs
from fastpillars_ros.mounting import Mounting, points_to_model
from fastpillars_ros.train.augment import (
    AugmentConfig,
    augment,
    flip_x,
    flip_y,
    global_lift,
    global_rotate,
    global_scale,
    global_tilt,
    paste_objects,
)
from fastpillars_ros.train.data import Frame, TrainSet, collate
from fastpillars_ros.train.engine import TrainOptions, _forward, train
from fastpillars_ros.train.losses import BatchTargets, compute_losses, focal_loss
from fastpillars_ros.train.targets import build_targets, gaussian_radius, head_geometry, regression_branches

SMALL = str(Path(__file__).parent / "data" / "train_small.yaml")
SIZES = {0: (4.0, 1.8, 1.5), 1: (0.7, 0.7, 1.75), 2: (1.8, 0.6, 1.7)}  # car, pedestrian, cyclist (l, w, h)
REFLECT = {0: 0.8, 1: 0.2, 2: 0.5}


def make_frame(rng: np.random.Generator, n_objects: int = 3, x_range: tuple[float, float] = (1.5, 11.3),
               y_half: float = 5.0, ground_step: float = 0.4) -> Frame:
    """Ground plane at z = -1.7 plus objects filled with points, non-overlapping (centres >= 3 m apart)."""
    g = np.arange(0.0, x_range[1] + 1.5, ground_step)
    gy = np.arange(-y_half - 1.4, y_half + 1.4, ground_step)
    gx, gy = np.meshgrid(g, gy)
    ground = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, -1.7), np.full(gx.size, 0.1)], axis=1)
    boxes, labels, parts = [], [], [ground]
    while len(boxes) < n_objects:
        c = int(rng.integers(0, 3))
        x, y = rng.uniform(*x_range), rng.uniform(-y_half, y_half)
        if any(math.hypot(x - b[0], y - b[1]) < 4.5 for b in boxes):
            continue
        size = SIZES[c]
        box = np.array([x, y, -1.7 + size[2] / 2, *size, rng.uniform(-math.pi, math.pi)])
        n = 300 if c == 0 else 120
        local = (rng.random((n, 3)) - 0.5) * 0.9 * np.array(size)
        cy, sy = math.cos(box[6]), math.sin(box[6])
        pts = np.stack([x + cy * local[:, 0] - sy * local[:, 1], y + sy * local[:, 0] + cy * local[:, 1],
                        box[2] + local[:, 2], np.full(n, REFLECT[c])], axis=1)
        boxes.append(box)
        labels.append(c)
        parts.append(pts)
    points = np.concatenate(parts).astype(np.float32)
    return Frame(points=points, boxes=np.array(boxes), labels=np.array(labels, dtype=np.int64))


def frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [make_frame(rng, n_objects=int(rng.integers(2, 4))) for _ in range(n)]


def ideal_maps(targets, config) -> list[dict[str, torch.Tensor]]:
    """Head maps that a perfect network would output for these targets (logits +-20 on the heatmap)."""
    h, w = config.head_shape
    # Columns of the regression targets (REG_ORDER: reg, height, dim, [vel], rot, [axis]).
    names = regression_branches(config)
    start = dict(zip(names, np.cumsum([0] + [HEAD_CHANNELS[n] for n in names])[:-1].tolist(), strict=True))
    outs = []
    for t in range(len(config.tasks)):
        maps = {name: torch.zeros(1, ch, h, w) for name, ch in config.heads}
        reg = torch.from_numpy(targets.reg[t])
        ind = torch.from_numpy(targets.ind[t])
        rows, cols = ind // w, ind % w
        for name, ch in config.heads:
            if name == "iou":
                maps[name][0, 0, rows, cols] = 1.0
            else:
                maps[name][0, :, rows, cols] = reg[:, start[name]:start[name] + ch].t()
        hm = torch.full((1, len(config.tasks[t]), h, w), -20.0)
        hm[0, torch.from_numpy(targets.cls[t]), rows, cols] = 20.0
        maps["hm"] = hm
        outs.append(maps)
    return outs


def _config(name: str) -> ModelConfig:
    """A shipped config by name; ``NAME+axis`` adds the axis branch (``head.axis``)."""
    base, _, extra = name.partition("+")
    config = load_model_config(base)
    if extra == "axis":
        config = replace(config, head=replace(config.head, axis=True))
    return config


@pytest.mark.parametrize("name", ["tiny", "kitti", "nuscenes_official", "kitti+axis"])
def test_targets_decode_round_trip(name: str) -> None:
    config = _config(name)
    rng = np.random.default_rng(3)
    n = 12
    # Distinct head cells: one object per cell, spread over the map; every class of every task.
    geo = head_geometry(config)
    cells = rng.choice(geo.height * geo.width, n, replace=False)
    xs = geo.x_min + (cells % geo.width + rng.random(n)) * geo.cell_x
    ys = geo.y_min + (cells // geo.width + rng.random(n)) * geo.cell_y
    labels = np.arange(n) % len(config.class_names)
    sizes = rng.uniform(0.4, 6.0, (n, 3))
    boxes = np.column_stack([xs, ys, rng.uniform(-2, 0.5, n), sizes, rng.uniform(-math.pi, math.pi, n)])
    vel = rng.normal(0, 3, (n, 2))
    targets = build_targets(boxes, labels, config, velocities=vel)
    assert sum(len(i) for i in targets.ind) == n
    (cand,) = decode_head_outputs(ideal_maps(targets, config), config)
    assert len(cand) == n
    got = cand.boxes.double().numpy()
    order = [int(np.argmin(np.hypot(got[:, 0] - b[0], got[:, 1] - b[1]))) for b in boxes]
    got = got[order]
    np.testing.assert_allclose(got[:, :6], boxes[:, :6], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(wrap_angle(got[:, 6] - boxes[:, 6]), 0.0, atol=1e-5)
    np.testing.assert_array_equal(cand.labels.numpy()[order], labels)
    task_of = np.concatenate([[t] * len(c) for t, c in enumerate(config.tasks)])
    np.testing.assert_array_equal(cand.task.numpy()[order], task_of[labels])
    if config.vel:
        np.testing.assert_allclose(cand.velocities.double().numpy()[order], vel, atol=1e-5)


def test_heatmap_peak_at_centre_and_radius_grows_with_size() -> None:
    config = load_model_config("tiny")
    geo = head_geometry(config)
    counts = []
    for scale in (1.0, 3.0, 6.0):
        box = np.array([[20.3, 1.1, -1.0, 4.0 * scale, 1.8 * scale, 1.5, 0.3]])
        t = build_targets(box, np.array([0]), config)
        hm = t.hm[0]
        row, col = int((1.1 - geo.y_min) // geo.cell_y), int((20.3 - geo.x_min) // geo.cell_x)
        assert hm[0, row, col] == 1.0 and hm.max() == 1.0
        assert (hm == 1.0).sum() == 1 and hm[1:].max() == 0.0  # other classes untouched
        counts.append(int((hm[0] > 0).sum()))
    assert counts[0] < counts[1] < counts[2]
    r = gaussian_radius(np.array([1.0, 3.0, 10.0]), np.array([1.0, 3.0, 10.0]))
    assert np.all(np.diff(r) > 0)


def test_augmentation_keeps_points_in_their_boxes() -> None:
    rng = np.random.default_rng(5)
    f = make_frame(rng, n_objects=3)
    pts = f.points.astype(np.float64)
    before = points_in_boxes(pts, f.boxes)
    assert before.sum() > 300
    for fn in (lambda p, b: flip_y(p, b), lambda p, b: flip_x(p, b), lambda p, b: global_rotate(p, b, 0.7),
               lambda p, b: global_scale(p, b, 1.04), lambda p, b: augment(p, b, rng)):
        p2, (b2,) = fn(pts, [f.boxes])
        np.testing.assert_array_equal(points_in_boxes(p2, b2), before)


def test_tilt_and_lift_keep_nearly_every_point_in_its_box() -> None:
    # Boxes stay upright under a tilt, so a few points at a tilted box's ends may leave it: at most 2 % at 3 degrees.
    rng = np.random.default_rng(5)
    f = make_frame(rng, n_objects=3)
    pts = f.points.astype(np.float64)
    before = points_in_boxes(pts, f.boxes)
    p2, (b2,) = global_lift(*global_tilt(pts, [f.boxes], math.radians(3), math.radians(-3)), -0.25)
    stayed = points_in_boxes(p2, b2) & before
    assert stayed.sum() >= 0.98 * before.sum()
    np.testing.assert_array_equal(b2[:, 3:], f.boxes[:, 3:])  # sizes and yaw unchanged


def test_tilt_is_what_a_sensor_so_mounted_sees_and_the_mounting_correction_undoes_it() -> None:
    level = np.array([[10.0, 2.0, -1.73, 0.5], [25.0, -8.0, -1.73, 0.5], [5.0, 5.0, -1.73, 0.5]])
    tilted, _ = global_tilt(level, [], pitch=math.radians(2.5), roll=math.radians(-1.5))
    assert np.ptp(tilted[:, 2]) > 0.5  # the ground is no longer level
    back = points_to_model(tilted, Mounting(roll=math.radians(-1.5), pitch=math.radians(2.5)), 1.73)
    np.testing.assert_allclose(back, level, atol=1e-9)


def test_lift_shifts_points_and_boxes_by_the_same_height() -> None:
    pts = np.array([[1.0, 2.0, 3.0, 0.5]])
    box = np.array([[10.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.3]])
    p2, (b2,) = global_lift(pts, [box], 0.2)
    np.testing.assert_allclose(p2, [[1.0, 2.0, 3.2, 0.5]])
    np.testing.assert_allclose(b2, [[10.0, 0.0, -0.8, 4.0, 1.8, 1.5, 0.3]])


def test_tilt_and_lift_leave_the_random_stream_and_the_other_draws_unchanged() -> None:
    # Runs made before tilt/lift existed must reproduce: their flips, turn and scale, and every later draw.
    f = make_frame(np.random.default_rng(3), n_objects=2)
    plain, with_tl = np.random.default_rng(9), np.random.default_rng(9)
    _, (b1,) = augment(f.points, [f.boxes], plain, AugmentConfig())
    _, (b2,) = augment(f.points, [f.boxes], with_tl, AugmentConfig(tilt=math.radians(3), lift=0.25))
    assert plain.random() == with_tl.random()
    np.testing.assert_allclose(b2[:, 3:], b1[:, 3:])  # same flips, turn and scale
    assert not np.allclose(b2[:, 2], b1[:, 2])  # but moved in height


def test_paste_objects_adds_donors_only_in_free_space() -> None:
    rng = np.random.default_rng(6)
    f = make_frame(rng, n_objects=2)
    donor_box = f.boxes[0].copy()  # collides with an existing object: rejected
    free_box = np.array([30.0, 0.0, -0.9, 4.0, 1.8, 1.5, 0.0])
    free_pts = np.array([[30.0, 0.0, -0.9, 0.5], [30.5, 0.3, -0.5, 0.5]], dtype=np.float32)
    pts, boxes, labels = paste_objects(f.points, f.boxes, f.labels, np.zeros((0, 7)),
                                       [(donor_box, 2, free_pts), (free_box, 0, free_pts)])
    assert len(boxes) == 3 and labels[-1] == 0 and len(pts) == len(f.points) + 2
    np.testing.assert_array_equal(boxes[-1], free_box)


def test_focal_loss_small_for_perfect_and_large_for_wrong_prediction() -> None:
    config = load_model_config("tiny")
    boxes = np.array([[10.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.0], [30.0, 5.0, -1.0, 0.7, 0.7, 1.7, 0.0]])
    t = build_targets(boxes, np.array([0, 1]), config)
    gt = torch.from_numpy(t.hm[0])[None]
    perfect = torch.where(gt == 1.0, torch.tensor(20.0), torch.tensor(-20.0))
    wrong = -perfect
    assert float(focal_loss(perfect, gt)) < 1e-3
    assert float(focal_loss(wrong, gt)) > 100.0
    assert float(focal_loss(torch.zeros_like(gt), gt)) > 1.0


@pytest.mark.parametrize("name", ["kitti", "kitti+axis"])
def test_perfect_maps_give_zero_regression_loss_and_iou_one(name: str) -> None:
    config = _config(name)
    boxes = np.array([[10.0, 0.0, -1.0, 4.0, 1.8, 1.5, 0.3], [30.0, 5.0, -1.0, 0.7, 0.6, 1.7, -2.9],
                      [20.0, -8.0, -0.8, 1.8, 0.6, 1.7, 1.6]])
    t = build_targets(boxes, np.array([0, 1, 2]), config)
    batch = BatchTargets([torch.from_numpy(h)[None] for h in t.hm], [torch.from_numpy(i)[None] for i in t.ind],
                         [torch.ones(1, len(i)) for i in t.ind], [torch.from_numpy(r)[None] for r in t.reg],
                         [torch.from_numpy(b)[None] for b in t.boxes], torch.from_numpy(t.ignore)[None])
    maps = ideal_maps(t, config)
    _, parts = compute_losses(maps, batch, config, head_geometry(config))
    assert parts["reg"] < 1e-5
    # The IoU branch of the ideal maps says 1, and the decoded boxes really have IoU 1 with the GT.
    assert parts["iou"] < 1e-4


def test_axis_targets_are_the_same_for_a_box_and_its_half_turn() -> None:
    config = _config("kitti+axis")
    box = np.array([[20.0, 3.0, -1.0, 4.2, 1.8, 1.5, 0.4]])
    turned = box.copy()
    turned[0, 6] -= math.pi
    a, b = build_targets(box, [0], config).reg[0][0], build_targets(turned, [0], config).reg[0][0]
    np.testing.assert_allclose(a[-2:], b[-2:], atol=1e-6)  # axis: identical
    np.testing.assert_allclose(a[-4:-2], -b[-4:-2], atol=1e-6)  # rot: opposite


def _opts(tmp: Path, **kw) -> TrainOptions:
    base = dict(config=SMALL, out=str(tmp), epochs=2, batch_size=2, lr=3e-3, workers=0, seed=0, progress=False,
                threads=1)
    base.update(kw)
    return TrainOptions(**base)


def test_short_training_reduces_loss(tmp_path: Path) -> None:
    data = frames(6)
    # No augmentation: the net must fit these 6 frames (with augmentation the drop is ~2.5x in 60 steps).
    summary = train(_opts(tmp_path, epochs=12, lr=1e-2, augment=False), train_source=data)
    hist = summary["history"]
    assert summary["steps"] == 12 * 3
    first, last = hist[0]["loss"], np.mean([h["loss"] for h in hist[-2:]])
    assert last < 0.5 * first, [round(h["loss"], 3) for h in hist]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 13))
    assert (tmp_path / "epoch_012.pt").is_file() and (tmp_path / "last.pt").is_file()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_same_seed_gives_identical_weights_whatever_the_workers(tmp_path: Path) -> None:
    data = frames(6, seed=1)
    train(_opts(tmp_path / "a", epochs=1, gt_sampling=True), train_source=data)
    train(_opts(tmp_path / "b", epochs=1, gt_sampling=True, workers=1), train_source=data)
    a, b = _state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = frames(4, seed=2)
    full = train(_opts(tmp_path / "full", epochs=2), train_source=data)
    part = train(_opts(tmp_path / "part", epochs=2, max_steps=2), train_source=data)
    assert part["epochs_done"] == 1
    state = torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2 and state["optimizer"]["state"]
    resumed = train(_opts(tmp_path / "part", epochs=2, resume=True), train_source=data)
    assert [h["epoch"] for h in resumed["history"]] == [2] and resumed["steps"] == full["steps"] == 4
    a, b = _state(tmp_path / "full" / "last.pt"), _state(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["epoch"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]


def test_bf16_training_reduces_loss_and_keeps_fp32_weights(tmp_path: Path) -> None:
    summary = train(_opts(tmp_path, epochs=12, lr=1e-2, augment=False, precision="bf16"), train_source=frames(6))
    hist = summary["history"]
    first, last = hist[0]["loss"], np.mean([h["loss"] for h in hist[-2:]])
    assert last < 0.5 * first, [round(h["loss"], 3) for h in hist]
    assert {v.dtype for v in _state(tmp_path / "last.pt").values() if v.is_floating_point()} == {torch.float32}


def test_bf16_precision_runs_the_dense_part_in_bf16_and_returns_fp32_maps() -> None:
    config = load_model_config(SMALL)
    torch.manual_seed(0)
    model = build_model(config).train()
    batch = collate([TrainSet(frames(2, seed=3), config, augment=False)[i] for i in range(2)])
    full = _forward(model, batch, torch.device("cpu"), "fp32")
    half = _forward(model, batch, torch.device("cpu"), "bf16")
    for a, b in zip(full, half, strict=True):
        for key in a:
            assert b[key].dtype == torch.float32
            assert not torch.equal(a[key], b[key]), key  # bf16 rounding shows
            scale = a[key].abs().max().item() + 1e-6
            assert (a[key] - b[key]).abs().max().item() < 0.1 * scale, key


def test_resuming_with_another_precision_is_an_error(tmp_path: Path) -> None:
    data = frames(4, seed=2)
    train(_opts(tmp_path, epochs=2, max_steps=2, precision="bf16"), train_source=data)
    with pytest.raises(ValueError, match="precision bf16"):
        train(_opts(tmp_path, epochs=2, resume=True), train_source=data)


def test_unknown_training_precision_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training precision must be one of"):
        train(_opts(tmp_path, precision="fp16"), train_source=frames(4))


def test_batches_offset_pillar_ids_and_index_the_batch() -> None:
    config = load_model_config(SMALL)
    ds = TrainSet(frames(2, seed=4), config, augment=False)
    s0, s1 = ds[0], ds[1]
    batch = collate([s0, s1])
    m0 = len(s0["coords"])
    assert batch["batch_index"].tolist() == [0] * m0 + [1] * len(s1["coords"])
    assert int(batch["point_pillar"][len(s0["features"])]) >= m0
    assert batch["targets"].hm[0].shape == (2, 3, *config.head_shape)
    assert float(batch["targets"].mask[0].sum()) == s0["num_boxes"] + s1["num_boxes"]


def test_training_without_a_progress_bar_still_logs_every_epoch(tmp_path: Path, capsys) -> None:
    train(_opts(tmp_path, epochs=2), train_source=frames(4, seed=3))
    out = capsys.readouterr().out
    assert "2 steps/epoch, epochs 1..2" in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(" loss " in line and " min, " in line and "frames/s, step " in line for line in lines)


def test_cli_trains_on_a_kitti_folder_and_the_checkpoint_loads(tmp_path: Path) -> None:
    from fastpillars_ros.datasets.kitti import format_label_line, labels_from_lidar_boxes
    from fastpillars_ros.model import build_model
    from fastpillars_ros.sim.generate import SIM_CALIB
    from fastpillars_ros.train import command

    root = tmp_path / "data"
    for sub in ("velodyne", "label_2", "calib"):
        (root / sub).mkdir(parents=True)
    names = ("Car", "Pedestrian", "Cyclist")
    for i, f in enumerate(frames(2, seed=7)):
        f.points.tofile(root / "velodyne" / f"{i:06d}.bin")
        objs = labels_from_lidar_boxes([names[c] for c in f.labels], f.boxes, SIM_CALIB)
        (root / "label_2" / f"{i:06d}.txt").write_text("".join(format_label_line(o) + "\n" for o in objs))
        (root / "calib" / f"{i:06d}.txt").write_text(SIM_CALIB.to_text())
    rc = command.main(["--config", SMALL, "--data", str(root), "--val", str(root), "--epochs", "1", "--out",
                       str(tmp_path / "run"), "--batch-size", "2", "--workers", "0", "--no-progress"])
    assert rc == 0
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert math.isfinite(rec["loss"]) and math.isfinite(rec["val_loss"])
    load_checkpoint(build_model(SMALL), tmp_path / "run" / "last.pt")
    assert command.main(["--config", SMALL, "--data", str(tmp_path / "nothing"), "--epochs", "1", "--out",
                         str(tmp_path / "run2"), "--no-progress"]) == 2


@pytest.mark.parametrize("bad", [1])
def test_too_few_frames_for_a_batch_is_an_error(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_opts(tmp_path, batch_size=4), train_source=frames(bad))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_runs_on_cuda_like_on_cpu(tmp_path: Path) -> None:
    data = frames(4, seed=8)
    cpu = train(_opts(tmp_path / "cpu", epochs=1, augment=False), train_source=data)
    gpu = train(_opts(tmp_path / "gpu", epochs=1, augment=False, device="cuda"), train_source=data)
    assert next(gpu["model"].parameters()).is_cuda
    a, b = cpu["history"][0]["loss"], gpu["history"][0]["loss"]
    assert math.isfinite(b) and abs(a - b) < 0.05 * abs(a)
