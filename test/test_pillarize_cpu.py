"""The compiled pillarize/decorate kernel (ops/pillarize_cpu.py) against the numpy reference, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pillar_bounds import BOUNDS_PILLAR, BOUNDS_RANGE, bound_points
from test_ops_pillarize import KITTI_BINS, KITTI_PILLAR, KITTI_RANGE, assert_same_pillars, random_points

from fastpillars_ros.ops import Pillars, decorate, pillarize, pillarize_cpu
from fastpillars_ros.ops.pillarize import _decorate_reference, _pillarize_reference, grid_constants

# The shipped default's grid (config/models/tiny360.yaml): all around the sensor
TINY360_RANGE, TINY360_PILLAR = (-40.8, -40.8, -3.0, 52.0, 40.8, 1.0), (0.4, 0.4)


@pytest.fixture
def fresh_kernel():
    pillarize_cpu.kernel.cache_clear()
    yield pillarize_cpu.kernel
    pillarize_cpu.kernel.cache_clear()


@pytest.fixture(autouse=True)
def _needs_kernel(request):
    if "fresh_kernel" not in request.fixturenames and pillarize_cpu.kernel() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")


def assert_kernel_equals_reference(pts: np.ndarray, pc_range, pillar_size) -> None:
    g = grid_constants(pc_range, pillar_size)
    fast, ref = pillarize(pts, pc_range, pillar_size), _pillarize_reference(pts, g)
    assert_same_pillars(fast, ref)
    fast_features = decorate(pts, fast, pc_range, pillar_size)
    ref_features = _decorate_reference(np.asarray(pts, np.float32), ref, g)
    assert fast_features.dtype == ref_features.dtype and fast_features.shape == ref_features.shape
    np.testing.assert_array_equal(fast_features.view(np.uint32), ref_features.view(np.uint32))  # bits, NaN too


@pytest.mark.parametrize("n_cols", [3, 4, 5])
def test_kernel_equals_the_reference_on_random_points_with_non_finite_values(n_cols):
    pts = np.concatenate([random_points(30_000, seed=n_cols)] + [np.ones((30_000, 1), np.float32)] * (n_cols - 4),
                         axis=1)[:, :n_cols]
    pts = np.ascontiguousarray(pts)
    pts[::97, 0] = np.nan
    pts[::89, 2] = np.inf
    pts[::83, 1] = -np.inf
    assert_kernel_equals_reference(pts, KITTI_RANGE, KITTI_PILLAR)


def test_kernel_equals_the_reference_on_every_bound():
    assert_kernel_equals_reference(bound_points(), BOUNDS_RANGE, BOUNDS_PILLAR)


def test_kernel_equals_the_reference_on_points_a_denormal_below_a_bound():
    pts = np.array([[-1e-45, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.5], [1e-45, -1e-45, 0.0, 0.5]], np.float32)
    assert_kernel_equals_reference(pts, (0.0, 0.0, -3.0, 4.0, 4.0, 1.0), (0.5, 0.5))
    assert pillarize(pts, (0.0, 0.0, -3.0, 4.0, 4.0, 1.0), (0.5, 0.5)).point_index.tolist() == [1]


@pytest.mark.parametrize("path", KITTI_BINS, ids=[p.name for p in KITTI_BINS])
@pytest.mark.parametrize("grid", ["kitti", "tiny360"])
def test_kernel_equals_the_reference_on_real_kitti_scans(path: Path, grid: str):
    pts = np.fromfile(path, np.float32).reshape(-1, 4)
    pc_range, pillar = (KITTI_RANGE, KITTI_PILLAR) if grid == "kitti" else (TINY360_RANGE, TINY360_PILLAR)
    assert_kernel_equals_reference(pts, pc_range, pillar)


def test_kernel_takes_a_column_slice_of_a_wider_array():
    wide = random_points(5000, seed=31).repeat(2, axis=1)  # (N, 8): the kernel gets a non-contiguous (N, 4) view
    assert_kernel_equals_reference(wide[:, ::2], KITTI_RANGE, KITTI_PILLAR)


def test_decorate_rejects_pillars_of_other_points_naming_the_fields():
    pts = random_points(2000, seed=32, margin=0.0)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    wrong = Pillars(p.coords[:3], p.point_pillar, p.point_index, p.grid_shape)  # ids beyond the 3 pillars
    with pytest.raises(ValueError, match="point_index or point_pillar out of range"):
        decorate(pts, wrong, KITTI_RANGE, KITTI_PILLAR)
    with pytest.raises(ValueError, match="point_index or point_pillar out of range"):
        decorate(pts[:10], p, KITTI_RANGE, KITTI_PILLAR)


def test_without_the_kernel_pillarize_runs_the_reference(fresh_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPILLARS_NATIVE", "0")
    assert fresh_kernel() is None
    pts = random_points(4000, seed=33)
    g = grid_constants(KITTI_RANGE, KITTI_PILLAR)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    assert_same_pillars(p, _pillarize_reference(pts, g))
    np.testing.assert_array_equal(decorate(pts, p, KITTI_RANGE, KITTI_PILLAR), _decorate_reference(pts, p, g))
