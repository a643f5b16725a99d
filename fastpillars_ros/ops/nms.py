"""Greedy non-maximum suppression (NMS) of rotated 3D boxes on the CPU (the reference for the GPU path).

Boxes are ``[x, y, z_center, length, width, height, yaw]`` (REP 103: metres, yaw radians CCW about +z);
extra columns are ignored. Greedy NMS visits boxes by descending score (equal scores: lower index first)
and drops a box whose IoU with an already kept box is ``> iou_threshold``.

Why it is fast without an (N, N) IoU matrix: detector output is spatially sparse, so almost all pairs
are far apart. Candidate pairs come from a uniform-grid search (bounding circles must meet, see
:func:`.iou._near_pairs`), an upper bound on the IoU from axis-aligned bounding boxes discards pairs that
cannot reach the threshold, the exact IoU (:mod:`.iou`) runs vectorised on the remainder only, and the
greedy pass walks the resulting sparse suppression graph (1,000 detector-like boxes: ~2 ms on one core,
``test/bench/bench_nms.py``).

numpy in -> numpy out (int64 indices); torch in -> torch out (int64, same device; CUDA tensors use the
CUDA kernels of :mod:`.nms_cuda`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np

from fastpillars_ros.ops.iou import (
    _bounding_radius,
    _iou_pairs64,
    _is_torch,
    _near_pairs,
    _to_f64,
    bev_intersection_area_pairs,
)

__all__ = ["circle_nms", "nms_3d", "nms_bev", "nms_grouped", "suppress_contained"]

ArrayLike = Any  # numpy array or torch tensor


def _scores_f64(scores: ArrayLike, n: int) -> np.ndarray:
    arr = scores.detach().cpu().numpy() if _is_torch(scores) else np.asarray(scores)
    arr = np.asarray(arr, dtype=np.float64).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{len(arr)} scores for {n} boxes")
    return arr


def _boxes_scores_ids(boxes: ArrayLike, scores: ArrayLike, ids: ArrayLike, what: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (N, 7) boxes, float64 (N,) scores and (N,) integer ids (groups, labels) as numpy, lengths checked."""
    b = _to_f64(boxes) if (_is_torch(boxes) or len(np.asarray(boxes))) else np.empty((0, 7))
    s = _scores_f64(scores, len(b))
    i = np.asarray(ids.detach().cpu().numpy() if _is_torch(ids) else ids).reshape(-1)
    if len(i) != len(b):
        raise ValueError(f"{len(i)} {what} for {len(b)} boxes")
    return b, s, i


def _order(scores: np.ndarray, pre_max: int | None) -> np.ndarray:
    """Indices by descending score, ties by ascending index, NaN scores dropped (with a warning)."""
    finite = ~np.isnan(scores)
    if not finite.all():
        warnings.warn(f"NMS dropped {int((~finite).sum())} box(es) with NaN score", RuntimeWarning,
                      stacklevel=5)  # _order < _nms_np < _dispatch < nms_bev & co. < caller
    idx = np.flatnonzero(finite)
    order = idx[np.argsort(-scores[idx], kind="stable")]
    if pre_max is not None:
        order = order[:max(int(pre_max), 0)]
    return order


def _greedy(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Greedy pass over a suppression graph on ranks ``0..n-1`` (rank 0 = best score).

    ``src[e] < dst[e]`` means rank ``src`` suppresses rank ``dst`` if ``src`` is kept. Returns the kept
    ranks, ascending. Only ranks with outgoing edges need a Python-level visit.
    """
    if len(src) == 0:
        return np.arange(n)
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    heads, starts = np.unique(src, return_index=True)
    ends = np.append(starts[1:], len(src))
    removed = bytearray(n)  # plain Python indexing: much cheaper than numpy scalar access in the loop
    dst_list = dst.tolist()
    for h, s, e in zip(heads.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if not removed[h]:
            for d in dst_list[s:e]:
                removed[d] = 1
    return np.flatnonzero(np.frombuffer(removed, dtype=np.uint8) == 0)


def _suppression_edges(boxes: np.ndarray, iou_threshold: float, three_d: bool
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of rows of ``boxes`` (float64 (n, 7)) with IoU > ``iou_threshold``."""
    hl = 0.5 * np.maximum(boxes[:, 3], 0.0)
    hw = 0.5 * np.maximum(boxes[:, 4], 0.0)
    i, j = _near_pairs(boxes[:, 0], boxes[:, 1], _bounding_radius(boxes))
    if len(i) == 0:
        return i, j
    # Axis-aligned bounding boxes of the rotated footprints: their overlap area bounds the intersection
    # from above, so pairs whose bound cannot reach the threshold skip the exact computation.
    c, s = np.abs(np.cos(boxes[:, 6])), np.abs(np.sin(boxes[:, 6]))
    ex, ey = c * hl + s * hw, s * hl + c * hw
    x0, x1 = boxes[:, 0] - ex, boxes[:, 0] + ex
    y0, y1 = boxes[:, 1] - ey, boxes[:, 1] + ey
    ox = np.minimum(x1[i], x1[j]) - np.maximum(x0[i], x0[j])
    oy = np.minimum(y1[i], y1[j]) - np.maximum(y0[i], y0[j])
    area = 4.0 * hl * hw
    upper = np.minimum(np.maximum(ox, 0.0) * np.maximum(oy, 0.0), np.minimum(area[i], area[j]))
    if three_d:
        h = np.maximum(boxes[:, 5], 0.0)
        oz = np.minimum(boxes[i, 2] + 0.5 * h[i], boxes[j, 2] + 0.5 * h[j]) - np.maximum(
            boxes[i, 2] - 0.5 * h[i], boxes[j, 2] - 0.5 * h[j])
        upper = upper * np.maximum(oz, 0.0)
        area = area * h
    union_low = area[i] + area[j] - upper
    # IoU = I / (Aa + Ab - I) grows with I, so the bound on I bounds the IoU; 1e-9 keeps borderline pairs.
    maybe = upper > (iou_threshold - 1e-9) * union_low
    maybe &= upper > 0.0
    i, j = i[maybe], j[maybe]
    if len(i) == 0:
        return i, j
    iou = _iou_pairs64(boxes[i], boxes[j], three_d)
    hit = iou > iou_threshold
    return i[hit], j[hit]


def _nms_np(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, pre_max: int | None,
            post_max: int | None, kind: str, min_radius: float | None = None) -> np.ndarray:
    order = _order(scores, pre_max)
    if len(order) == 0:
        return np.empty(0, dtype=np.int64)
    ranked = boxes[order]
    if kind == "circle":
        if min_radius is None:
            raise ValueError("circle NMS needs min_radius")
        i, j = _near_pairs(ranked[:, 0], ranked[:, 1], np.full(len(ranked), 0.5 * float(min_radius)))
    else:
        i, j = _suppression_edges(ranked, float(iou_threshold), three_d=(kind == "3d"))
    kept = order[_greedy(len(order), i, j)]
    if post_max is not None:
        kept = kept[:max(int(post_max), 0)]
    return kept.astype(np.int64, copy=False)


def _check_threshold(iou_threshold: float, kind: str, min_radius: float | None) -> None:
    # A negative IoU threshold would make every pair, however far apart, suppress: the sparse search
    # cannot express that and no detector wants it.
    if kind != "circle" and not float(iou_threshold) >= 0.0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    if kind == "circle" and (min_radius is None or not float(min_radius) >= 0.0):
        raise ValueError(f"circle NMS needs min_radius >= 0, got {min_radius}")


def _dispatch(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, pre_max: int | None,
              post_max: int | None, kind: str, min_radius: float | None = None) -> ArrayLike:
    _check_threshold(iou_threshold, kind, min_radius)
    if _is_torch(boxes):
        import torch

        if boxes.is_cuda:
            from fastpillars_ros.ops import nms_cuda

            return nms_cuda.nms_cuda(boxes, scores, iou_threshold, pre_max=pre_max, post_max=post_max,
                                     kind=kind, min_radius=min_radius)
        keep = _nms_np(_to_f64(boxes), _scores_f64(scores, len(boxes)), iou_threshold, pre_max, post_max,
                       kind, min_radius)
        return torch.from_numpy(keep).to(boxes.device)
    b = np.asarray(boxes)
    if b.ndim != 2 or (len(b) and b.shape[1] < 7):
        raise ValueError(f"boxes must have shape (N, >=7), got {b.shape}")
    if len(b) == 0:
        _scores_f64(scores, 0)
        return np.empty(0, dtype=np.int64)
    return _nms_np(_to_f64(b), _scores_f64(scores, len(b)), iou_threshold, pre_max, post_max, kind,
                   min_radius)


def nms_bev(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, pre_max: int | None = None,
            post_max: int | None = None) -> ArrayLike:
    """Greedy NMS with exact rotated BEV IoU.

    Args:
        boxes: (N, >=7) ``[x, y, z, l, w, h, yaw]`` (metres, radians), numpy or torch.
        scores: (N,) confidences; NaN scores are dropped with a ``RuntimeWarning``.
        iou_threshold: a box is suppressed when its BEV IoU with a kept box is ``> iou_threshold``.
        pre_max: keep only the ``pre_max`` best-scoring boxes before NMS (None: all).
        post_max: return at most ``post_max`` kept boxes (None: all).

    Returns:
        int64 indices into ``boxes`` of the kept boxes, by descending score (ties: lower index first).
    """
    return _dispatch(boxes, scores, iou_threshold, pre_max, post_max, "bev")


def nms_3d(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, pre_max: int | None = None,
           post_max: int | None = None) -> ArrayLike:
    """Greedy NMS with exact 3D IoU (rotated BEV footprint x vertical overlap); as :func:`nms_bev`."""
    return _dispatch(boxes, scores, iou_threshold, pre_max, post_max, "3d")


def circle_nms(boxes: ArrayLike, scores: ArrayLike, min_radius: float, post_max: int | None = None
               ) -> ArrayLike:
    """Greedy suppression by centre distance (CenterPoint style).

    A box is dropped when the BEV distance between its centre and a kept box's centre is
    ``<= min_radius`` (metres). Note: det3d's ``circle_nms`` compares the *squared* distance with its
    threshold; pass ``sqrt`` of that value here to reproduce it.

    Args / returns: as :func:`nms_bev` (``boxes`` needs at least x and y but is read as (N, >=7)).
    """
    return _dispatch(boxes, scores, 0.0, None, post_max, "circle", min_radius)


def nms_grouped(boxes: ArrayLike, scores: ArrayLike, groups: ArrayLike, iou_threshold: float,
                kind: Literal["bev", "3d", "circle"] = "bev", pre_max: int | None = None,
                post_max: int | None = None, min_radius: float | None = None) -> ArrayLike:
    """NMS run independently per group (class or detection-head task): groups never suppress each other.

    Args:
        boxes, scores, iou_threshold: as :func:`nms_bev`.
        groups: (N,) integer group id per box.
        kind: ``"bev"``, ``"3d"`` or ``"circle"`` (then ``min_radius`` is required).
        pre_max, post_max: applied within each group, as det3d does per task.

    Returns:
        int64 indices of all kept boxes, by descending score (ties: lower index first).
    """
    if kind not in ("bev", "3d", "circle"):
        raise ValueError(f"unknown NMS kind {kind!r}")
    _check_threshold(iou_threshold, kind, min_radius)
    torch_in = _is_torch(boxes)
    if torch_in and boxes.is_cuda:
        from fastpillars_ros.ops import nms_cuda

        return nms_cuda.nms_grouped_cuda(boxes, scores, groups, iou_threshold, kind=kind, pre_max=pre_max,
                                         post_max=post_max, min_radius=min_radius)
    b, s, g = _boxes_scores_ids(boxes, scores, groups, "group ids")
    finite = ~np.isnan(s)
    if not finite.all():
        warnings.warn(f"NMS dropped {int((~finite).sum())} box(es) with NaN score", RuntimeWarning,
                      stacklevel=2)
    kept = [np.empty(0, dtype=np.int64)]
    for gid in np.unique(g[finite]):
        members = np.flatnonzero((g == gid) & finite)
        keep = _nms_np(b[members], s[members], iou_threshold, pre_max, post_max, kind, min_radius)
        kept.append(members[keep])
    out = np.concatenate(kept)
    # Merge the per-group lists by descending score, ties by ascending index (lexsort: last key first).
    out = out[np.lexsort((out, -s[out]))]
    if torch_in:
        import torch

        return torch.from_numpy(out).to(boxes.device)
    return out


def suppress_contained(boxes: ArrayLike, scores: ArrayLike, labels: ArrayLike, min_fraction: float) -> ArrayLike:
    """Greedy suppression across classes by containment: visiting boxes by descending score (ties: lower index
    first), a box is dropped when at least ``min_fraction`` of its BEV area lies inside an already kept, larger box
    of **another** label. A larger box is never dropped for a smaller one inside it (a true car must not vanish
    because a stronger false cyclist overlaps its end), and boxes of the same label never suppress each other here
    (that is NMS's job).

    Why: NMS by IoU cannot see a pedestrian or a cyclist inside a car (a 0.5 m^2 footprint inside an 8 m^2 one
    has IoU ~0.06); on real scans such pairs are a wall or a car's side read as a second, smaller object
    (MODEL_CARD.md, step 5 item 18).

    Args:
        boxes: (N, >=7) ``[x, y, z, l, w, h, yaw]`` (metres, radians), numpy or torch (CPU).
        scores: (N,) confidences.
        labels: (N,) integer class ids.
        min_fraction: in (0, 1].
    Returns:
        int64 indices of the kept boxes, ascending; numpy for numpy input, a CPU torch tensor for torch input.
    """
    if not 0.0 < float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    torch_in = _is_torch(boxes)
    b, s, lab = _boxes_scores_ids(boxes, scores, labels, "labels")
    order = np.lexsort((np.arange(len(b)), -s))  # descending score, ties by index
    ranked, ranked_labels = b[order], lab[order]
    i, j = _near_pairs(ranked[:, 0], ranked[:, 1], _bounding_radius(ranked))
    cross = ranked_labels[i] != ranked_labels[j]
    i, j = i[cross], j[cross]
    if len(i):
        area = np.maximum(ranked[:, 3], 0.0) * np.maximum(ranked[:, 4], 0.0)
        # Only the smaller box of a pair is suppressed (j, the weaker, inside i): a car is not dropped because a
        # stronger pedestrian or cyclist box overlaps it.
        hit = bev_intersection_area_pairs(ranked[i], ranked[j]) >= float(min_fraction) * area[j]
        hit &= (area[j] > 0.0) & (area[j] <= area[i])
        i, j = i[hit], j[hit]
    keep = np.sort(order[_greedy(len(order), i, j)]).astype(np.int64)
    if torch_in:
        import torch

        return torch.from_numpy(keep)
    return keep
