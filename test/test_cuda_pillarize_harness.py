"""The kernels of fastpillars_ros/cuda/pillarize.cu, run on the CPU through the CUDA-on-CPU harness with
the same host sequence as the CuPy path (``run_pillarize`` / ``run_extract``), equal the CPU reference
element for element: field extraction from raw PointCloud2 buffers, pillar ids, compaction, decoration.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from cuda_harness import build, c_arg
from pillar_bounds import BOUNDS_PILLAR, BOUNDS_RANGE, bound_points, cells_of, expected_cells

from fastpillars_ros.ops import decorate, pillarize
from fastpillars_ros.ops.pillarize import grid_constants
from fastpillars_ros.ops.pillarize_cuda import (
    CloudLayout,
    extract_fields_reference,
    layout_descriptors,
    run_extract,
    run_pillarize,
)

pytestmark = pytest.mark.needs_tool("cxx")

ROOT = Path(__file__).resolve().parents[1]
PILLARIZE_CU = ROOT / "fastpillars_ros" / "cuda" / "pillarize.cu"
KITTI_BINS = sorted((ROOT.parent / "shared" / "data" / "real" / "kitti" / "training" / "velodyne").glob("*.bin"))
KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
KITTI_PILLAR = (0.16, 0.16)

# One extern "C" entry per kernel; the Python host sequence in pillarize_cuda.py calls them in order.
WRAPPER = r"""
#define FORWARD(name, ...)                                                  \
    try {                                                                   \
        launch(name, dim3(grid), dim3(block), __VA_ARGS__);                 \
        return 0;                                                           \
    } catch (const std::exception& e) {                                     \
        std::fprintf(stderr, "launch %s failed: %s\n", #name, e.what());    \
        return -1;                                                          \
    }

extern "C" int launch_extract_fields(unsigned grid, unsigned block, const unsigned char* buffer, long long n,
        long long width, long long row_step, long long point_step, const int* offsets, const int* datatypes,
        const float* scales, int n_cols, int big_endian, float* points, unsigned char* valid) {
    FORWARD(extract_fields, buffer, n, width, row_step, point_step, offsets, datatypes, scales, n_cols, big_endian,
            points, valid)
}
extern "C" int launch_pillar_cells(unsigned grid, unsigned block, const float* points, int n_cols, long long n,
        const unsigned char* valid, int use_valid, float x_min, float y_min, float px, float py, int nx, int ny,
        long long* cell, unsigned int* keep, unsigned int* occupancy) {
    FORWARD(pillar_cells, points, n_cols, n, valid, use_valid, x_min, y_min, px, py, nx, ny, cell, keep, occupancy)
}
extern "C" int launch_scan_blocks(unsigned grid, unsigned block, const unsigned int* in, unsigned int* out,
        unsigned int* block_sums, long long n, int items_per_thread) {
    FORWARD(scan_blocks, in, out, block_sums, n, items_per_thread)
}
extern "C" int launch_add_block_offsets(unsigned grid, unsigned block, unsigned int* data,
        const unsigned int* scanned, long long n, long long items_per_block) {
    FORWARD(add_block_offsets, data, scanned, n, items_per_block)
}
extern "C" int launch_pillar_coords(unsigned grid, unsigned block, const unsigned int* occupancy,
        const unsigned int* occ_scan, long long n_cells, int nx, int* coords) {
    FORWARD(pillar_coords, occupancy, occ_scan, n_cells, nx, coords)
}
extern "C" int launch_compact_points(unsigned grid, unsigned block, const long long* cell,
        const unsigned int* keep_scan, const unsigned int* occ_scan, long long n, long long* point_index,
        long long* point_pillar) {
    FORWARD(compact_points, cell, keep_scan, occ_scan, n, point_index, point_pillar)
}
extern "C" int launch_decorate_points(unsigned grid, unsigned block, const float* points, int n_cols,
        const long long* point_index, const long long* point_pillar, const int* coords, long long n_kept,
        float x_min, float y_min, float z_min, float px, float py, float z_centre, float* out) {
    FORWARD(decorate_points, points, n_cols, point_index, point_pillar, coords, n_kept, x_min, y_min, z_min, px, py,
            z_centre, out)
}
"""


class HarnessBackend:
    """The ``Backend`` of pillarize_cuda.run_pillarize, executing kernels with the CUDA-on-CPU harness."""

    xp = np

    def __init__(self, lib: ctypes.CDLL, block: int = 64, max_grid: int = 8, scan_items: int = 32) -> None:
        self.lib, self.block, self.max_grid, self.scan_items = lib, block, max_grid, scan_items
        self.launches: list[tuple[str, int, int]] = []

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        self.launches.append((kernel, grid, block))
        rc = getattr(self.lib, f"launch_{kernel}")(ctypes.c_uint(grid), ctypes.c_uint(block), *map(c_arg, args))
        assert rc == 0, f"kernel {kernel} failed in the harness"

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array)


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    return build(PILLARIZE_CU, WRAPPER)


@pytest.fixture
def backend(lib: ctypes.CDLL) -> HarnessBackend:
    return HarnessBackend(lib)


def assert_equal_to_reference(be: HarnessBackend, points: np.ndarray, pc_range=KITTI_RANGE,
                              pillar_size=KITTI_PILLAR, valid: np.ndarray | None = None) -> None:
    g = grid_constants(pc_range, pillar_size)
    got, feats = run_pillarize(be, np.ascontiguousarray(points), valid, g, with_features=True)
    keep_rows = points if valid is None else np.where(valid[:, None] != 0, points, np.nan)
    ref = pillarize(keep_rows, pc_range, pillar_size)
    assert got.grid_shape == ref.grid_shape
    for name in ("coords", "point_pillar", "point_index"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    ref_feats = decorate(points, ref, pc_range, pillar_size)
    assert feats.dtype == np.float32
    # Bit-for-bit, NaN payloads included (columns beyond x, y, z may hold anything).
    np.testing.assert_array_equal(feats.view(np.uint32), ref_feats.view(np.uint32))


def random_points(n: int, seed: int, n_cols: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (n, n_cols)).astype(np.float32)
    pts[:, 0] = rng.uniform(-5, 75, n)
    pts[:, 1] = rng.uniform(-45, 45, n)
    pts[:, 2] = rng.uniform(-5, 3, n)
    return pts


def adversarial_points(seed: int) -> np.ndarray:
    """Boundary values, points up to one pillar outside the lower bounds, float32 rounding at cell edges,
    non-finite coordinates."""
    rng = np.random.default_rng(seed)
    edges_x = np.float32(0.16) * np.arange(-2, 434, dtype=np.float32)
    edges_y = np.float32(-39.68) + np.float32(0.16) * np.arange(-2, 498, dtype=np.float32)
    xs = np.concatenate([edges_x, np.nextafter(edges_x, -np.inf), np.nextafter(edges_x, np.inf),
                         np.array([0, -0.0, -0.08, -0.16, -0.1599, 69.12, 69.119995, np.nan, np.inf, -np.inf, 1e30,
                                   -1e30, 3e9, -3e9], np.float32)])
    ys = np.concatenate([edges_y, np.nextafter(edges_y, -np.inf), np.nextafter(edges_y, np.inf),
                         np.array([-39.68, 39.68, -39.84, 39.679996, np.nan, np.inf], np.float32)])
    n = 6000
    pts = np.stack([rng.choice(xs, n), rng.choice(ys, n), rng.choice(
        np.array([0, -3, 1, 50, -50, np.nan, np.inf], np.float32), n, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05]),
        rng.uniform(0, 1, n).astype(np.float32)], axis=1)
    return pts.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_points_equal_cpu_reference(backend: HarnessBackend, seed: int) -> None:
    assert_equal_to_reference(backend, random_points(5000 + 777 * seed, seed))


def test_adversarial_boundary_points_equal_cpu_reference(backend: HarnessBackend) -> None:
    assert_equal_to_reference(backend, adversarial_points(2))


def test_each_bound_keeps_points_on_and_inside_it_and_drops_points_outside(backend: HarnessBackend) -> None:
    p, _ = run_pillarize(backend, bound_points(), None, grid_constants(BOUNDS_RANGE, BOUNDS_PILLAR),
                         with_features=False)
    assert cells_of(p.point_index, p.point_pillar, p.coords) == expected_cells()


def test_three_and_five_column_points_equal_cpu_reference(backend: HarnessBackend) -> None:
    assert_equal_to_reference(backend, random_points(3000, 3, n_cols=3))
    assert_equal_to_reference(backend, random_points(3000, 4, n_cols=5))


def test_empty_and_fully_dropped_inputs_give_empty_results(backend: HarnessBackend) -> None:
    g = grid_constants(KITTI_RANGE, KITTI_PILLAR)
    for pts in (np.zeros((0, 4), np.float32), np.full((100, 4), np.nan, np.float32)):
        p, feats = run_pillarize(backend, pts, None, g, with_features=True)
        assert p.coords.shape == (0, 2) and p.point_index.shape == (0,) and feats.shape == (0, 7)


def test_multi_level_scan_with_tiny_blocks_equals_cpu_reference(lib: ctypes.CDLL) -> None:
    # 32 threads x 2 items = 64 items per scan block: the 8192-cell grid (128 blocks -> 2 -> 1) and the
    # 5000 keep flags (79 -> 2 -> 1) both need three-level scans.
    be = HarnessBackend(lib, block=32, max_grid=3, scan_items=2)
    assert_equal_to_reference(be, random_points(5000, 5), pc_range=(0, -32, -3, 128, 32, 1), pillar_size=(1, 1))
    assert [k for k, _, _ in be.launches].count("scan_blocks") == 6
    assert [k for k, _, _ in be.launches].count("add_block_offsets") == 4


@pytest.mark.parametrize("path", KITTI_BINS, ids=[p.name for p in KITTI_BINS])
def test_real_kitti_scan_equals_cpu_reference(backend: HarnessBackend, path: Path) -> None:
    pts = np.fromfile(path, np.float32).reshape(-1, 4)
    backend.block, backend.max_grid, backend.scan_items = 128, 16, 64
    assert_equal_to_reference(backend, pts)


# ---------------------------------------------------------------------------------------------------
# Field extraction from raw PointCloud2 buffers

def _pack(fields: list[tuple[str, int, str]], point_step: int, values: dict[str, np.ndarray], big: bool = False,
          row_pad: int = 0, width: int | None = None) -> tuple[bytes, int, int]:
    """Pack columns into a buffer with numpy structured dtypes; returns (bytes, width, row_step)."""
    order = ">" if big else "<"
    dt = np.dtype({"names": [f[0] for f in fields], "formats": [order + f[2] for f in fields],
                   "offsets": [f[1] for f in fields], "itemsize": point_step})
    n = len(next(iter(values.values())))
    rec = np.zeros(n, dt)
    for name, _, _ in fields:
        rec[name] = values[name]
    width = n if width is None else width
    height = n // width
    rows = rec.tobytes()
    row_step = width * point_step + row_pad
    out = b"".join(rows[r * width * point_step:(r + 1) * width * point_step] + b"\xa5" * row_pad for r in range(height))
    return out, width, row_step


def _cloud_values(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = random_points(n, seed, n_cols=3).astype(np.float64)
    xyz[rng.random(n) < 0.02, 0] = np.nan
    xyz[rng.random(n) < 0.02, 2] = np.inf
    return {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": rng.uniform(0, 255, n),
            "ring": rng.integers(0, 128, n), "time": rng.uniform(0, 0.1, n), "i8": rng.integers(-128, 128, n),
            "u32": rng.integers(0, 2**32, n), "i32": rng.integers(-2**31, 2**31, n),
            "i16": rng.integers(-2**15, 2**15, n)}


LAYOUTS = {
    # name: (fields (name, offset, numpy type), point_step, output columns, scales, big-endian, organized width)
    "packed_xyzi_float32_16B": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4")], 16,
                                ["x", "y", "z", "intensity"], None, False, None),
    "velodyne_22B_unaligned_time": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"),
                                     ("ring", 16, "u2"), ("time", 18, "f4")], 22,
                                    ["x", "y", "z", "intensity", "time"], (1, 1, 1, 1 / 255, 1), False, None),
    "nebula_32B_uint8_intensity": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "u1"),
                                    ("ring", 14, "u2"), ("time", 16, "f4"), ("u32", 28, "u4")], 32,
                                   ["x", "y", "z", "intensity", "u32"], (1, 1, 1, 1 / 255, 1e-9), False, None),
    "float64_xyz_organized_padded_rows": ([("x", 0, "f8"), ("y", 8, "f8"), ("z", 16, "f8"), ("i8", 24, "i1"),
                                           ("i16", 26, "i2"), ("i32", 28, "i4")], 40,
                                          ["x", "y", "z", "i8", "i16", "i32"], None, False, 64),
    "big_endian_xyzi_time": ([("x", 0, "f4"), ("y", 4, "f4"), ("z", 8, "f4"), ("intensity", 12, "f4"),
                              ("ring", 16, "u2"), ("time", 18, "f8")], 26, ["x", "y", "z", "intensity", "time", "ring"],
                             None, True, 50),
}
_CODES = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_field_extraction_from_raw_buffer_equals_reference(backend: HarnessBackend, name: str) -> None:
    fields, step, columns, scales, big, width = LAYOUTS[name]
    n = 3200
    values = _cloud_values(n, seed=len(name))
    row_pad = 6 if width else 0
    buf, width, row_step = _pack(fields, step, values, big=big, row_pad=row_pad, width=width)
    by_name = {f[0]: f for f in fields}
    layout = CloudLayout(offsets=tuple(by_name[c][1] for c in columns),
                         datatypes=tuple(_CODES[by_name[c][2]] for c in columns), point_step=step, width=width,
                         height=n // width, row_step=row_step, is_bigendian=big, scales=scales)
    raw = np.frombuffer(buf, np.uint8).copy()
    points, valid = run_extract(backend, raw, layout, layout_descriptors(np, layout))
    ref_points, ref_valid = extract_fields_reference(raw, layout)
    np.testing.assert_array_equal(points.view(np.uint32), ref_points.view(np.uint32))
    np.testing.assert_array_equal(valid, ref_valid)
    # The reference itself reads what was packed (float32 rounding of each column, then the scale).
    expected_x = values["x"].astype(np.float32)
    np.testing.assert_array_equal(ref_points[:, 0], expected_x)
    assert 0 < ref_valid.sum() < n
    # And the whole buffer pipeline equals pillarize/decorate on the extracted points.
    assert_equal_to_reference(backend, points, valid=valid)


def test_real_kitti_scan_as_pointcloud2_buffer_equals_reference(backend: HarnessBackend) -> None:
    raw = np.fromfile(KITTI_BINS[0], np.uint8)  # KITTI .bin is exactly the packed 16-byte xyzi layout
    layout = CloudLayout(offsets=(0, 4, 8, 12), datatypes=(7, 7, 7, 7), point_step=16, width=raw.size // 16)
    backend.block, backend.max_grid, backend.scan_items = 128, 16, 64
    points, valid = run_extract(backend, raw, layout, layout_descriptors(np, layout))
    np.testing.assert_array_equal(points, raw.view(np.float32).reshape(-1, 4))
    assert valid.all()
    assert_equal_to_reference(backend, points, valid=valid)


def test_layout_validation_rejects_fields_outside_the_point() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        CloudLayout(offsets=(0, 4, 20), datatypes=(7, 7, 7), point_step=22, width=1).validate(22)
    with pytest.raises(ValueError, match="too small"):
        CloudLayout(offsets=(0, 4, 8), datatypes=(7, 7, 7), point_step=16, width=10).validate(100)
    with pytest.raises(ValueError, match="datatype"):
        CloudLayout(offsets=(0, 4, 8), datatypes=(7, 7, 9), point_step=16, width=1).validate(16)
