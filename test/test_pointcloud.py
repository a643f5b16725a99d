"""PointCloud2 <-> numpy: every driver layout, datatype, byte order, organized clouds and bad messages.

Messages are plain message objects; no ROS node or DDS process is started.
"""

from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from fastpillars_ros.pointcloud import DRIVER_LAYOUTS, cloud_fields, cloud_to_array, field_layout, structured_view
from fastpillars_ros.ros.cloud_messages import PAD_BYTE, array_to_cloud, make_cloud

TYPECODES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
             PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}
F32 = PointField.FLOAT32
XYZI16 = [("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("intensity", 12, F32)]


def _values(datatype: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Known values of a field's own type, including the type's extremes for integers."""
    code = TYPECODES[datatype]
    if code[0] in "iu":
        info = np.iinfo(code)
        v = rng.integers(info.min, info.max, size=n, endpoint=True, dtype=code)
        v[:2] = info.min, info.max
        return v
    if code == "f8":
        return 1.7e9 + rng.uniform(0.0, 0.1, n)  # epoch-like timestamps, as Livox/Hesai/RoboSense send
    return rng.normal(0.0, 20.0, n).astype(np.float32)


def _xyzi(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(-80, 80, n).astype(np.float32), "y": rng.uniform(-80, 80, n).astype(np.float32),
            "z": rng.uniform(-3, 5, n).astype(np.float32), "intensity": rng.uniform(0, 255, n).astype(np.float32)}


def _header() -> Header:
    h = Header()
    h.frame_id = "lidar_top"
    h.stamp.sec, h.stamp.nanosec = 1_700_000_000, 123_456_789
    return h


@pytest.mark.parametrize("name", sorted(DRIVER_LAYOUTS))
def test_driver_layout_round_trips_every_field(name):
    layout = DRIVER_LAYOUTS[name]
    rng = np.random.default_rng(1)
    n = 37
    columns = {f: _values(dt, n, rng) for f, _off, dt in layout.fields}
    msg = make_cloud(columns, layout.fields, layout.point_step, header=_header())
    assert msg.point_step == layout.point_step and len(msg.data) == n * layout.point_step

    got = cloud_to_array(msg, layout.names)
    expected = np.stack([columns[f].astype(np.float32) for f in layout.names], axis=1)
    assert got.dtype == np.float32 and got.shape == (n, len(layout.fields))
    np.testing.assert_array_equal(got, expected)
    # every layout except plain xyz carries something beyond x, y, z (intensity, ring, time, ...)
    assert len(layout.names) > 3 or name == "ouster_xyz"


def test_driver_layouts_have_documented_point_steps_and_intensity_types():
    steps = {name: layout.point_step for name, layout in DRIVER_LAYOUTS.items()}
    assert steps["velodyne"] == 22 and steps["ouster_original"] == 48 and steps["livox"] == 26
    assert steps["hesai"] == 26 and steps["robosense_xyzirtf"] == 27 and steps["nebula"] == 32
    nebula = {f: (off, dt) for f, off, dt in DRIVER_LAYOUTS["nebula"].fields}
    assert nebula["intensity"] == (12, PointField.UINT8)
    assert "intensity" not in DRIVER_LAYOUTS["ouster_native_legacy"].names
    for layout in DRIVER_LAYOUTS.values():
        assert "@" in layout.source  # names the commit it was read from


def test_nebula_uint8_intensity_reads_as_float_0_to_255():
    layout = DRIVER_LAYOUTS["nebula"]
    cols = _xyzi(4)
    cols["intensity"] = np.array([0, 1, 128, 255], dtype=np.uint8)
    msg = make_cloud(cols, layout.fields, layout.point_step)
    np.testing.assert_array_equal(cloud_to_array(msg, ("intensity",))[:, 0], [0.0, 1.0, 128.0, 255.0])


def test_velodyne_unaligned_float32_time_reads_exactly():
    layout = DRIVER_LAYOUTS["velodyne"]
    cols = _xyzi(5)
    cols["ring"] = np.arange(5, dtype=np.uint16)
    cols["time"] = np.array([0.0, 1e-6, 0.05, 0.0999, -0.0], dtype=np.float32)
    msg = make_cloud(cols, layout.fields, 22)
    assert field_layout(msg)["time"] == (18, PointField.FLOAT32, 1)
    got = cloud_to_array(msg, ("time", "ring", "x"))
    np.testing.assert_array_equal(got[:, 0], cols["time"])
    np.testing.assert_array_equal(got[:, 1], cols["ring"])
    np.testing.assert_array_equal(got[:, 2], cols["x"])


def test_columns_come_in_the_order_asked():
    cols = _xyzi(10)
    msg = make_cloud(cols, XYZI16, 16)
    got = cloud_to_array(msg, ("intensity", "z", "x"))
    np.testing.assert_array_equal(got, np.stack([cols["intensity"], cols["z"], cols["x"]], axis=1))


@pytest.mark.parametrize("datatype", list(TYPECODES))
@pytest.mark.parametrize("offset", [12, 13])  # aligned and unaligned
def test_every_datatype_reads_extreme_values(datatype, offset):
    code = TYPECODES[datatype]
    if code[0] in "iu":
        info = np.iinfo(code)
        v = np.array([info.min, info.max, 0, 1, info.max // 3], dtype=code)
    else:
        info = np.finfo(code)
        v = np.array([info.max, -info.max, info.tiny, 0.0, -1.5], dtype=code)
    cols = _xyzi(len(v))
    cols["v"] = v
    layout = [("x", 0, F32), ("y", 4, F32), ("z", 8, F32), ("v", offset, datatype)]
    msg = make_cloud({k: cols[k] for k in ("x", "y", "z", "v")}, layout, offset + 8 + 3)
    got = cloud_to_array(msg, ("v",))[:, 0]
    with np.errstate(over="ignore"):
        expected = v.astype(np.float32)  # FLOAT64 max becomes inf, as numpy casts it
    np.testing.assert_array_equal(got, expected)
    if code[0] in "iu" and info.max < 2**24:
        np.testing.assert_array_equal(got.astype(np.int64), v.astype(np.int64))  # small ints are exact


def test_big_endian_message_equals_little_endian():
    rng = np.random.default_rng(3)
    n = 50
    layout = [("x", 0, F32), ("y", 4, F32), ("z", 8, F32)]
    layout += [(f"f{dt}", 12 + 8 * i, dt) for i, dt in enumerate(TYPECODES)]
    cols = {name: _values(dt, n, rng) for name, _o, dt in layout}
    names = [f[0] for f in layout]
    little = make_cloud(cols, layout, 12 + 8 * len(TYPECODES))
    big = make_cloud(cols, layout, 12 + 8 * len(TYPECODES), is_bigendian=True)
    assert bytes(little.data) != bytes(big.data)
    np.testing.assert_array_equal(cloud_to_array(big, names), cloud_to_array(little, names))


def _organized(height=3, width=5, pad=7):
    cols = _xyzi(height * width, seed=4)
    cols["x"][[1, 7]] = np.nan
    cols["z"][12] = np.inf
    layout = DRIVER_LAYOUTS["ouster_original"]
    msg = make_cloud(cols, layout.fields, 48, height=height, row_step=width * 48 + pad)
    return cols, msg


def test_organized_cloud_drops_nan_points_ignores_row_padding_row_major():
    cols, msg = _organized()
    assert msg.height == 3 and msg.width == 5 and msg.row_step == 5 * 48 + 7 and not msg.is_dense
    got = cloud_to_array(msg)
    keep = np.ones(15, bool)
    keep[[1, 7, 12]] = False
    expected = np.stack([cols[f] for f in ("x", "y", "z", "intensity")], axis=1)[keep]
    np.testing.assert_array_equal(got, expected)


def test_organized_cloud_keeps_invalid_points_without_drop_invalid():
    cols, msg = _organized()
    got = cloud_to_array(msg, drop_invalid=False)
    expected = np.stack([cols[f] for f in ("x", "y", "z", "intensity")], axis=1)
    assert got.shape == (15, 4)
    np.testing.assert_array_equal(got, expected)  # NaN == NaN positions for assert_array_equal


def test_validity_uses_xyz_even_when_not_requested():
    cols, msg = _organized()
    got = cloud_to_array(msg, ("intensity",))
    assert got.shape == (12, 1)
    np.testing.assert_array_equal(got[:, 0], np.delete(cols["intensity"], [1, 7, 12]))


def test_nan_intensity_is_not_a_reason_to_drop():
    cols = _xyzi(4)
    cols["intensity"][2] = np.nan
    got = cloud_to_array(make_cloud(cols, XYZI16, 16))
    assert got.shape == (4, 4) and np.isnan(got[2, 3])


def test_missing_field_raises_naming_it_and_the_existing_fields():
    msg = make_cloud(_xyzi(3), XYZI16, 16)
    with pytest.raises(ValueError, match=r"'ring'.*\['x', 'y', 'z', 'intensity'\]"):
        cloud_to_array(msg, ("x", "ring"))


def test_defaults_fill_a_missing_field():
    cols = _xyzi(3)
    msg = make_cloud({k: cols[k] for k in "xyz"}, XYZI16[:3], 12)
    got = cloud_to_array(msg, ("x", "intensity", "dt"), defaults={"intensity": 0.0, "dt": -2.5})
    np.testing.assert_array_equal(got[:, 0], cols["x"])
    np.testing.assert_array_equal(got[:, 1:], np.tile([0.0, -2.5], (3, 1)))


def test_defaults_do_not_override_a_present_field():
    cols = _xyzi(3)
    got = cloud_to_array(make_cloud(cols, XYZI16, 16), ("intensity",), defaults={"intensity": 7.0})
    np.testing.assert_array_equal(got[:, 0], cols["intensity"])


def _raw_cloud(fields, point_step, width, height=1, row_step=None, nbytes=None) -> PointCloud2:
    msg = PointCloud2()
    msg.height, msg.width, msg.point_step = height, width, point_step
    msg.row_step = width * point_step if row_step is None else row_step
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in fields]
    msg.data = array.array("B", bytes(msg.row_step * height if nbytes is None else nbytes))
    return msg


def test_truncated_data_raises_with_sizes():
    msg = _raw_cloud(XYZI16, 16, 10, height=2, nbytes=16 * 20 - 1)
    with pytest.raises(ValueError, match=r"truncated: len\(data\) = 319 < row_step 160 \* height 2 = 320"):
        cloud_to_array(msg)


def test_point_step_smaller_than_field_end_raises():
    msg = _raw_cloud(XYZI16, 14, 10)
    with pytest.raises(ValueError, match=r"'intensity'.*ends at byte 16, past point_step 14"):
        cloud_to_array(msg)


def test_row_step_smaller_than_width_times_point_step_raises():
    msg = _raw_cloud(XYZI16, 16, 10, row_step=150)
    with pytest.raises(ValueError, match=r"row_step 150 < width 10 \* point_step 16 = 160"):
        cloud_to_array(msg)


def test_unknown_datatype_raises():
    msg = _raw_cloud([*XYZI16[:3], ("intensity", 12, 9)], 16, 4)
    with pytest.raises(ValueError, match=r"'intensity' has unknown datatype code 9"):
        cloud_to_array(msg)


def test_duplicate_field_names_raise():
    msg = _raw_cloud([*XYZI16, ("x", 16, F32)], 20, 4)
    with pytest.raises(ValueError, match=r"duplicate field name 'x'"):
        cloud_to_array(msg)


def test_requesting_a_count_greater_than_one_field_raises_but_others_read():
    msg = make_cloud(_xyzi(6), XYZI16, 32)
    msg.fields.append(PointField(name="rgb3", offset=16, datatype=PointField.UINT8, count=3))
    assert structured_view(msg)["rgb3"].shape == (1, 6, 3)
    assert cloud_to_array(msg).shape == (6, 4)
    with pytest.raises(ValueError, match=r"'rgb3' has count 3 > 1"):
        cloud_to_array(msg, ("x", "rgb3"))


def test_count_zero_is_read_as_one():
    cols = _xyzi(5)
    msg = make_cloud(cols, XYZI16, 16)
    for f in msg.fields:
        f.count = 0
    assert field_layout(msg)["x"] == (0, F32, 1)
    np.testing.assert_array_equal(cloud_to_array(msg, ("x",))[:, 0], cols["x"])


@pytest.mark.parametrize("k", [1, 4])
def test_empty_cloud_gives_zero_by_k_float32(k):
    msg = _raw_cloud(XYZI16, 16, 0)
    got = cloud_to_array(msg, ("x", "y", "z", "intensity")[:k])
    assert got.shape == (0, k) and got.dtype == np.float32
    assert cloud_to_array(array_to_cloud(np.zeros((0, 3)), "xyz"), "xyz").shape == (0, 3)


def test_empty_cloud_still_reports_a_missing_field():
    with pytest.raises(ValueError, match="'ring'"):
        cloud_to_array(_raw_cloud(XYZI16, 16, 0), ("ring",))


def test_structured_view_shares_memory_with_msg_data():
    msg = make_cloud(_xyzi(100), DRIVER_LAYOUTS["velodyne"].fields, 22)
    view = structured_view(msg)
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    assert view.shape == (1, 100) and view.dtype.itemsize == 22
    assert np.shares_memory(view, raw)
    raw[0:4] = np.frombuffer(np.float32(42.0).tobytes(), np.uint8)  # a write to the message shows in the view
    assert view["x"][0, 0] == 42.0


def test_structured_view_of_organized_cloud_uses_row_step_strides():
    _cols, msg = _organized()
    view = structured_view(msg)
    assert view.shape == (3, 5) and view.strides == (5 * 48 + 7, 48)
    assert np.shares_memory(view, np.frombuffer(msg.data, dtype=np.uint8))


def test_result_is_independent_of_the_message():
    cols = _xyzi(8)
    msg = make_cloud(cols, XYZI16, 16)
    got = cloud_to_array(msg)
    assert not np.shares_memory(got, np.frombuffer(msg.data, dtype=np.uint8))
    got[:] = 0
    np.testing.assert_array_equal(cloud_to_array(msg)[:, 0], cols["x"])


def test_duck_typed_message_with_numpy_data_reads_like_a_pointcloud2():
    # rosbags and other deserializers give data as a numpy uint8 array instead of array.array.
    cols = _xyzi(9)
    msg = make_cloud(cols, XYZI16, 16)
    duck = SimpleNamespace(height=1, width=9, point_step=16, row_step=144, is_bigendian=False, fields=msg.fields,
                           data=np.frombuffer(bytes(msg.data), dtype=np.uint8))
    np.testing.assert_array_equal(cloud_to_array(duck), cloud_to_array(msg))


def test_array_to_cloud_round_trips_points_and_header():
    pts = np.random.default_rng(5).normal(size=(1000, 5)).astype(np.float32)
    names = ["x", "y", "z", "intensity", "dt"]
    header = _header()
    msg = array_to_cloud(pts, names, header)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 1000, 20, 20_000)
    assert msg.is_dense and not msg.is_bigendian and cloud_fields(msg) == names
    assert msg.header.frame_id == "lidar_top" and msg.header.stamp.nanosec == 123_456_789
    np.testing.assert_array_equal(cloud_to_array(msg, names), pts)


def test_array_to_cloud_is_not_dense_with_nan_points():
    pts = np.zeros((3, 3))
    pts[1, 2] = np.nan
    msg = array_to_cloud(pts, "xyz")
    assert not msg.is_dense
    assert cloud_to_array(msg, "xyz").shape == (2, 3)


def test_array_to_cloud_rejects_mismatched_field_count():
    with pytest.raises(ValueError, match=r"shape \(3, 3\) do not match 2 fields"):
        array_to_cloud(np.zeros((3, 3)), ["x", "y"])


def test_make_cloud_fills_gaps_and_row_padding_with_pad_byte():
    msg = make_cloud(_xyzi(2), DRIVER_LAYOUTS["ouster_xyzi"].fields, 32, row_step=70)
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    assert len(raw) == 70
    assert (raw[12:16] == PAD_BYTE).all() and (raw[20:32] == PAD_BYTE).all() and (raw[64:] == PAD_BYTE).all()


def test_make_cloud_writes_missing_layout_fields_as_zero():
    layout = DRIVER_LAYOUTS["ouster_original"]
    got = cloud_to_array(make_cloud(_xyzi(4), layout.fields, 48), ("t", "ring", "range"))
    assert (got == 0).all()


def test_make_cloud_rejects_integer_values_outside_the_field_type():
    cols = _xyzi(2)
    cols["intensity"] = np.array([0, 256])
    with pytest.raises(ValueError, match=r"'intensity' has values outside UINT8 \[0, 255\]"):
        make_cloud(cols, DRIVER_LAYOUTS["nebula"].fields, 32)


def test_make_cloud_rejects_columns_not_in_layout():
    with pytest.raises(ValueError, match="'ringg'"):
        make_cloud({**_xyzi(2), "ringg": np.zeros(2)}, XYZI16, 16)


def test_cloud_fields_and_field_layout_report_the_message_layout():
    msg = make_cloud(_xyzi(2), DRIVER_LAYOUTS["livox"].fields, 26)
    assert cloud_fields(msg) == ["x", "y", "z", "intensity", "tag", "line", "timestamp"]
    assert field_layout(msg)["timestamp"] == (18, PointField.FLOAT64, 1)


@pytest.mark.parametrize("name", ["velodyne", "robosense_xyzi", "livox", "ouster_original"])
def test_organized_padded_driver_cloud_matches_field_by_field_reads(name):
    # Exercises the fast paths (one opaque copy per point for x, y, z, intensity runs; word columns) on
    # clouds whose rows are padded, against a plain per-field read of the structured view.
    layout = DRIVER_LAYOUTS[name]
    rng = np.random.default_rng(6)
    cols = {f: _values(dt, 4 * 9, rng) for f, _o, dt in layout.fields}
    msg = make_cloud(cols, layout.fields, layout.point_step, height=4, row_step=9 * layout.point_step + 3)
    view = structured_view(msg)
    for fields in (("x", "y", "z", "intensity"), ("y", "z"), ("intensity", "x"), layout.names[-1:]):
        expected = np.stack([view[f].reshape(-1).astype(np.float32) for f in fields], axis=1)
        np.testing.assert_array_equal(cloud_to_array(msg, fields), expected)


def test_integer_xyz_is_read_and_never_dropped():
    layout = [("x", 0, PointField.INT16), ("y", 2, PointField.INT16), ("z", 4, PointField.INT16)]
    xyz = {"x": np.array([-32768, 0, 32767]), "y": np.array([1, 2, 3]), "z": np.array([0, 0, -1])}
    got = cloud_to_array(make_cloud(xyz, layout, 6), "xyz")
    np.testing.assert_array_equal(got, np.stack([xyz[a] for a in "xyz"], axis=1))
