"""Rotated BEV IoU and 3D IoU against an independent reference: shapely polygon intersection."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from fastpillars_ros.ops.iou import (
    bev_intersection_area_pairs,
    iou_3d,
    iou_3d_pairs,
    rotated_iou_bev,
    rotated_iou_bev_pairs,
)

TOL = 1e-5


def footprints(boxes: np.ndarray) -> np.ndarray:
    """Shapely polygons of the BEV footprints of (N, 7) boxes, corners built independently of iou.py."""
    boxes = np.asarray(boxes, dtype=np.float64)
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    u = np.array([0.5, 0.5, -0.5, -0.5]) * boxes[:, 3:4]
    v = np.array([-0.5, 0.5, 0.5, -0.5]) * boxes[:, 4:5]
    x = boxes[:, 0:1] + c * u - s * v
    y = boxes[:, 1:2] + s * u + c * v
    return shapely.polygons(np.stack((x, y), axis=-1))


def shapely_iou(a: np.ndarray, b: np.ndarray, three_d: bool = False) -> np.ndarray:
    pa, pb = footprints(a), footprints(b)
    # Snap-rounding overlay (grid_size): GEOS's floating overlay can return a wrong, degenerate result
    # (e.g. a MultiPoint) for a box flush inside another. A 1e-10 m grid costs < 1e-8 in IoU here.
    inter = shapely.area(shapely.intersection(pa, pb, grid_size=1e-10))
    area_a, area_b = shapely.area(pa), shapely.area(pb)
    if three_d:
        top = np.minimum(a[:, 2] + a[:, 5] / 2, b[:, 2] + b[:, 5] / 2)
        bottom = np.maximum(a[:, 2] - a[:, 5] / 2, b[:, 2] - b[:, 5] / 2)
        inter = inter * np.clip(top - bottom, 0.0, None)
        area_a, area_b = area_a * a[:, 5], area_b * b[:, 5]
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def random_boxes(rng: np.random.Generator, n: int, spread: float = 3.0, size=(0.1, 5.0),
                 yaw_range: float = np.pi) -> np.ndarray:
    return np.column_stack((
        rng.uniform(-spread, spread, (n, 2)), rng.uniform(-1, 1, n), rng.uniform(*size, (n, 3)),
        rng.uniform(-yaw_range, yaw_range, n)))


def shifted_along_heading(box: np.ndarray, forward, left, heading: np.ndarray | None = None) -> np.ndarray:
    """``box`` moved by ``forward`` / ``left`` metres along ``heading`` (default: its own yaw)."""
    out = box.copy()
    yaw = box[:, 6] if heading is None else heading
    c, s = np.cos(yaw), np.sin(yaw)
    out[:, 0] += c * forward - s * left
    out[:, 1] += s * forward + c * left
    return out


def adversarial_pairs(rng: np.random.Generator, n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named families of degenerate pairs, ``n`` pairs each."""
    a = random_boxes(rng, n)
    fam = {}
    fam["identical"] = (a, a.copy())
    # b beside a, sharing (part of) a's left side: touching edges, IoU exactly 0.
    b = a.copy()
    b[:, 3] = rng.uniform(0.1, 5, n)
    b[:, 4] = rng.uniform(0.1, 5, n)
    fam["touching_side"] = (a, shifted_along_heading(b, rng.uniform(-1, 1, n), (a[:, 4] + b[:, 4]) / 2))
    fam["touching_end"] = (a, shifted_along_heading(b, (a[:, 3] + b[:, 3]) / 2, rng.uniform(-1, 1, n)))
    # Turned by 90 degrees and touching: b's length runs across a's width direction.
    b90 = b.copy()
    b90[:, 6] += np.pi / 2
    fam["touching_perpendicular"] = (a, shifted_along_heading(b90, (a[:, 3] + b[:, 4]) / 2, 0.0,
                                                                      heading=a[:, 6]))
    # b strictly inside a whatever its yaw (its diagonal fits in a's smaller side).
    inner = a.copy()
    side = np.minimum(a[:, 3], a[:, 4])
    inner[:, 3] = side * rng.uniform(0.1, 0.6, n)
    inner[:, 4] = side * rng.uniform(0.1, 0.6, n)
    inner[:, 6] = rng.uniform(-np.pi, np.pi, n)
    fam["nested"] = (a, inner)
    # b inside a, same yaw, flush with a's front edge (shared edge, same direction).
    flush = a.copy()
    flush[:, 3] = a[:, 3] * rng.uniform(0.2, 1.0, n)
    flush[:, 4] = a[:, 4] * rng.uniform(0.2, 1.0, n)
    fam["nested_flush"] = (a, shifted_along_heading(flush, (a[:, 3] - flush[:, 3]) / 2, 0.0))
    # Same yaw (or a quarter turn) with random offsets: parallel edges everywhere.
    par = random_boxes(rng, n)
    par[:, 6] = a[:, 6] + rng.choice([0.0, np.pi / 2, np.pi, -np.pi / 2], n)
    fam["parallel"] = (a, par)
    zero = random_boxes(rng, n)
    which = rng.integers(0, 3, n)
    zero[which == 0, 3] = 0.0
    zero[which == 1, 4] = 0.0
    zero[which == 2, 3:5] = 0.0
    fam["zero_size"] = (a, zero)
    fam["both_zero_size"] = (zero, zero.copy())
    big = random_boxes(rng, n, yaw_range=1e4)
    fam["huge_yaw"] = (random_boxes(rng, n, yaw_range=1e4), big)
    fam["tiny"] = (random_boxes(rng, n, spread=2e-3, size=(1e-3, 5e-3)),
                   random_boxes(rng, n, spread=2e-3, size=(1e-3, 5e-3)))
    far = random_boxes(rng, n)
    far[:, :2] += 150.0
    near_far = far.copy()
    near_far[:, :2] += rng.uniform(-2, 2, (n, 2))
    near_far[:, 6] = rng.uniform(-np.pi, np.pi, n)
    fam["far_from_origin"] = (far, near_far)
    # Tiny relative rotations around the snapping threshold (1e-13 .. 1e-5 rad) with shared edges: the
    # edges cross at a shallow angle, so clipping parameters are ill-conditioned.
    rot = flush.copy()
    rot[:, 6] += rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-13, -5, n)
    fam["almost_parallel"] = (a, shifted_along_heading(rot, (a[:, 3] - rot[:, 3]) / 2, 0.0))
    return fam


def test_rotated_iou_matches_shapely_on_random_pairs() -> None:
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 8000), random_boxes(rng, 8000)
    got = rotated_iou_bev_pairs(a, b)
    np.testing.assert_allclose(got, shapely_iou(a, b), atol=TOL, rtol=0)
    assert (got > 0).mean() > 0.3  # the set really exercises overlaps


@pytest.mark.parametrize("family", [
    "identical", "touching_side", "touching_end", "touching_perpendicular", "nested", "nested_flush",
    "parallel", "zero_size", "both_zero_size", "huge_yaw", "tiny", "far_from_origin", "almost_parallel"])
def test_rotated_iou_matches_shapely_on_degenerate_pairs(family: str) -> None:
    a, b = adversarial_pairs(np.random.default_rng(1), 400)[family]
    got = rotated_iou_bev_pairs(a, b)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, shapely_iou(a, b), atol=TOL, rtol=0)
    np.testing.assert_allclose(rotated_iou_bev_pairs(b, a), got, atol=TOL, rtol=0)


def test_degenerate_families_have_their_exact_values() -> None:
    fam = adversarial_pairs(np.random.default_rng(2), 300)
    np.testing.assert_allclose(rotated_iou_bev_pairs(*fam["identical"]), 1.0, atol=1e-12)
    for touching in ("touching_side", "touching_end", "touching_perpendicular"):
        np.testing.assert_allclose(rotated_iou_bev_pairs(*fam[touching]), 0.0, atol=1e-9)
    a, inner = fam["nested"]
    expected = inner[:, 3] * inner[:, 4] / (a[:, 3] * a[:, 4])
    np.testing.assert_allclose(rotated_iou_bev_pairs(a, inner), expected, atol=1e-12)
    assert (rotated_iou_bev_pairs(*fam["zero_size"]) == 0).all()
    assert (rotated_iou_bev_pairs(*fam["both_zero_size"]) == 0).all()


def test_intersection_area_of_yaw_shifted_by_full_turns_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 500), random_boxes(rng, 500)
    b2 = b.copy()
    b2[:, 6] += 2 * np.pi * rng.integers(-1000, 1000, 500)
    np.testing.assert_allclose(bev_intersection_area_pairs(a, b2), bev_intersection_area_pairs(a, b),
                               atol=1e-9)


def test_iou_matrix_equals_pairwise_values_and_is_symmetric() -> None:
    rng = np.random.default_rng(4)
    a, b = random_boxes(rng, 60, spread=6), random_boxes(rng, 50, spread=6)
    m = rotated_iou_bev(a, b)
    assert m.shape == (60, 50) and m.dtype == np.float64
    ii, jj = np.meshgrid(np.arange(60), np.arange(50), indexing="ij")
    np.testing.assert_allclose(m.ravel(), shapely_iou(a[ii.ravel()], b[jj.ravel()]), atol=TOL)
    np.testing.assert_allclose(rotated_iou_bev(b, a), m.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(rotated_iou_bev(a, a)), 1.0, atol=1e-12)


def test_iou_3d_matches_shapely_area_times_vertical_overlap() -> None:
    rng = np.random.default_rng(5)
    a, b = random_boxes(rng, 5000), random_boxes(rng, 5000)
    fam = adversarial_pairs(rng, 200)
    a = np.concatenate([a] + [p[0] for p in fam.values()])
    b = np.concatenate([b] + [p[1] for p in fam.values()])
    np.testing.assert_allclose(iou_3d_pairs(a, b), shapely_iou(a, b, three_d=True), atol=TOL, rtol=0)
    m = iou_3d(a[:40], b[:30])
    ii, jj = np.meshgrid(np.arange(40), np.arange(30), indexing="ij")
    np.testing.assert_allclose(m.ravel(), shapely_iou(a[ii.ravel()], b[jj.ravel()], True), atol=TOL)


def test_iou_3d_is_zero_for_stacked_boxes_and_scales_with_height_overlap() -> None:
    box = np.array([[1.0, 2.0, 0.0, 4.0, 2.0, 2.0, 0.3]])
    above = box.copy()
    above[0, 2] = 2.0  # touching from above
    half = box.copy()
    half[0, 2] = 1.0  # half the height overlaps: I = V/2, U = 3V/2
    assert iou_3d(box, above)[0, 0] == 0.0
    assert iou_3d(box, half)[0, 0] == pytest.approx(1 / 3, abs=1e-12)
    assert rotated_iou_bev(box, half)[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_dtypes_shapes_and_extra_columns() -> None:
    rng = np.random.default_rng(6)
    a = random_boxes(rng, 7).astype(np.float32)
    b = np.column_stack((random_boxes(rng, 5), rng.normal(size=(5, 2))))  # velocity columns ignored
    assert rotated_iou_bev(a, a).dtype == np.float32
    assert rotated_iou_bev(a, b).dtype == np.float64
    np.testing.assert_allclose(rotated_iou_bev(a, b), rotated_iou_bev(a, b[:, :7]), atol=0)
    assert rotated_iou_bev(a, np.zeros((0, 7))).shape == (7, 0)
    assert iou_3d(np.zeros((0, 7)), b).shape == (0, 5)
    with pytest.raises(ValueError):
        rotated_iou_bev(np.zeros((3, 5)), b)


def test_torch_in_gives_torch_out_on_the_same_device_and_dtype() -> None:
    rng = np.random.default_rng(7)
    a, b = random_boxes(rng, 9), random_boxes(rng, 4)
    ta = torch.from_numpy(a).float()
    tb = torch.from_numpy(b).float()
    out = rotated_iou_bev(ta, tb)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device == ta.device
    np.testing.assert_allclose(out.numpy(), rotated_iou_bev(a.astype(np.float32), b.astype(np.float32)),
                               atol=1e-7)
    out3 = iou_3d(torch.from_numpy(a), torch.from_numpy(b))
    assert out3.dtype == torch.float64
    np.testing.assert_allclose(out3.numpy(), iou_3d(a, b), atol=0)
