"""read_points on the real scans in shared/data/real and on small synthetic PCD/bin files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from real_data import real_data_dir, real_file

from fastpillars_ros.pointcloud import (
    FLOAT32,
    FLOAT64,
    UINT8,
    UINT16,
    UINT32,
    cloud_to_array,
    lzf_decompress,
    read_pcd_structured,
    read_points,
)
from fastpillars_ros.ros.cloud_messages import make_cloud

# Real PCDs: (relative path, POINTS in the header, intensity (min, max) or None when the file has none).
# Intensity ranges are those documented in shared/data/real/README.md (fast_gicp 0..215) or read once
# from the files (the others are on the 0..255 scale the drivers use).
REAL_PCDS = [
    ("pcd_fast_gicp/251370668.pcd", 69_088, (0, 215)),
    ("pcd_sensorscalibration/p64.pcd", 77_547, (0, 254)),
    ("pcd_sensorscalibration/qt.pcd", 12_414, (0, 130)),
    ("pcd_nebula/velodyne_vlp16_1673400472138016708.pcd", 14_831, (0, 119)),
    ("pcd_nebula/velodyne_vlp32_1713492677464078412.pcd", 26_216, None),
    ("pcd_nebula/velodyne_vls128_1585897255376374245.pcd", 208_680, None),
    ("pcd_nebula/hesai_pandar64_1673403880898440686.pcd", 93_591, None),
    ("pcd_nebula/hesai_ot128_1730271167863837186.pcd", 72_240, None),
    ("pcd_nebula/hesai_xt32_1673400678101968885.pcd", 63_021, None),
    ("pcd_nebula/hesai_at128_1679653308704927652.pcd", 10_198, None),
    ("pcd_nebula/hesai_qt64_1673401196087570870.pcd", 34_158, None),
]
KITTI = [("kitti/training/velodyne/000000.bin", 115_384), ("kitti/training/velodyne/000001.bin", 120_268)]


def _header_points(path) -> int:
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"POINTS"):
                return int(line.split()[1])
    raise AssertionError(f"{path} has no POINTS line")


def test_every_real_pcd_is_covered():
    listed = {p for p, _n, _i in REAL_PCDS}
    on_disk = {str(p.relative_to(real_data_dir())) for p in real_data_dir().glob("pcd_*/*.pcd")}
    assert on_disk == listed


@pytest.mark.parametrize(("relative", "points"), KITTI)
def test_kitti_bin_loads_with_plausible_values(relative, points):
    got = read_points(real_file(relative))
    assert got.shape == (points, 4) and got.dtype == np.float32
    assert np.isfinite(got).all()
    r = np.linalg.norm(got[:, :2], axis=1)
    assert 1.0 < r.min() and r.max() < 120.0  # HDL-64E: ~1.4 m self-occlusion ring, ~80 m max
    assert -10.0 < got[:, 2].min() and got[:, 2].max() < 5.0
    # sensor ~1.73 m above the road: the lowest 10% of points lie on the ground around z = -1.7
    assert -2.2 < np.percentile(got[:, 2], 10) < -1.5
    assert 0.0 <= got[:, 3].min() and got[:, 3].max() <= 1.0  # reflectance 0..1


def test_kitti_reflectance_is_an_alias_of_intensity():
    path = real_file(KITTI[0][0])
    np.testing.assert_array_equal(read_points(path, ("reflectance",)), read_points(path, ("intensity",)))


@pytest.mark.parametrize(("relative", "points", "intensity"), REAL_PCDS, ids=[p for p, _n, _i in REAL_PCDS])
def test_real_pcd_loads_with_plausible_values(relative, points, intensity):
    path = real_file(relative)
    assert _header_points(path) == points
    every = read_points(path, ("x", "y", "z"), drop_invalid=False)
    invalid = int((~np.isfinite(every).all(axis=1)).sum())
    got = read_points(path, ("x", "y", "z", "intensity"), defaults={"intensity": -1.0})
    assert got.shape == (points - invalid, 4) and got.dtype == np.float32
    assert np.isfinite(got[:, :3]).all()
    assert np.abs(got[:, :3]).max() < 300.0  # longest is VLS-128 at ~239 m
    if intensity is None:
        assert (got[:, 3] == -1.0).all()
    else:
        assert (got[:, 3].min(), got[:, 3].max()) == intensity


def test_p64_binary_compressed_has_64_rings_and_timestamps():
    got = read_points(real_file("pcd_sensorscalibration/p64.pcd"), ("x", "y", "z", "intensity", "ring"))
    assert got.shape == (77_547, 5)
    assert np.unique(got[:, 4]).tolist() == list(range(64))
    assert np.linalg.norm(got[:, :3], axis=1).max() == pytest.approx(130.0, abs=1.0)
    ts = read_pcd_structured(real_file("pcd_sensorscalibration/p64.pcd"))["timestamp"]
    assert ts.dtype == np.float64 and 1.59e9 < ts.min() <= ts.max() < ts.min() + 1.0  # one sweep of epoch s


def test_qt64_xyz_only_raises_for_intensity_and_defaults_fill_it():
    path = real_file("pcd_nebula/hesai_qt64_1673401196087570870.pcd")
    with pytest.raises(ValueError, match=r"'intensity'.*\['x', 'y', 'z'\]"):
        read_points(path)
    got = read_points(path, defaults={"intensity": 0.0})
    assert got.shape == (34_158, 4) and (got[:, 3] == 0.0).all()


def test_vlp16_nebula_pcd_has_nebula_point_fields():
    arr = read_pcd_structured(real_file("pcd_nebula/velodyne_vlp16_1673400472138016708.pcd"))
    assert arr.dtype.names == ("x", "y", "z", "intensity", "return_type", "channel", "azimuth", "elevation",
                               "distance", "time_stamp")
    assert arr["intensity"].dtype == np.uint8 and arr["channel"].max() == 15


@pytest.mark.parametrize("relative", ["pcd_sensorscalibration/p64.pcd", "pcd_sensorscalibration/qt.pcd",
                                      "pcd_nebula/velodyne_vlp16_1673400472138016708.pcd"])
def test_pcd_through_pointcloud2_equals_read_points(relative):
    path = real_file(relative)
    arr = read_pcd_structured(path)
    codes = {"i1": 1, "u1": UINT8, "i2": 3, "u2": UINT16, "i4": 5, "u4": UINT32, "f4": FLOAT32, "f8": FLOAT64}
    layout = [(name, arr.dtype.fields[name][1], codes[arr.dtype.fields[name][0].str[1:]]) for name in arr.dtype.names]
    msg = make_cloud({name: arr[name] for name in arr.dtype.names}, layout, arr.dtype.itemsize)
    names = list(arr.dtype.names)
    np.testing.assert_array_equal(cloud_to_array(msg, names), read_points(path, names))


# ---- synthetic files ------------------------------------------------------------------------------------

def _lzf_literals(data: bytes) -> bytes:
    """Valid LZF made only of literal runs (<= 32 bytes each); enough to exercise the file path."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i:i + 32]
        out += bytes([len(chunk) - 1]) + chunk
    return bytes(out)


def _write_pcd(path, fields, sizes, types, counts, columns, n, kind):
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
            f"FIELDS {' '.join(fields)}\nSIZE {' '.join(map(str, sizes))}\nTYPE {' '.join(types)}\n"
            f"COUNT {' '.join(map(str, counts))}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
            f"DATA {kind}\n").encode()
    if kind == "ascii":
        rows = np.concatenate([np.asarray(c, dtype=np.float64).reshape(n, -1) for c in columns], axis=1)
        body = "\n".join(" ".join(repr(float(v)) if not np.isnan(v) else "nan" for v in row) for row in rows).encode()
    elif kind == "binary":
        rows = [np.asarray(c).reshape(n, -1) for c in columns]
        body = b"".join(b"".join(r[i].tobytes() for r in rows) for i in range(n))
    else:
        flat = b"".join(np.asarray(c).tobytes() for c in columns)  # column-major
        comp = _lzf_literals(flat)
        body = np.array([len(comp), len(flat)], dtype="<u4").tobytes() + comp
    path.write_bytes(head + body)
    return path


def _columns(n=7):
    rng = np.random.default_rng(9)
    x = rng.uniform(-50, 50, n).astype(np.float32)
    x[3] = np.nan
    return [x, rng.uniform(-50, 50, n).astype(np.float32), rng.uniform(-2, 2, n).astype(np.float32),
            rng.integers(0, 255, n).astype(np.uint8), rng.integers(0, 63, n).astype(np.uint16)]


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_synthetic_pcd_reads_the_same_in_every_data_kind(tmp_path, kind):
    cols = _columns()
    path = _write_pcd(tmp_path / "s.pcd", ["x", "y", "z", "intensity", "ring"], [4, 4, 4, 1, 2],
                      ["F", "F", "F", "U", "U"], [1] * 5, cols, 7, kind)
    got = read_points(path, ("x", "y", "z", "intensity", "ring"))
    expected = np.stack([c.astype(np.float32) for c in cols], axis=1)
    np.testing.assert_array_equal(got, np.delete(expected, 3, axis=0))
    np.testing.assert_array_equal(read_points(path, ("x", "ring"), drop_invalid=False), expected[:, [0, 4]])


def test_pcd_padding_fields_are_skipped_and_vector_fields_rejected_only_when_asked(tmp_path):
    n = 4
    cols = [np.arange(n, dtype=np.float32), np.zeros((n, 3), np.uint8), np.ones(n, np.float32),
            np.full(n, 2, np.float32), np.zeros((n, 2), np.uint8), np.arange(2 * n, dtype=np.float32)]
    path = _write_pcd(tmp_path / "p.pcd", ["x", "_", "y", "z", "_", "hist"], [4, 1, 4, 4, 1, 4],
                      ["F", "U", "F", "F", "U", "F"], [1, 3, 1, 1, 2, 2], cols, n, "binary")
    arr = read_pcd_structured(path)
    assert arr.dtype.names == ("x", "y", "z", "hist") and arr["hist"].shape == (n, 2)
    np.testing.assert_array_equal(read_points(path, ("x", "y", "z"))[:, 0], np.arange(n))
    with pytest.raises(ValueError, match="'hist' has count 2"):
        read_points(path, ("x", "hist"))


def test_truncated_binary_pcd_raises(tmp_path):
    path = _write_pcd(tmp_path / "t.pcd", ["x", "y", "z"], [4, 4, 4], ["F"] * 3, [1] * 3,
                      [np.zeros(5, np.float32)] * 3, 5, "binary")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"truncated: 59 bytes < 5 points \* 12 bytes = 60"):
        read_points(path, ("x",))


def test_unknown_pcd_data_kind_raises(tmp_path):
    path = _write_pcd(tmp_path / "u.pcd", ["x"], [4], ["F"], [1], [np.zeros(2, np.float32)], 2, "binary")
    path.write_bytes(path.read_bytes().replace(b"DATA binary", b"DATA binary_packed"))
    with pytest.raises(ValueError, match="DATA 'binary_packed'"):
        read_points(path, ("x",))


def test_nuscenes_pcd_bin_has_five_columns(tmp_path):
    pts = np.random.default_rng(2).uniform(0, 30, (6, 5)).astype(np.float32)
    path = tmp_path / "n008__LIDAR_TOP__1.pcd.bin"
    pts.tofile(path)
    np.testing.assert_array_equal(read_points(path, ("x", "y", "z", "intensity", "ring_index")), pts)


def test_bin_with_partial_point_raises(tmp_path):
    path = tmp_path / "bad.bin"
    np.zeros(7, np.float32).tofile(path)
    with pytest.raises(ValueError, match="28 bytes is not a whole number of 16-byte points"):
        read_points(path)


def test_lzf_decompress_handles_overlapping_back_references():
    # literal "abc", then a 9-byte reference 3 back (overlapping); literal "a", then 3 bytes 1 back.
    data = bytes([2]) + b"abc" + bytes([0xE0, 0, 2]) + bytes([0]) + b"x" + bytes([0x20, 0])
    assert lzf_decompress(data, 16) == b"abcabcabcabc" + b"xxxx"


def test_lzf_decompress_rejects_corrupt_input():
    with pytest.raises(ValueError, match="before the start"):
        lzf_decompress(bytes([0x20, 5]), 3)
    with pytest.raises(ValueError, match="decompressed to 3 bytes, header says 4"):
        lzf_decompress(bytes([2]) + b"abc", 4)


def test_readers_work_without_ros_message_packages():
    # pointcloud.py must stay importable below the node (offline eval, training) where ROS is absent.
    code = ("import sys; sys.modules['sensor_msgs'] = sys.modules['std_msgs'] = None\n"
            "from fastpillars_ros.pointcloud import read_points\n"
            f"print(read_points({str(real_file(KITTI[0][0]))!r}).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "(115384, 4)"
