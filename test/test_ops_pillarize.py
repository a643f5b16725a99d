"""CPU reference of dynamic pillarization and decoration (fastpillars_ros.ops.pillarize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pillar_bounds import BOUNDS_PILLAR, BOUNDS_RANGE, bound_points, cells_of, expected_cells

from fastpillars_ros.ops import Pillars, decorate, pillarize
from fastpillars_ros.ops.pillarize import _decorate_torch, _pillarize_torch, grid_constants

KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
KITTI_PILLAR = (0.16, 0.16)
KITTI_BINS = sorted((Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "kitti"
                     / "training" / "velodyne").glob("*.bin"))
f32 = np.float32


def reference_cell(x: float, y: float, z: float, g) -> tuple[int, int] | None:
    """Scalar float32 restatement of the rule: (row, col), or None when the point is dropped."""
    if not np.isfinite(z):
        return None
    qx = (f32(x) - g.x_min) / g.px
    qy = (f32(y) - g.y_min) / g.py
    if not (0 <= qx < g.nx and 0 <= qy < g.ny):
        return None
    return int(np.floor(qy)), int(np.floor(qx))


def assert_same_pillars(a: Pillars, b: Pillars) -> None:
    assert a.grid_shape == b.grid_shape
    for name in ("coords", "point_pillar", "point_index"):
        x, y = getattr(a, name), getattr(b, name)
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        y = y.numpy() if isinstance(y, torch.Tensor) else y
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def random_points(n: int, seed: int, margin: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x0, y0, z0, x1, y1, z1 = KITTI_RANGE
    pts = np.stack([rng.uniform(x0 - margin, x1 + margin, n), rng.uniform(y0 - margin, y1 + margin, n),
                    rng.uniform(z0 - 2, z1 + 2, n), rng.uniform(0, 1, n)], axis=1)
    return pts.astype(np.float32)


def test_kitti_grid_is_432_columns_by_496_rows() -> None:
    p = pillarize(np.zeros((0, 4), np.float32), KITTI_RANGE, KITTI_PILLAR)
    assert p.grid_shape == (496, 432)


def test_every_kept_point_lands_in_the_pillar_given_by_float32_floor() -> None:
    pts = random_points(5000, seed=0)
    g = grid_constants(KITTI_RANGE, KITTI_PILLAR)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    expected = {i: reference_cell(*pts[i, :3], g) for i in range(len(pts))}
    kept = [i for i, c in expected.items() if c is not None]
    assert p.point_index.tolist() == kept
    got = [tuple(c) for c in p.coords[p.point_pillar].tolist()]
    assert got == [expected[i] for i in kept]


def test_outputs_have_documented_dtypes_and_shapes() -> None:
    p = pillarize(random_points(1000, seed=1), KITTI_RANGE, KITTI_PILLAR)
    assert p.coords.dtype == np.int32 and p.coords.shape == (p.num_pillars, 2)
    assert p.point_pillar.dtype == np.int64 and p.point_pillar.shape == (p.num_points,)
    assert p.point_index.dtype == np.int64 and p.point_index.shape == (p.num_points,)
    assert np.all(np.diff(p.point_index) > 0)


def test_pillar_ids_are_row_major_and_cover_every_occupied_pillar_once() -> None:
    p = pillarize(random_points(20000, seed=2), KITTI_RANGE, KITTI_PILLAR)
    flat = p.coords[:, 0].astype(np.int64) * p.grid_shape[1] + p.coords[:, 1]
    assert np.all(np.diff(flat) > 0)
    assert np.array_equal(np.unique(p.point_pillar), np.arange(p.num_pillars))


def test_pillar_ids_do_not_depend_on_point_order() -> None:
    pts = random_points(8000, seed=3)
    perm = np.random.default_rng(4).permutation(len(pts))
    a = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    b = pillarize(pts[perm], KITTI_RANGE, KITTI_PILLAR)
    np.testing.assert_array_equal(a.coords, b.coords)
    cell_a = dict(zip(a.point_index.tolist(), a.point_pillar.tolist(), strict=True))
    cell_b = {int(perm[i]): pp for i, pp in zip(b.point_index.tolist(), b.point_pillar.tolist(), strict=True)}
    assert cell_a == cell_b


BELOW, ABOVE = -np.inf, np.inf


def just(value: float, direction: float) -> float:
    """The float32 neighbour of ``value`` towards ``direction`` (one ulp inside or outside a bound)."""
    return float(np.nextafter(f32(value), f32(direction)))


@pytest.mark.parametrize(("x", "col"), [
    (0.0, 0),                        # x_min itself: inside ([x_min, x_max))
    (just(0.0, ABOVE), 0),           # just inside x_min
    (just(0.0, BELOW), None),        # just outside x_min: dropped, not put into column 0
    (-0.08, None),                   # half a pillar below x_min: dropped
    (0.08, 0),
    (0.16, 1),                       # exactly one pillar in
    (just(69.12, BELOW), 431),       # just inside x_max: last column
    (69.12, None),                   # x_max itself is outside
    (just(69.12, ABOVE), None),      # just outside x_max
    (1e30, None), (-1e30, None),
    (np.inf, None), (-np.inf, None), (np.nan, None),
])
def test_boundary_columns(x: float, col: int | None) -> None:
    pts = np.array([[x, 0.0, 0.0, 0.5]], np.float32)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    if col is None:
        assert p.num_points == 0 and p.num_pillars == 0
    else:
        assert p.num_points == 1 and p.coords.tolist() == [[248, col]]


@pytest.mark.parametrize(("y", "row"), [
    (-39.68, 0),                     # y_min itself
    (just(-39.68, ABOVE), 0),        # just inside y_min
    (just(-39.68, BELOW), None),     # just outside y_min
    (-39.70, None), (-39.85, None),
    (39.67, 495),
    (39.68 - 1e-4, 495),             # inside y_max (one ulp below rounds to qy == 496 in float32: the rule
                                     # is float32 maths; test/pillar_bounds.py checks one ulp exactly)
    (39.68, None),                   # y_max itself
    (just(39.68, ABOVE), None),      # just outside y_max
    (np.nan, None), (-np.inf, None)])
def test_boundary_rows(y: float, row: int | None) -> None:
    p = pillarize(np.array([[1.0, y, 0.0]], np.float32), KITTI_RANGE, KITTI_PILLAR)
    if row is None:
        assert p.num_points == 0
    else:
        assert p.coords[:, 0].tolist() == [row]


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_each_bound_keeps_points_on_and_inside_it_and_drops_points_outside(path: str) -> None:
    pts = bound_points()
    p = (pillarize(pts, BOUNDS_RANGE, BOUNDS_PILLAR) if path == "numpy"
         else _pillarize_torch(torch.from_numpy(pts), grid_constants(BOUNDS_RANGE, BOUNDS_PILLAR)))
    assert cells_of(p.point_index, p.point_pillar, p.coords) == expected_cells()


def test_z_is_not_cropped_but_non_finite_z_is_dropped() -> None:
    pts = np.array([[1, 1, -100], [1, 1, 100], [1, 1, np.nan], [1, 1, np.inf], [1, 1, -np.inf]], np.float32)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    assert p.point_index.tolist() == [0, 1]
    assert p.point_pillar.tolist() == [0, 0] and p.num_pillars == 1


@pytest.mark.parametrize("n_cols", [3, 4, 5])
def test_empty_and_fully_outside_inputs_give_empty_results(n_cols: int) -> None:
    for pts in (np.zeros((0, n_cols), np.float32), np.full((10, n_cols), -50, np.float32)):
        p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
        assert p.coords.shape == (0, 2) and p.point_pillar.shape == (0,) and p.point_index.shape == (0,)
        assert decorate(pts, p, KITTI_RANGE, KITTI_PILLAR).shape == (0, n_cols + 3)


def test_float64_input_is_pillarized_as_float32() -> None:
    pts = random_points(3000, seed=5)
    assert_same_pillars(pillarize(pts.astype(np.float64), KITTI_RANGE, KITTI_PILLAR),
                        pillarize(pts, KITTI_RANGE, KITTI_PILLAR))


def test_invalid_shapes_and_ranges_are_rejected() -> None:
    with pytest.raises(ValueError, match="N, C>=3"):
        pillarize(np.zeros((4, 2), np.float32), KITTI_RANGE, KITTI_PILLAR)
    with pytest.raises(ValueError, match="empty grid"):
        pillarize(np.zeros((4, 3), np.float32), (0, 0, 0, -1, 1, 1), KITTI_PILLAR)


def test_repeated_calls_reuse_scratch_without_leaking_state() -> None:
    a, b = random_points(4000, seed=6), random_points(9000, seed=7)
    ra = pillarize(a, KITTI_RANGE, KITTI_PILLAR)
    pillarize(b, KITTI_RANGE, KITTI_PILLAR)
    pillarize(b[:10], (-10, -10, -3, 10, 10, 1), (0.5, 0.5))
    assert_same_pillars(pillarize(a, KITTI_RANGE, KITTI_PILLAR), ra)


def test_pooled_outputs_are_never_overwritten_while_the_caller_holds_them() -> None:
    inputs = [random_points(3000 + 500 * i, seed=20 + i) for i in range(7)]
    expected = [pillarize(x, KITTI_RANGE, KITTI_PILLAR) for x in inputs]
    copies = [Pillars(p.coords.copy(), p.point_pillar.copy(), p.point_index.copy(), p.grid_shape) for p in expected]
    # Derived views and torch tensors keep the pooled buffers alive too.
    views = [p.point_pillar[::2] for p in expected]
    tensors = [torch.from_numpy(p.coords) for p in expected]
    del expected
    for x in inputs[::-1] * 2:
        pillarize(x, KITTI_RANGE, KITTI_PILLAR)
    for c, v, t in zip(copies, views, tensors, strict=True):
        np.testing.assert_array_equal(v, c.point_pillar[::2])
        np.testing.assert_array_equal(t.numpy(), c.coords)


def test_torch_cpu_and_pure_torch_paths_equal_numpy() -> None:
    pts = random_points(20000, seed=8)
    pts[::97, 0] = np.nan
    pts[::89, 2] = np.inf
    ref = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    out = pillarize(torch.from_numpy(pts), KITTI_RANGE, KITTI_PILLAR)
    assert isinstance(out.coords, torch.Tensor)
    assert_same_pillars(out, ref)
    # The pure-torch implementation used for CUDA tensors, run here on CPU tensors.
    assert_same_pillars(_pillarize_torch(torch.from_numpy(pts), grid_constants(KITTI_RANGE, KITTI_PILLAR)), ref)


def test_decoration_is_raw_columns_then_offsets_to_pillar_centre() -> None:
    pts = random_points(5000, seed=9, margin=0.0)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    feats = decorate(pts, p, KITTI_RANGE, KITTI_PILLAR)
    assert feats.dtype == np.float32 and feats.shape == (p.num_points, 7)
    np.testing.assert_array_equal(feats[:, :4], pts[p.point_index])
    rows, cols = p.coords[p.point_pillar].T
    x, y, z = pts[p.point_index, :3].astype(np.float64).T
    np.testing.assert_allclose(feats[:, 4], x - 0.0 - (cols + 0.5) * 0.16, atol=1e-5)
    np.testing.assert_allclose(feats[:, 5], y + 39.68 - (rows + 0.5) * 0.16, atol=1e-5)
    np.testing.assert_allclose(feats[:, 6], z + 3.0 - 2.0, atol=1e-5)
    assert np.abs(feats[:, 4:6]).max() <= 0.08 + 1e-5


def test_decoration_torch_paths_equal_numpy_bit_for_bit() -> None:
    pts = random_points(20000, seed=10)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    ref = decorate(pts, p, KITTI_RANGE, KITTI_PILLAR)
    pt = pillarize(torch.from_numpy(pts), KITTI_RANGE, KITTI_PILLAR)
    np.testing.assert_array_equal(decorate(torch.from_numpy(pts), pt, KITTI_RANGE, KITTI_PILLAR).numpy(), ref)
    out = _decorate_torch(torch.from_numpy(pts), pt, grid_constants(KITTI_RANGE, KITTI_PILLAR))
    np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("path", KITTI_BINS, ids=[p.name for p in KITTI_BINS])
def test_real_kitti_scan_points_lie_in_their_pillars(path: Path) -> None:
    pts = np.fromfile(path, np.float32).reshape(-1, 4)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    assert 5_000 < p.num_pillars < p.num_points < len(pts)
    feats = decorate(pts, p, KITTI_RANGE, KITTI_PILLAR)
    # Every kept point lies in the range and within half a pillar of its centre (float32 rounding aside).
    kept = pts[p.point_index]
    assert (kept[:, 0] >= f32(0)).all() and (kept[:, 1] >= f32(-39.68)).all()
    assert np.abs(feats[:, 4:6]).max() <= 0.08 + 1e-5


def test_real_kitti_scans_exist() -> None:
    assert len(KITTI_BINS) >= 2, "shared/data/real/kitti/training/velodyne/*.bin missing"
