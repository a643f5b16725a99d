"""The node-side path of multi-sweep input without a ROS graph: sweeps.* parameters, and nav_msgs/Odometry
plus sensor_msgs/PointCloud2 message objects through the odometry callback, the node's frame converter and
SweepInput, giving the compensated model input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from nav_msgs.msg import Odometry
from std_msgs.msg import Header

from fastpillars_ros.config import load_model_config
from fastpillars_ros.ros import sweep_params
from fastpillars_ros.ros.cloud_messages import array_to_cloud
from fastpillars_ros.ros.frame_input import FrameInput
from fastpillars_ros.ros.node_params import NodeParams, ParamError, flatten
from fastpillars_ros.ros.pose_sources import (
    OdometryPoseSource,
    make_odometry_callback,
    make_transform,
    matrix_to_quat,
    quat_from_rpy,
    transform_from_xyz_rpy,
)
from fastpillars_ros.ros.sweep_params import SweepParams, build_sweep_input

# nuScenes-like mounting: lidar 1 m ahead of the base, 1.84 m up, rotated -90 deg about z (x right, y forward).
S2B = (0.986, 0.0, 1.84, 0.0, 0.0, -math.pi / 2)
T0 = 1_700_000_000.0


def base_pose(t: float) -> np.ndarray:
    """The base drives at 10 m/s on a 0.3 rad/s left curve."""
    yaw = 0.3 * t
    return make_transform((200.0 + 10.0 / 0.3 * math.sin(yaw), -50.0 + 10.0 / 0.3 * (1 - math.cos(yaw)), 0.0),
                          quat_from_rpy(0.0, 0.0, yaw))


def stamp(t_s: float) -> TimeMsg:
    ns = round(t_s * 1e9)
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def odometry(t: float) -> Odometry:
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "odom", "base_link"
    msg.header.stamp = stamp(T0 + t)
    pose = base_pose(t)
    p, o = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pose[:3, 3])
    o.x, o.y, o.z, o.w = (float(v) for v in matrix_to_quat(pose[:3, :3]))
    return msg


def world_points() -> np.ndarray:
    rng = np.random.default_rng(3)
    centres = [(15, 3), (25, -4), (8, 9), (30, 12), (-10, 5)]
    pts = [rng.uniform(-1, 1, (300, 3)) * (2.0, 1.0, 0.8) + (cx + 200.0, cy - 50.0, 0.8) for cx, cy in centres]
    return np.vstack(pts)


def cloud_msg(world: np.ndarray, t: float, frame: str = "lidar_top"):
    sensor = base_pose(t) @ transform_from_xyz_rpy(S2B)
    local = (world - sensor[:3, 3]) @ sensor[:3, :3]
    ids = np.arange(len(world), dtype=np.float64)[:, None]   # the intensity field carries a point id
    return array_to_cloud(np.hstack([local, ids]).astype(np.float32), ("x", "y", "z", "intensity"),
                          Header(stamp=stamp(T0 + t), frame_id=frame))


@pytest.fixture
def pipeline():
    cfg = load_model_config("nuscenes_official")
    params = sweep_params.parse({f"sweeps.sensor_to_base.{k}": v for k, v in zip(
        sweep_params.SENSOR_TO_BASE_KEYS, S2B, strict=True)} | {"sweeps.pose_source": "odometry"})
    sweeps = build_sweep_input(params, model_num_sweeps=cfg.num_sweeps, point_features=cfg.point_features)
    node_params = NodeParams(intensity_scale=1.0, clip_intensity=False)
    frames = FrameInput(cfg.point_features, cfg.intensity_scale, node_params)
    return cfg, sweeps, frames, make_odometry_callback(sweeps.pose_source)


def test_odometry_and_clouds_give_the_compensated_model_input(pipeline):
    cfg, sweeps, frames, on_odom = pipeline
    assert isinstance(sweeps.pose_source, OdometryPoseSource) and sweeps.buffer.num_sweeps == 10
    world = world_points()
    out = None
    # Odometry at 50 Hz, clouds at 10 Hz half-way between odometry samples (interpolation is exercised).
    for k in range(60):
        on_odom(odometry(k * 0.02))
        t = k * 0.02 - 0.01
        if k % 5 == 2:
            msg = cloud_msg(world, t)
            out = sweeps.process(frames.convert(msg).points, msg.header)
    assert out is not None and out.shape == (10 * len(world), len(cfg.point_features))
    dt = out[:, cfg.point_features.index("dt")]
    assert sorted(set(np.round(dt, 3))) == pytest.approx([0.1 * i for i in range(10)])
    current = out[dt == 0]
    ref = current[np.argsort(current[:, 3]), :3]
    err = np.linalg.norm(out[:, :3] - ref[out[:, 3].astype(np.int64)], axis=1)
    assert err.max() < 0.01, err.max()
    status = sweeps.status()
    assert status["sweeps_held"] == 9 and status["resets"] == 0 and "odometry" in status["pose_source"]


def test_frames_the_detector_skips_are_kept_as_past_sweeps(pipeline):
    _cfg, sweeps, frames, on_odom = pipeline
    world = world_points()
    for k in range(30):
        on_odom(odometry(k * 0.02))
    for i, t in enumerate((0.05, 0.15, 0.25, 0.35)):
        msg = cloud_msg(world, t)
        points = frames.convert(msg).points
        out = sweeps.process(points, msg.header) if i == 3 else sweeps.add(points, msg.header)
    assert sweeps.buffer.last_info.dt_per_sweep == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)
    assert out.shape[0] == 4 * len(world)


def test_cloud_without_odometry_is_skipped_with_a_reason(pipeline):
    _cfg, sweeps, frames, on_odom = pipeline
    world = world_points()
    on_odom(odometry(0.0))
    msg = cloud_msg(world, 0.5)  # odometry stopped 0.5 s before the cloud
    assert sweeps.process(frames.convert(msg).points, msg.header) is None
    assert "older than the cloud" in sweeps.buffer.last_info.skipped


def test_cloud_frame_change_resets_the_history(pipeline):
    _cfg, sweeps, frames, on_odom = pipeline
    world = world_points()
    for k in range(10):
        on_odom(odometry(k * 0.02))
    for t, frame in ((0.05, "lidar_top"), (0.1, "lidar_top"), (0.15, "lidar_front")):
        msg = cloud_msg(world, t, frame)
        sweeps.process(frames.convert(msg).points, msg.header)
    assert sweeps.buffer.reset_counts["input_changed"] == 1 and sweeps.buffer.last_info.num_sweeps == 1


# --- parameters -----------------------------------------------------------------------------------------

def test_defaults_enable_sweeps_only_for_multi_sweep_models():
    p = SweepParams()
    assert p.resolve(10, ("x", "y", "z", "intensity", "dt")) == (True, 10)
    assert p.resolve(1, ("x", "y", "z", "intensity")) == (False, 1)
    assert build_sweep_input(p, model_num_sweeps=1, point_features=("x", "y", "z", "intensity")) is None
    assert SweepParams.from_values(sweep_params.defaults()) == p


def test_parse_coerces_and_reports_every_bad_value():
    p = sweep_params.parse({"sweeps.enabled": False, "sweeps.num_sweeps": 5.0, "sweeps.max_jump_m": 3,
                            "sweeps.ego_box.x_max": -1.0, "model": "tiny"})
    assert p.enabled == "false" and p.num_sweeps == 5 and p.max_jump_m == 3.0 and p.ego_box is None
    with pytest.raises(ParamError) as exc:
        sweep_params.parse({"sweeps.pose_source": "gps", "sweeps.max_time_gap_s": 0.0,
                            "sweeps.on_pose_failure": True, "sweeps.fixed_frame": ""})
    assert len(exc.value.errors) == 4
    assert "sweeps.pose_source" in str(exc.value) and "'auto', 'tf2', 'odometry'" in str(exc.value)


def test_forcing_sweeps_on_a_model_without_dt_is_an_error():
    with pytest.raises(ParamError, match="no 'dt' point feature"):
        SweepParams(enabled="true").resolve(1, ("x", "y", "z", "intensity"), "'tiny'")
    assert SweepParams(enabled="true", num_sweeps=3).resolve(1, ("x", "y", "z", "dt")) == (True, 3)


def test_the_parameter_file_lists_every_sweeps_parameter_with_a_valid_default():
    import yaml

    from fastpillars_ros.ros.node_params import coerce, default_yaml

    flat = flatten(yaml.safe_load(default_yaml())["/**"]["ros__parameters"]["sweeps"], "sweeps.")
    assert flat == {f"sweeps.{k}": v for k, v in sweep_params.defaults().items()}
    assert set(flat) >= {f"sweeps.sensor_to_base.{k}" for k in sweep_params.SENSOR_TO_BASE_KEYS}
    for name, value in flat.items():
        assert coerce(name, value) == value


def test_startup_notes_flag_configurations_unlike_training():
    assert sweep_params.startup_notes(SweepParams(), 10) == []
    assert "sparser" in sweep_params.startup_notes(SweepParams(enabled="false"), 10)[0]
    assert "differs" in sweep_params.startup_notes(SweepParams(num_sweeps=5), 10)[0]
    assert sweep_params.startup_notes(SweepParams(enabled="false"), 1) == []
