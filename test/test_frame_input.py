"""Frame input of the detector node (PointCloud2 -> model columns) and its diagnostics, without spinning."""

from __future__ import annotations

import numpy as np
import pytest
from real_data import real_file
from std_msgs.msg import Header

from fastpillars_ros.pointcloud import DRIVER_LAYOUTS, FLOAT32, FLOAT64, INT16, UINT8, even_indices, read_points
from fastpillars_ros.ros.cloud_messages import make_cloud
from fastpillars_ros.ros.diagnostics import ERROR, OK, WARN, NodeStats, Throttle
from fastpillars_ros.ros.frame_input import FrameInput, FrameRejected
from fastpillars_ros.ros.node_params import NodeParams, parse

FEATURES = ["x", "y", "z", "intensity"]


@pytest.fixture(scope="module")
def kitti() -> np.ndarray:
    """A real KITTI scan: (N, 4) x, y, z, reflectance 0..1."""
    return read_points(real_file("kitti/training/velodyne/000000.bin"))


def cloud(points: np.ndarray, layout: str = "velodyne", intensity_scale: float = 1.0, frame: str = "velodyne",
          **kwargs):
    lay = DRIVER_LAYOUTS[layout]
    cols = {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2]}
    if "intensity" in lay.names:
        value = points[:, 3] * intensity_scale
        datatype = dict((n, d) for n, _o, d in lay.fields)["intensity"]
        cols["intensity"] = np.round(value).astype(np.uint8) if datatype == UINT8 else value
    return make_cloud(cols, lay.fields, lay.point_step, header=Header(frame_id=frame), **kwargs)


def converter(model_scale: float = 1.0, features=FEATURES, **params) -> FrameInput:
    p, _ = parse(params)
    return FrameInput(features, model_scale, p)


# --- field mapping and scales on real scans in driver layouts ----------------------------------------------

@pytest.mark.parametrize("layout", ["velodyne", "ouster_original", "livox", "hesai", "robosense_xyzi",
                                    "robosense_xyzirtf", "ouster_xyzi"])
def test_float_intensity_layouts_map_exactly(kitti, layout):
    frame = converter().convert(cloud(kitti, layout))
    np.testing.assert_array_equal(frame.points, kitti)
    assert frame.points.dtype == np.float32 and frame.points.shape == kitti.shape
    assert frame.notes == []
    assert frame.intensity.auto and frame.intensity.multiplier == 1.0 and frame.intensity.warning is None
    assert frame.mapping == ", ".join(f"{f}<-{f} (FLOAT32)" for f in FEATURES)


def test_velodyne_0_255_intensity_is_scaled_into_a_0_1_model_automatically(kitti):
    frame = converter().convert(cloud(kitti, "velodyne", intensity_scale=255.0))
    assert frame.intensity.input_range == 255.0
    np.testing.assert_allclose(frame.points[:, 3], kitti[:, 3], atol=1e-5)


def test_nebula_uint8_intensity_maps_to_the_model_scale(kitti):
    msg = cloud(kitti, "nebula", intensity_scale=255.0)
    frame = converter().convert(msg)
    assert "intensity<-intensity (UINT8)" in frame.mapping
    assert frame.intensity.datatype == "UINT8" and frame.intensity.multiplier == pytest.approx(1 / 255)
    np.testing.assert_allclose(frame.points[:, 3], kitti[:, 3], atol=0.5 / 255 + 1e-6)
    # A 0..255 model gets the raw values.
    frame = converter(model_scale=255.0).convert(msg)
    np.testing.assert_array_equal(frame.points[:, 3], np.round(kitti[:, 3] * 255))


def test_a_0_1_cloud_into_a_0_255_model_is_scaled_up(kitti):
    frame = converter(model_scale=255.0).convert(cloud(kitti))
    np.testing.assert_allclose(frame.points[:, 3], kitti[:, 3] * 255.0, rtol=1e-6)


def test_fixed_intensity_scale_is_applied_and_clipped(kitti):
    frame = converter(intensity_scale=1 / 255).convert(cloud(kitti, intensity_scale=255.0))
    assert not frame.intensity.auto
    np.testing.assert_allclose(frame.points[:, 3], kitti[:, 3], atol=1e-5)
    # Clipping to the model's scale: values x2 exceed 1.
    frame = converter(intensity_scale=2.0).convert(cloud(kitti))
    assert frame.points[:, 3].max() == 1.0
    frame = converter(intensity_scale=2.0, clip_intensity=False).convert(cloud(kitti))
    assert frame.points[:, 3].max() == pytest.approx(2 * kitti[:, 3].max())


def test_wrong_fixed_scale_warns_that_the_cloud_looks_like_0_255(kitti):
    frame = converter(intensity_scale=1.0).convert(cloud(kitti, intensity_scale=255.0))
    warning = frame.intensity.warning
    assert warning and "looks like 0..255" in warning and "expects 0..1" in warning and "intensity_scale" in warning
    assert ("intensity_range", warning) in frame.notes
    frame = converter(model_scale=255.0, intensity_scale=1.0).convert(cloud(kitti))
    assert "looks like 0..1" in frame.intensity.warning


def test_all_zero_intensity_warns(kitti):
    pts = kitti.copy()
    pts[:, 3] = 0
    frame = converter().convert(cloud(pts))
    assert "every intensity" in frame.intensity.warning


def test_auto_scale_never_shrinks_on_a_dark_frame(kitti):
    fi = converter()
    fi.convert(cloud(kitti, intensity_scale=255.0))
    dark = kitti.copy()
    dark[:, 3] *= 0.002  # p99 well below 1 now, in a 0..255 cloud
    frame = fi.convert(cloud(dark, intensity_scale=255.0))
    assert frame.intensity.input_range == 255.0


def test_missing_intensity_is_filled_with_a_note_or_rejected(kitti):
    msg = cloud(kitti, "ouster_xyz")
    frame = converter(**{"fill.intensity": 0.25}).convert(msg)
    np.testing.assert_array_equal(frame.points[:, :3], kitti[:, :3])
    assert (frame.points[:, 3] == 0.25).all()
    assert [k for k, _ in frame.notes] == ["filled_field"]
    assert "fill.intensity = 0.25" in frame.notes[0][1] and "fields:" in frame.notes[0][1]
    with pytest.raises(FrameRejected) as info:
        converter(missing_field="error").convert(msg)
    assert info.value.kind == "missing_field" and "missing_field" in info.value.message
    # An explicitly empty mapping fills silently.
    assert converter(**{"fields.intensity": ""}).convert(msg).notes == []


def test_candidate_field_names_pick_the_first_present(kitti):
    lay = DRIVER_LAYOUTS["ouster_native_legacy"]
    msg = make_cloud({"x": kitti[:, 0], "y": kitti[:, 1], "z": kitti[:, 2],
                      "reflectivity": np.round(kitti[:, 3] * 255).astype(np.uint8)}, lay.fields, lay.point_step)
    frame = converter(**{"fields.intensity": "intensity,reflectivity"}).convert(msg)
    assert "intensity<-'reflectivity' (UINT8)" in frame.mapping
    np.testing.assert_allclose(frame.points[:, 3], kitti[:, 3], atol=0.5 / 255 + 1e-6)


def test_renamed_coordinates_and_a_dt_feature(kitti):
    layout = [("px", 0, FLOAT32), ("py", 4, FLOAT32), ("pz", 8, FLOAT32), ("time", 12, FLOAT32)]
    n = len(kitti)
    msg = make_cloud({"px": kitti[:, 0], "py": kitti[:, 1], "pz": kitti[:, 2], "time": np.full(n, 0.05)}, layout, 16)
    fi = converter(features=["x", "y", "z", "intensity", "dt"],
                   **{"fields.x": "px", "fields.y": "py", "fields.z": "pz", "fields.dt": "time"})
    frame = fi.convert(msg)
    np.testing.assert_array_equal(frame.points[:, :3], kitti[:, :3])
    assert (frame.points[:, 4] == np.float32(0.05)).all() and (frame.points[:, 3] == 0).all()


def test_organized_cloud_with_nan_points_drops_them(kitti):
    pts = kitti[:1000].copy()
    pts[::7, 0] = np.nan
    frame = converter().convert(cloud(pts, "ouster_original", height=10))
    assert frame.num_input == 1000 and frame.num_valid == 1000 - len(range(0, 1000, 7))
    assert np.isfinite(frame.points).all()


def test_non_finite_intensity_is_replaced_by_the_fill_value(kitti):
    pts = kitti[:500].copy()
    pts[:10, 3] = np.nan
    frame = converter().convert(cloud(pts))
    assert np.isfinite(frame.points).all() and (frame.points[:10, 3] == 0).all()
    assert [k for k, _ in frame.notes] == ["nonfinite_features"]


def test_mapping_is_cached_per_layout_and_reported_on_change(kitti):
    fi = converter()
    assert fi.convert(cloud(kitti, "velodyne")).layout_changed
    assert not fi.convert(cloud(kitti, "velodyne")).layout_changed
    assert fi.convert(cloud(kitti, "nebula", intensity_scale=255.0)).layout_changed


# --- bad inputs ---------------------------------------------------------------------------------------------

def rejected(fi: FrameInput, msg) -> FrameRejected:
    with pytest.raises(FrameRejected) as info:
        fi.convert(msg)
    return info.value


def test_empty_cloud_is_rejected_as_empty():
    r = rejected(converter(), cloud(np.zeros((0, 4), np.float32)))
    assert r.kind == "empty" and "0 points" in r.message


def test_cloud_without_xyz_names_the_missing_field_and_the_present_ones(kitti):
    msg = make_cloud({"intensity": kitti[:, 3]}, [("intensity", 0, FLOAT32), ("ring", 4, 4)], 6)
    r = rejected(converter(), msg)
    assert r.kind == "missing_xyz" and "no field for x" in r.message and "['intensity', 'ring']" in r.message
    assert "fields.x" in r.message


def test_all_nan_cloud_is_rejected(kitti):
    pts = kitti[:2000].copy()
    pts[:, :3] = np.nan
    pts[::2, 1] = np.inf
    r = rejected(converter(), cloud(pts))
    assert r.kind == "no_valid_points" and "2000" in r.message


def test_float64_coordinates_are_converted_with_a_note(kitti):
    layout = [("x", 0, FLOAT64), ("y", 8, FLOAT64), ("z", 16, FLOAT64), ("intensity", 24, FLOAT32)]
    msg = make_cloud({"x": kitti[:, 0].astype(np.float64), "y": kitti[:, 1], "z": kitti[:, 2],
                      "intensity": kitti[:, 3]}, layout, 28)
    frame = converter().convert(msg)
    np.testing.assert_array_equal(frame.points, kitti)
    assert {k for k, _ in frame.notes} == {"xyz_float64"}


def test_integer_coordinates_are_rejected_with_the_datatype(kitti):
    layout = [("x", 0, INT16), ("y", 2, INT16), ("z", 4, INT16), ("intensity", 8, FLOAT32)]
    pts = np.round(kitti[:100]).astype(np.int16)
    msg = make_cloud({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": kitti[:100, 3]}, layout, 12)
    r = rejected(converter(), msg)
    assert r.kind == "xyz_type" and "INT16" in r.message and "FLOAT32" in r.message


def test_truncated_data_is_rejected(kitti):
    msg = cloud(kitti[:1000])
    msg.data = msg.data[: len(msg.data) // 2]
    r = rejected(converter(), msg)
    assert r.kind == "bad_layout" and "truncated" in r.message


def test_point_step_smaller_than_the_fields_is_rejected(kitti):
    msg = cloud(kitti[:1000])
    msg.point_step = 8
    r = rejected(converter(), msg)
    assert r.kind == "bad_layout" and "past point_step 8" in r.message


def test_five_million_points_are_capped_deterministically(kitti):
    rng = np.random.default_rng(1)
    n = 5_000_000
    pts = kitti[rng.integers(0, len(kitti), n)]
    msg = make_cloud({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3]},
                     DRIVER_LAYOUTS["robosense_xyzi"].fields, 16)
    fi = converter(max_points=300_000)
    a = fi.convert(msg)
    b = fi.convert(msg)
    assert a.points.shape == (300_000, 4) and a.num_valid == n
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.points, pts[even_indices(n, 300_000)])
    assert [k for k, _ in a.notes] == ["capped"] and "5000000" in a.notes[0][1]


def test_big_endian_cloud_is_read_correctly_with_a_note(kitti):
    frame = converter().convert(cloud(kitti, "velodyne", is_bigendian=True))
    np.testing.assert_array_equal(frame.points, kitti)
    assert {k for k, _ in frame.notes} == {"big_endian"}


def test_wrong_frame_is_rejected_when_a_frame_is_expected(kitti):
    msg = cloud(kitti[:100], frame="camera")
    assert converter().convert(msg).points.shape[0] == 100
    r = rejected(converter(expected_frame_id="velodyne"), msg)
    assert r.kind == "wrong_frame" and "'camera'" in r.message and "'velodyne'" in r.message


def test_a_good_frame_after_bad_ones_is_processed_normally(kitti):
    fi = converter()
    bad = cloud(kitti[:1000])
    bad.point_step = 8
    for msg in (bad, cloud(np.zeros((0, 4), np.float32))):
        with pytest.raises(FrameRejected):
            fi.convert(msg)
    np.testing.assert_array_equal(fi.convert(cloud(kitti)).points, kitti)


def test_runtime_parameter_change_resets_the_mapping(kitti):
    fi = converter()
    fi.convert(cloud(kitti))
    p = NodeParams()
    p.expected_frame_id = "lidar"
    fi.update_params(p)
    assert rejected(fi, cloud(kitti)).kind == "wrong_frame"


# --- diagnostics bookkeeping ------------------------------------------------------------------------------

def test_throttle_passes_once_per_period_and_counts_the_rest():
    now = [0.0]
    t = Throttle(5.0, clock=lambda: now[0])
    assert t.ready("a") == (True, 0)
    assert t.ready("a") == (False, 0) and t.ready("a") == (False, 0)
    assert t.ready("b") == (True, 0)
    now[0] = 5.1
    assert t.ready("a") == (True, 2)


def test_stats_statuses_levels_and_latency_percentiles():
    now = [100.0]
    s = NodeStats(clock=lambda: now[0])
    statuses = s.statuses("n", {"backend": "torch"})
    assert [x.level for x in statuses] == [OK, OK] and "no cloud received yet" in statuses[0].message
    for ms in range(1, 101):
        s.latency({"total": float(ms)})
    s.count("received", 5)
    s.count("processed", 3)
    s.count("dropped_superseded", 2)
    s.reject("empty", "empty cloud")
    inp, inf = s.statuses("n", {"backend": "torch"})
    values = dict(inp.values)
    assert inp.level == WARN and "1 frame(s) rejected" in inp.message and values["rejected.empty"] == "1"
    assert values["dropped_frames"] == "2"
    ivalues = dict(inf.values)
    assert inf.level == WARN and "superseded" in inf.message and ivalues["backend"] == "torch"
    assert float(ivalues["latency_ms.total.p50"]) == pytest.approx(50.5, abs=0.1)
    assert float(ivalues["latency_ms.total.p95"]) == pytest.approx(95.05, abs=0.1)
    # Problems stay visible for hold_s, then the statuses return to OK; an error is ERROR while recent.
    inp, inf = s.statuses("n", {})
    assert inp.level == WARN and "within the last 5 s" in inp.message
    now[0] += 6
    inp, inf = s.statuses("n", {})
    assert inp.level == OK and inf.level == OK
    s.error("RuntimeError: boom")
    assert s.statuses("n", {})[1].level == ERROR
    now[0] += 60
    assert s.statuses("n", {})[1].level == OK
