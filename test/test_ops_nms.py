"""Greedy NMS (BEV, 3D, circle, grouped) against plain greedy loops over shapely IoUs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_ops_iou import random_boxes, shapely_iou

from fastpillars_ros.ops import circle_nms, nms_3d, nms_bev, nms_grouped
from fastpillars_ros.ops.nms import suppress_contained


def detector_like(rng: np.random.Generator, n: int, objects: int, extent: float = 40.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clustered around ``objects`` positions with jitter, like raw detector output."""
    dims = np.array([[4.5, 1.9, 1.6], [0.8, 0.7, 1.7], [1.8, 0.7, 1.6]])[rng.choice(3, objects)]
    centres = rng.uniform(-extent, extent, (objects, 2))
    yaw = rng.uniform(-np.pi, np.pi, objects)
    owner = rng.integers(0, objects, n)
    boxes = np.column_stack((
        centres[owner] + rng.normal(0, 0.3, (n, 2)), rng.normal(-1, 0.2, n),
        dims[owner] * rng.normal(1, 0.08, (n, 3)), yaw[owner] + rng.normal(0, 0.1, n)))
    return boxes, rng.uniform(0, 1, n)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, three_d: bool = False,
                  pre_max: int | None = None, post_max: int | None = None) -> np.ndarray:
    """Textbook greedy NMS over an (N, N) shapely IoU matrix."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:pre_max]
    n = len(boxes)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    iou = shapely_iou(boxes[ii.ravel()], boxes[jj.ravel()], three_d).reshape(n, n)
    kept: list[int] = []
    for i in order:
        if all(iou[k, i] <= threshold for k in kept):
            kept.append(i)
    return np.array(kept[:post_max], dtype=np.int64)


def reference_circle(boxes: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(np.hypot(*(boxes[i, :2] - boxes[k, :2])) > radius for k in kept):
            kept.append(i)
    return np.array(kept, dtype=np.int64)


@pytest.mark.parametrize("threshold", [0.01, 0.1, 0.5, 0.8])
def test_nms_bev_keeps_what_greedy_shapely_nms_keeps(threshold: float) -> None:
    rng = np.random.default_rng(int(threshold * 100))
    boxes, scores = detector_like(rng, 300, 90)
    keep = nms_bev(boxes, scores, threshold)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, reference_nms(boxes, scores, threshold))


def test_nms_3d_keeps_what_greedy_shapely_3d_nms_keeps() -> None:
    rng = np.random.default_rng(11)
    boxes, scores = detector_like(rng, 250, 70)
    boxes[:, 2] += rng.choice([0.0, 1.0, 5.0], 250)  # some stacked / separated vertically
    for threshold in (0.1, 0.4):
        np.testing.assert_array_equal(nms_3d(boxes, scores, threshold),
                                      reference_nms(boxes, scores, threshold, three_d=True))


def test_nms_on_uniform_random_overlapping_boxes() -> None:
    rng = np.random.default_rng(12)
    boxes = random_boxes(rng, 200, spread=5.0)
    scores = rng.uniform(0, 1, 200)
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.2), reference_nms(boxes, scores, 0.2))


def test_pre_max_and_post_max_truncate_before_and_after_suppression() -> None:
    rng = np.random.default_rng(13)
    boxes, scores = detector_like(rng, 200, 60)
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.1, pre_max=50, post_max=20),
                                  reference_nms(boxes, scores, 0.1, pre_max=50, post_max=20))
    full = nms_bev(boxes, scores, 0.1)
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.1, post_max=7), full[:7])
    assert len(nms_bev(boxes, scores, 0.1, post_max=0)) == 0


def test_equal_scores_keep_the_lower_index_first() -> None:
    box = np.array([1.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.2])
    far = box.copy()
    far[0] += 10.0
    boxes = np.stack([box, far, box, far])
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.5), [0, 1])
    np.testing.assert_array_equal(nms_bev(boxes, np.zeros(4), 0.5), [0, 1])


def test_suppression_needs_iou_strictly_above_threshold() -> None:
    a = np.array([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0])
    b = a.copy()
    b[0] = 1.0  # IoU = 2 / 6 = 1/3
    boxes, scores = np.stack([a, b]), np.array([0.9, 0.8])
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.34), [0, 1])
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.33), [0])
    np.testing.assert_array_equal(nms_bev(boxes, scores, 0.0), [0])


def test_nan_scores_are_dropped_with_a_warning_naming_the_count() -> None:
    rng = np.random.default_rng(14)
    boxes, scores = detector_like(rng, 60, 20)
    scores[[3, 10, 11]] = np.nan
    with pytest.warns(RuntimeWarning, match="3 box") as record:
        keep = nms_bev(boxes, scores, 0.2)
    assert record[0].filename == __file__  # attributed to the caller
    assert not set(keep.tolist()) & {3, 10, 11}
    finite = np.flatnonzero(~np.isnan(scores))
    np.testing.assert_array_equal(keep, finite[reference_nms(boxes[finite], scores[finite], 0.2)])
    with pytest.warns(RuntimeWarning, match="3 box"):
        nms_grouped(boxes, scores, np.arange(60) % 3, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nms_bev(boxes[finite], scores[finite], 0.2)


@pytest.mark.parametrize("fn", [
    lambda b, s: nms_bev(b, s, 0.5), lambda b, s: nms_3d(b, s, 0.5), lambda b, s: circle_nms(b, s, 1.0),
    lambda b, s: nms_grouped(b, s, np.zeros(len(s), dtype=int), 0.5)])
def test_empty_input_gives_empty_int64(fn) -> None:
    out = fn(np.zeros((0, 7)), np.zeros(0))
    assert out.dtype == np.int64 and out.shape == (0,)
    with pytest.warns(RuntimeWarning):
        out = fn(np.zeros((2, 7)), np.array([np.nan, np.nan]))
    assert out.dtype == np.int64 and out.shape == (0,)


def test_circle_nms_suppresses_centres_within_radius() -> None:
    rng = np.random.default_rng(15)
    boxes, scores = detector_like(rng, 400, 100)
    for radius in (0.5, 1.0, 4.0):
        np.testing.assert_array_equal(circle_nms(boxes, scores, radius), reference_circle(boxes, scores, radius))
    two = np.zeros((2, 7))
    two[1, 0] = 1.0  # exactly at the radius: suppressed (<=)
    np.testing.assert_array_equal(circle_nms(two, np.array([0.1, 0.2]), 1.0), [1])
    np.testing.assert_array_equal(circle_nms(boxes, scores, 1.0, post_max=5),
                                  reference_circle(boxes, scores, 1.0)[:5])


def test_grouped_nms_never_suppresses_across_groups() -> None:
    rng = np.random.default_rng(16)
    boxes, scores = detector_like(rng, 90, 30)
    doubled = np.concatenate([boxes, boxes])  # every box has an identical twin in the other group
    groups = np.repeat([0, 7], 90)
    scores2 = np.concatenate([scores, scores * 0.5])
    for kind in ("bev", "3d", "circle"):
        keep = nms_grouped(doubled, scores2, groups, 0.3, kind=kind, min_radius=1.0)
        assert (np.diff(scores2[keep]) <= 0).all()
        kept_a, kept_b = keep[keep < 90], keep[keep >= 90] - 90
        np.testing.assert_array_equal(np.sort(kept_a), np.sort(kept_b))
        single = {"bev": nms_bev(boxes, scores, 0.3), "3d": nms_3d(boxes, scores, 0.3),
                  "circle": circle_nms(boxes, scores, 1.0)}[kind]
        np.testing.assert_array_equal(kept_a, single)


def test_grouped_nms_equals_per_group_reference_with_per_group_limits() -> None:
    rng = np.random.default_rng(17)
    boxes, scores = detector_like(rng, 240, 80)
    groups = rng.integers(0, 3, 240)
    scores[:10] = 0.5  # ties across and within groups
    keep = nms_grouped(boxes, scores, groups, 0.2, pre_max=40, post_max=15)
    expected = []
    for g in range(3):
        members = np.flatnonzero(groups == g)
        expected.extend(members[reference_nms(boxes[members], scores[members], 0.2, pre_max=40,
                                              post_max=15)])
    expected = np.array(expected)
    expected = expected[np.lexsort((expected, -scores[expected]))]
    np.testing.assert_array_equal(keep, expected)
    assert all((groups[keep] == g).sum() <= 15 for g in range(3))


def test_torch_in_gives_torch_int64_out() -> None:
    rng = np.random.default_rng(18)
    boxes, scores = detector_like(rng, 100, 30)
    tb, ts = torch.from_numpy(boxes).float(), torch.from_numpy(scores).float()
    keep = nms_bev(tb, ts, 0.2)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64
    np.testing.assert_array_equal(keep.numpy(), nms_bev(tb.numpy(), ts.numpy(), 0.2))
    assert isinstance(nms_grouped(tb, ts, torch.zeros(100, dtype=torch.long), 0.2), torch.Tensor)
    assert isinstance(circle_nms(tb, ts, 1.0), torch.Tensor)
    assert nms_3d(tb[:0], ts[:0], 0.2).dtype == torch.int64


def test_boxes_with_non_finite_geometry_suppress_nothing_and_are_kept_by_score() -> None:
    rng = np.random.default_rng(19)
    boxes, scores = detector_like(rng, 50, 15)
    bad = boxes.copy()
    bad[3, 0] = np.nan
    bad[7, 3] = np.inf
    keep = nms_bev(bad, scores, 0.2)
    assert {3, 7} <= set(keep.tolist())
    good = np.setdiff1d(np.arange(50), [3, 7])
    expected = np.union1d(good[nms_bev(boxes[good], scores[good], 0.2)], [3, 7])
    np.testing.assert_array_equal(np.sort(keep), expected)


def test_invalid_thresholds_are_rejected() -> None:
    boxes, scores = np.zeros((2, 7)), np.ones(2)
    with pytest.raises(ValueError):
        nms_bev(boxes, scores, -0.1)
    with pytest.raises(ValueError):
        nms_3d(boxes, scores, float("nan"))
    with pytest.raises(ValueError):
        circle_nms(boxes, scores, -1.0)
    with pytest.raises(ValueError):
        nms_grouped(boxes, scores, np.zeros(2), 0.5, kind="circle")
    with pytest.raises(ValueError):
        nms_grouped(boxes, scores, np.zeros(2), 0.5, kind="rotated")


def sorted_groups(rng: np.random.Generator, counts: list[int], p: int, extent: float = 15.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decoder's candidate block: (G, P, 7) boxes, (G, P) scores and valid flags; row g holds counts[g]
    detector-like boxes by descending score (ties kept in place), then garbage padding."""
    boxes = rng.uniform(-50, 50, (len(counts), p, 7)).astype(np.float32)  # padding: must never matter
    scores = np.full((len(counts), p), -np.inf, dtype=np.float32)
    valid = np.zeros((len(counts), p), dtype=bool)
    for g, n in enumerate(counts):
        b, s = detector_like(rng, n, max(n // 3, 1), extent=extent)
        s = np.round(s, 1)  # ties
        order = np.argsort(-s, kind="stable")
        boxes[g, :n], scores[g, :n], valid[g, :n] = b[order, :7].astype(np.float32), s[order], True
    return boxes, scores, valid


def reference_groups(boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray, threshold: float, kind: str,
                     pre_max: int | None = None, post_max: int | None = None) -> np.ndarray:
    """Keep flags from the CPU path the Detector uses: nms_grouped over the valid rows, tasks as groups."""
    g, r = np.nonzero(valid)
    flat = valid.reshape(-1).nonzero()[0]
    keep = nms_grouped(boxes[g, r].astype(np.float64), scores[g, r].astype(np.float64), g, threshold, kind=kind,
                       pre_max=pre_max, post_max=post_max, min_radius=threshold if kind == "circle" else None)
    flags = np.zeros(valid.size, dtype=bool)
    flags[flat[keep]] = True
    return flags.reshape(valid.shape)


def _box(x: float, y: float, length: float, width: float, yaw: float = 0.0) -> list[float]:
    return [x, y, -1.0, length, width, 1.6, yaw]


CAR, PEDESTRIAN, CYCLIST = 0, 1, 2


def test_a_pedestrian_mostly_inside_a_stronger_car_is_dropped() -> None:
    boxes = np.array([_box(0, 0, 4.5, 1.9), _box(1.5, 0.5, 0.8, 0.6)])  # the pedestrian wholly inside
    assert suppress_contained(boxes, [0.7, 0.5], [CAR, PEDESTRIAN], 0.5).tolist() == [0]


def test_a_cyclist_beside_a_car_stays_when_less_than_the_fraction_lies_inside() -> None:
    # A 1.8 m x 0.6 m cyclist along the car's side (y 0.7..1.3, the car's side at 0.95): 42 % of it inside
    boxes = np.array([_box(0, 0, 4.5, 1.9), _box(0, 1.0, 1.8, 0.6)])
    assert suppress_contained(boxes, [0.7, 0.5], [CAR, CYCLIST], 0.5).tolist() == [0, 1]


def test_a_car_is_never_dropped_for_a_stronger_smaller_box_inside_it() -> None:
    # A false cyclist at a true car's end, scored higher than the car (View-of-Delft 01047)
    boxes = np.array([_box(8.4, -4.1, 5.6, 2.1), _box(6.2, -3.6, 1.4, 0.7)])
    assert suppress_contained(boxes, [0.29, 0.33], [CAR, CYCLIST], 0.5).tolist() == [0, 1]


def test_boxes_of_one_class_never_suppress_each_other_by_containment() -> None:
    boxes = np.array([_box(0, 0, 4.5, 1.9), _box(0.2, 0, 4.0, 1.8)])
    assert suppress_contained(boxes, [0.7, 0.6], [CAR, CAR], 0.5).tolist() == [0, 1]


def test_a_suppressed_box_suppresses_nothing() -> None:
    # car (x up to 2.25) > pedestrian 78 % inside it (x 1.55..2.45) > cyclist 83 % inside the pedestrian but 17 %
    # inside the car (x 2.2..2.5): the pedestrian goes first, so the cyclist stays
    boxes = np.array([_box(0, 0, 4.5, 1.9), _box(2.0, 0, 0.9, 0.7), _box(2.35, 0, 0.3, 0.3)])
    keep = suppress_contained(boxes, [0.9, 0.8, 0.7], [CAR, PEDESTRIAN, CYCLIST], 0.5)
    assert keep.tolist() == [0, 2]


def test_containment_matches_a_greedy_loop_over_shapely_areas() -> None:
    from shapely.geometry import Polygon

    def footprint(b: np.ndarray) -> Polygon:
        c, s = np.cos(b[6]), np.sin(b[6])
        corners = [(sx * b[3] / 2, sy * b[4] / 2) for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
        return Polygon([(b[0] + c * u - s * v, b[1] + s * u + c * v) for u, v in corners])

    rng = np.random.default_rng(3)
    boxes, scores = detector_like(rng, 120, 15, extent=10.0)
    labels = rng.integers(0, 3, len(boxes))
    polys = [footprint(b) for b in boxes]
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: (-scores[k], k)):
        if not any(labels[k] != labels[i] and polys[i].area <= polys[k].area
                   and polys[i].intersection(polys[k]).area >= 0.5 * polys[i].area - 1e-9 for k in kept):
            kept.append(i)
    assert suppress_contained(boxes, scores, labels, 0.5).tolist() == sorted(kept)


def test_containment_takes_torch_and_rejects_a_bad_fraction() -> None:
    boxes = torch.tensor([_box(0, 0, 4.5, 1.9), _box(1.5, 0.5, 0.8, 0.6)])
    keep = suppress_contained(boxes, torch.tensor([0.7, 0.5]), torch.tensor([CAR, PEDESTRIAN]), 0.5)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64 and keep.tolist() == [0]
    with pytest.raises(ValueError, match="min_fraction"):
        suppress_contained(boxes, [0.7, 0.5], [CAR, PEDESTRIAN], 0.0)
