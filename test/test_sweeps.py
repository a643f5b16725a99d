"""SweepBuffer: ego-motion compensation, dt, order, cap, ego box, resets, pose failures, torch path."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fastpillars_ros.pointcloud import even_indices
from fastpillars_ros.ros.pose_sources import make_transform, quat_from_rpy
from fastpillars_ros.sweeps import SweepBuffer, cap_counts, check_pose, rigid_inverse, rotation_angle

T0 = 1_700_000_000.0  # a realistic Unix stamp: dt must survive float64 seconds of this size
HZ = 20.0


def sensor_pose(t: float) -> np.ndarray:
    """A sensor driving at ~10 m/s on a left curve (0.4 rad/s), pitching and rolling slightly, far from
    the fixed frame's origin (large coordinates must not cost precision)."""
    yaw = 0.3 + 0.4 * t
    x = 1500.0 + 25.0 * math.sin(0.4 * t)
    y = -800.0 + 25.0 * (1.0 - math.cos(0.4 * t))
    q = quat_from_rpy(0.02 * math.sin(3 * t), 0.03 * math.cos(2 * t), yaw)
    return make_transform((x, y, 1.8 + 0.05 * math.sin(5 * t)), q)


def world_scene(rng: np.random.Generator) -> np.ndarray:
    """Static boxes and poles around the path in the fixed frame: (N, 3) float64."""
    base = sensor_pose(0.0)[:3, 3]
    parts = []
    for cx, cy, sx, sy, sz in [(8, 4, 4.5, 1.9, 1.6), (-6, 9, 2.0, 2.0, 1.0), (15, -5, 10.0, 2.5, 3.0),
                               (3, 20, 1.0, 6.0, 2.0)]:
        p = rng.uniform(-0.5, 0.5, (400, 3)) * (sx, sy, sz) + (cx, cy, sz / 2 - 1.8)
        parts.append(p)
    for cx, cy in [(5, -3), (-4, -6), (12, 12), (25, 2)]:
        h = rng.uniform(-1.8, 3.0, (100, 1))
        ang = rng.uniform(0, 2 * np.pi, (100, 1))
        parts.append(np.hstack([cx + 0.1 * np.cos(ang), cy + 0.1 * np.sin(ang), h]))
    return np.vstack(parts) + base * (1, 1, 0)


def observe(world: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points in the sensor frame of ``pose``; columns x, y, z, id (id = index of the world point)."""
    local = (world - pose[:3, 3]) @ pose[:3, :3]
    return np.hstack([local, np.arange(len(world))[:, None]]).astype(np.float32)


def drive(buf: SweepBuffer, n: int, world: np.ndarray, start: int = 0) -> list:
    outs = []
    for k in range(start, start + n):
        t = k / HZ
        outs.append(buf.push(observe(world, sensor_pose(t)), T0 + t, sensor_pose(t)))
    return outs


@pytest.fixture(scope="module")
def world() -> np.ndarray:
    return world_scene(np.random.default_rng(7))


def test_static_objects_land_on_the_same_place(world):
    buf = SweepBuffer(10, ego_box=None)
    out = drive(buf, 12, world)[-1]
    assert out.dtype == np.float32 and out.shape == (10 * len(world), 5)
    current = out[out[:, 4] == 0]
    ref = current[np.argsort(current[:, 3]), :3]
    ids = out[:, 3].astype(np.int64)
    err = np.linalg.norm(out[:, :3] - ref[ids], axis=1)
    assert err.max() < 0.01, err.max()
    # Control: without compensation the oldest sweep is metres away (the test would notice a no-op).
    raw_old = observe(world, sensor_pose(2 / HZ))
    assert np.linalg.norm(raw_old[:, :3] - ref, axis=1).mean() > 1.0


def test_dt_is_stamp_difference_and_zero_for_current(world):
    buf = SweepBuffer(10, ego_box=None)
    drive(buf, 12, world)
    info = buf.last_info
    expected = [k / HZ for k in range(10)]
    assert info.dt_per_sweep == pytest.approx(expected, abs=1e-6)
    out = drive(buf, 1, world, start=12)[0]
    blocks = np.split(out[:, 4], np.cumsum(buf.last_info.points_per_sweep)[:-1])
    for block, dt in zip(blocks, expected, strict=True):
        assert np.all(block == np.float32(block[0])) and block[0] == pytest.approx(dt, abs=1e-6)


def test_newest_sweep_first_in_input_order(world):
    buf = SweepBuffer(3, ego_box=None)
    drive(buf, 2, world)
    cur = observe(world, sensor_pose(2 / HZ))[::-1].copy()  # a distinctive order
    out = buf.push(cur, T0 + 2 / HZ, sensor_pose(2 / HZ))
    n = len(cur)
    np.testing.assert_array_equal(out[:n, :4], cur)
    assert np.all(out[:n, 4] == 0)
    assert np.all(np.diff(out[:, 4]) >= 0)  # dt grows: newest first
    assert buf.last_info.points_per_sweep == [n, n, n]


def test_cap_drops_oldest_sweep_points_first():
    pts = np.arange(100 * 4, dtype=np.float32).reshape(100, 4)
    buf = SweepBuffer(3, max_points=250, ego_box=None)
    for k in range(3):
        out = buf.push(pts + 1000 * k, T0 + k * 0.05, np.eye(4))
    assert out.shape == (250, 5)
    assert buf.last_info.points_per_sweep == [100, 100, 50] and buf.last_info.capped == 50
    np.testing.assert_array_equal(out[200:, :4], pts[0::2])          # oldest: every second point
    np.testing.assert_array_equal(out[100:200, :4], pts + 1000)      # middle sweep whole
    assert cap_counts([100, 100, 100, 100], 150) == [100, 50, 0, 0]
    np.testing.assert_array_equal(even_indices(10, 4), [0, 2, 5, 7])


def test_cap_below_current_sweep_subsamples_it_evenly():
    pts = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    buf = SweepBuffer(3, max_points=40, ego_box=None)
    buf.push(pts, T0, np.eye(4))
    out = buf.push(pts, T0 + 0.05, np.eye(4))
    np.testing.assert_array_equal(out[:, :3], pts[even_indices(100, 40)])
    assert buf.last_info.num_sweeps == 1 and buf.last_info.capped == 160 and buf.capped_total == 160 + 60


def test_ego_box_drops_own_vehicle_points_of_past_sweeps_only():
    own = np.array([[0.5, -0.5, 0.0, 1.0], [-0.9, 0.9, -1.5, 2.0]], np.float32)   # inside |x|, |y| < 1
    edge = np.array([[1.0, 0.0, 0.0, 3.0], [0.5, 1.5, 0.0, 4.0]], np.float32)     # on / outside the box
    cloud = np.vstack([own, edge])
    buf = SweepBuffer(3)
    for k in range(3):
        # Each sweep's own frame moves 2 m forward: own returns, moved into the current frame, would be
        # outside the box there, so this checks that the filter runs in the past sweep's own frame.
        out = buf.push(cloud, T0 + 0.05 * k, make_transform((2.0 * k, 0, 0), (0, 0, 0, 1)))
    current, past = out[out[:, 4] == 0], out[out[:, 4] > 0]
    assert sorted(current[:, 3]) == [1, 2, 3, 4]
    assert sorted(past[:, 3]) == [3, 3, 4, 4]
    assert buf.last_info.ego_removed == 4
    kept = SweepBuffer(3, ego_box=None)
    for k in range(3):
        out = kept.push(cloud, T0 + 0.05 * k, make_transform((2.0 * k, 0, 0), (0, 0, 0, 1)))
    assert len(out) == 12


def _alone(out: np.ndarray, n: int) -> bool:
    return out.shape[0] == n and np.all(out[:, -1] == 0)


def test_reset_when_time_goes_backwards(world, caplog):
    buf = SweepBuffer(10, ego_box=None)
    drive(buf, 5, world)
    with caplog.at_level(logging.WARNING, logger="fastpillars_ros.sweeps"):
        out = buf.push(observe(world, sensor_pose(0)), T0, sensor_pose(0))   # bag loop
    assert _alone(out, len(world))
    assert buf.reset_counts["time_backwards"] == 1 and buf.last_reset_reason.startswith("time_backwards")
    assert buf.last_info.reset == buf.last_reset_reason
    assert "sweep history reset (time_backwards" in caplog.text
    assert buf.status()["sweeps_held"] == 1


def test_reset_on_time_gap(world):
    buf = SweepBuffer(10, ego_box=None, max_time_gap_s=0.3)
    drive(buf, 5, world)
    t = 4 / HZ + 0.31
    out = buf.push(observe(world, sensor_pose(t)), T0 + t, sensor_pose(t))
    assert _alone(out, len(world)) and buf.reset_counts["time_gap"] == 1
    t2 = t + 0.05  # the history restarted at the gap frame
    out = buf.push(observe(world, sensor_pose(t2)), T0 + t2, sensor_pose(t2))
    assert buf.last_info.num_sweeps == 2 and buf.resets == 1


def test_reset_on_translation_jump(world):
    buf = SweepBuffer(10, ego_box=None, max_jump_m=2.0)
    drive(buf, 3, world)
    t = 3 / HZ
    jumped = make_transform((3.0, 0, 0), (0, 0, 0, 1)) @ sensor_pose(t)   # relocalised by 3 m
    out = buf.push(observe(world, jumped), T0 + t, jumped)
    assert _alone(out, len(world)) and buf.reset_counts["pose_jump"] == 1
    assert "moved 3." in buf.last_reset_reason


def test_reset_on_rotation_jump(world):
    buf = SweepBuffer(10, ego_box=None, max_jump_rad=0.2)
    drive(buf, 3, world)
    t = 3 / HZ
    turned = sensor_pose(t) @ make_transform((0, 0, 0), quat_from_rpy(0, 0, 0.3))
    buf.push(observe(world, turned), T0 + t, turned)
    assert buf.reset_counts["pose_jump"] == 1 and buf.last_info.num_sweeps == 1


def test_no_reset_for_normal_driving(world):
    buf = SweepBuffer(10, ego_box=None)
    drive(buf, 30, world)
    assert buf.resets == 0 and buf.last_info.num_sweeps == 10


def test_explicit_reset(world):
    buf = SweepBuffer(10, ego_box=None)
    drive(buf, 4, world)
    buf.reset("map changed")
    assert buf.last_reset_reason == "explicit: map changed" and buf.reset_counts["explicit"] == 1
    assert buf.status()["sweeps_held"] == 0
    out = drive(buf, 1, world, start=4)[0]
    assert _alone(out, len(world))


def test_missing_pose_skip_keeps_history(world):
    buf = SweepBuffer(10, ego_box=None, on_missing_pose="skip")
    drive(buf, 3, world)
    assert buf.push(observe(world, sensor_pose(0.15)), T0 + 0.15, None, pose_reason="tf: extrapolation") is None
    assert buf.last_info.skipped == "tf: extrapolation" and buf.skipped == 1
    drive(buf, 1, world, start=4)
    assert buf.last_info.num_sweeps == 4 and buf.resets == 0


def test_missing_pose_single_uses_cloud_alone_and_resets(world):
    buf = SweepBuffer(10, ego_box=None, on_missing_pose="single")
    drive(buf, 3, world)
    cloud = observe(world, sensor_pose(0.15))
    out = buf.push(cloud, T0 + 0.15, None, pose_reason="no odometry")
    assert _alone(out, len(world)) and np.array_equal(out[:, :4], cloud)
    assert buf.reset_counts["no_pose"] == 1 and "no odometry" in buf.last_reset_reason
    drive(buf, 1, world, start=4)
    assert buf.last_info.num_sweeps == 1  # the pose-less cloud was not kept


def test_invalid_pose_counts_as_missing(world):
    buf = SweepBuffer(10, ego_box=None)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    assert buf.push(observe(world, sensor_pose(0)), T0, bad) is None
    assert "not a rotation" in buf.last_info.skipped
    assert check_pose(np.full((4, 4), np.nan))[0] is None and check_pose(np.eye(3))[0] is None


def test_dt_column_written_in_place(world):
    buf = SweepBuffer(4, ego_box=None, dt_column=4)
    for k in range(4):
        pose = sensor_pose(k / HZ)
        cloud = np.hstack([observe(world, pose), np.full((len(world), 1), 9.0, np.float32)])
        out = buf.push(cloud, T0 + k / HZ, pose)
    assert out.shape == (4 * len(world), 5)
    assert sorted(set(np.round(out[:, 4], 4))) == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_max_span_leaves_old_sweeps_out(world):
    buf = SweepBuffer(10, ego_box=None, max_span_s=0.12)
    drive(buf, 6, world)
    assert buf.last_info.dt_per_sweep == pytest.approx([0.0, 0.05, 0.1], abs=1e-6)
    assert buf.resets == 0


def test_single_sweep_is_pass_through_with_zero_dt(world):
    buf = SweepBuffer(1)
    out = drive(buf, 3, world)[-1]
    assert _alone(out, len(world)) and buf.status()["sweeps_held"] == 0


def test_input_change_resets(world):
    buf = SweepBuffer(5, ego_box=None)
    drive(buf, 2, world)
    out = buf.push(np.zeros((10, 3), np.float32), T0 + 0.1, sensor_pose(0.1))
    assert out.shape == (10, 4) and buf.reset_counts["input_changed"] == 1


def test_status_reports_buffer_state(world):
    buf = SweepBuffer(10, ego_box=None, max_points=5 * len(world))
    drive(buf, 12, world)
    s = buf.status()
    assert s["sweeps_held"] == 9 and s["span_s"] == pytest.approx(0.4, abs=1e-6)
    assert s["points_held"] == 9 * len(world) and s["last_output_points"] == 5 * len(world)
    assert s["frames"] == 12 and s["resets"] == 0 and s["capped_points_total"] > 0


def test_rigid_helpers():
    pose = sensor_pose(1.3)
    np.testing.assert_allclose(rigid_inverse(pose) @ pose, np.eye(4), atol=1e-12)
    rot = make_transform((0, 0, 0), quat_from_rpy(0.0, 0.0, 1e-5))[:3, :3]
    assert rotation_angle(rot) == pytest.approx(1e-5, rel=1e-6)
    assert rotation_angle(np.diag([1.0, -1.0, -1.0])) == pytest.approx(math.pi)


def test_torch_path_matches_numpy(world):
    torch = pytest.importorskip("torch")
    ref, tbuf = SweepBuffer(10, max_points=8 * len(world)), SweepBuffer(10, max_points=8 * len(world))
    for k in range(12):
        pose = sensor_pose(k / HZ)
        cloud = observe(world, pose)
        a = ref.push(cloud, T0 + k / HZ, pose)
        b = tbuf.push(torch.from_numpy(cloud), T0 + k / HZ, pose)
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    np.testing.assert_allclose(b.numpy(), a, atol=2e-5)
    assert isinstance(tbuf._past[0].points, torch.Tensor)


@pytest.mark.gpu
def test_gpu_keeps_sweeps_on_the_device(world):
    torch = pytest.importorskip("torch")
    ref, gbuf = SweepBuffer(10), SweepBuffer(10, device="cuda")
    for k in range(12):
        pose = sensor_pose(k / HZ)
        cloud = observe(world, pose)
        a = ref.push(cloud, T0 + k / HZ, pose)
        b = gbuf.push(cloud, T0 + k / HZ, pose)
    assert b.device.type == "cuda" and all(s.points.device.type == "cuda" for s in gbuf._past)
    np.testing.assert_allclose(b.cpu().numpy(), a, atol=5e-5)
    # Tensors already on the GPU stay there with the default device too.
    cbuf = SweepBuffer(3)
    out = cbuf.push(torch.from_numpy(observe(world, sensor_pose(0))).cuda(), T0, sensor_pose(0))
    assert out.device.type == "cuda"


def test_add_keeps_a_sweep_without_building_an_output(world):
    full, mixed = SweepBuffer(5, ego_box=None), SweepBuffer(5, ego_box=None)
    for k in range(8):
        pose = sensor_pose(k / HZ)
        cloud = observe(world, pose)
        a = full.push(cloud, T0 + k / HZ, pose)
        if k % 2:  # every other frame only kept, as for clouds the detector skips
            b = mixed.push(cloud, T0 + k / HZ, pose)
        else:
            assert mixed.add(cloud, T0 + k / HZ, pose) is True
    np.testing.assert_array_equal(a, b)
    assert mixed.add(observe(world, sensor_pose(1.0)), T0 + 1.0, None) is False and mixed.skipped == 1
    assert mixed.resets == 0


def test_empty_current_cloud_still_gets_the_past_sweeps(world):
    buf = SweepBuffer(3, ego_box=None)
    drive(buf, 2, world)
    out = buf.push(np.zeros((0, 4), np.float32), T0 + 0.1, sensor_pose(0.1))
    assert out.shape == (2 * len(world), 5) and buf.last_info.points_per_sweep == [0, len(world), len(world)]
    assert buf.last_info.dt_per_sweep == pytest.approx([0.0, 0.05, 0.1], abs=1e-6)
