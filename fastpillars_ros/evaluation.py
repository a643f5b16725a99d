"""KITTI-style 3D detection evaluation: average precision at 40 recall points (R40), BEV and 3D.

Inputs are per-frame lists: ``predictions[i]`` and ``ground_truths[i]`` describe the same frame. A frame is
a mapping or any object with the fields

* ``boxes`` (K, >=7): our boxes ``[x, y, z_center, length, width, height, yaw]`` (see
  :mod:`fastpillars_ros.boxes`); only the first 7 columns are read,
* ``labels`` (K,) int: indices into ``class_names``,
* ``scores`` (K,) float: predictions only,
* ``ignore`` (K,) bool, optional, ground truth only: boxes that are neither positives nor make the
  detections on them false positives (DontCare-like, neighbouring classes such as KITTI's Van for Car,
  objects too hard to count).

Matching, per frame, class, metric (``"bev"``: :func:`~fastpillars_ros.ops.iou.rotated_iou_bev`, ``"3d"``:
:func:`~fastpillars_ros.ops.iou.iou_3d`) and IoU threshold: detections are taken in descending score order;
each takes the not-yet-matched, not-ignored ground truth box of its class with the highest IoU >= the
threshold (a true positive). A detection with no such box that overlaps an ignored box of its class by at
least the threshold is *absorbed*: it counts neither as a true nor as a false positive (an ignored box can
absorb any number of detections). Every other detection is a false positive, duplicates included; ground
truth boxes left unmatched are misses.

``max_range`` (metres, BEV distance of the box centre from the origin): detections beyond it are dropped
and ground truth beyond it is turned into ignored boxes, so a detection just inside the range that matches
an object just outside it is not punished.

AP (R40): the detections of a class, from all frames, sorted by score, give precision/recall points (one
per distinct score, so tied scores are one point and the result does not depend on their order). For each
recall level ``r = 1/40, 2/40, ..., 1`` the interpolated precision is the highest precision reached at a
recall >= ``r`` (0 if that recall is never reached); AP is their mean, in percent. Recall comparisons are
done in integers (``40 * TP >= k * num_gt``), so recall levels that are exactly reached count. A class with
no ground truth has AP NaN (``null`` in JSON).

How sure an AP is (:meth:`ClassMetrics.ap_interval`): a percentile bootstrap over frames. Frames are drawn
with replacement as many times as there are frames, their detections (already matched within their frame)
and ground truth counted that many times, and AP recomputed; the interval holds the middle ``level`` of the
resampled APs. On a few dozen frames it is wide, and it says how far apart two models' APs must be before
the data tells them apart.

Cost: candidate pairs are the same-class (detection, ground truth) pairs of a frame whose bounding circles
meet; their BEV and 3D IoU are computed in one vectorised call each for all frames; matching is one linear
pass over the pairs whose IoU passes the threshold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastpillars_ros.ops.iou import iou_3d_pairs, rotated_iou_bev_pairs

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "FALLBACK_IOU_THRESHOLDS",
    "METRICS",
    "NUM_RECALL_POINTS",
    "ClassMetrics",
    "EvalResult",
    "FrameBoxes",
    "bootstrap_interval",
    "evaluate",
    "plot_pr_curves",
    "resolve_iou_thresholds",
]

NUM_RECALL_POINTS = 40
METRICS = ("bev", "3d")
# Per class: (strict, loose) IoU thresholds. KITTI's for car / pedestrian / cyclist; large vehicles of other
# label sets get the car values, every other class the pedestrian values (FALLBACK_IOU_THRESHOLDS).
DEFAULT_IOU_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "car": (0.7, 0.5),
    "van": (0.7, 0.5),
    "truck": (0.7, 0.5),
    "bus": (0.7, 0.5),
    "trailer": (0.7, 0.5),
    "construction_vehicle": (0.7, 0.5),
    "pedestrian": (0.5, 0.25),
    "cyclist": (0.5, 0.25),
}
FALLBACK_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.25)
_METRIC_TITLES = {"bev": "BEV", "3d": "3D"}


@dataclass
class FrameBoxes:
    """One frame's boxes: ground truth (``ignore`` optional) or predictions (``scores`` required)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    ignore: np.ndarray | None = None


@dataclass
class ClassMetrics:
    """Evaluation of one class at one metric and IoU threshold.

    ``precision``/``recall``/``thresholds``: the curve, one point per distinct detection score (descending
    score, so increasing recall); ``precision_r40``: the interpolated precision at recall ``k/40``,
    ``k = 1..40``; ``ap``: their mean in percent (NaN without ground truth). Counts are after the range
    filter: ``num_gt`` counts only not-ignored boxes, ``num_det`` the detections that were not absorbed by
    ignored boxes (``num_tp + num_fp``); ``max_recall`` is the recall over all detections (0..1).
    """

    class_name: str
    metric: str
    iou_threshold: float
    ap: float
    num_gt: int
    num_ignored_gt: int
    num_det: int
    num_tp: int
    num_fp: int
    max_recall: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    precision_r40: np.ndarray
    # Per counted detection: its frame, score and whether it is a true positive; per frame: its ground truth
    # (not ignored). What the bootstrap resamples.
    det_frame: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    det_score: np.ndarray = field(default_factory=lambda: np.zeros(0))
    det_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    gt_per_frame: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def ap_interval(self, level: float = 0.9, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
        """``(low, high)`` AP (percent) holding the middle ``level`` of a bootstrap over frames (module
        docstring); NaN, NaN without ground truth. Deterministic for a given ``seed``."""
        _check_level(level)
        n = len(self.gt_per_frame)
        if self.num_gt == 0 or n == 0:
            return float("nan"), float("nan")

        def ap(times: np.ndarray) -> float:
            reps = times[self.det_frame]
            num_gt = int(times @ self.gt_per_frame)
            return _curve(np.repeat(self.det_score, reps), np.repeat(self.det_tp, reps), num_gt)[4]

        lo, hi = bootstrap_interval(n, ap, level, resamples, seed)
        return float(lo[0]), float(hi[0])

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class": self.class_name, "metric": self.metric, "iou_threshold": self.iou_threshold,
            "ap": _json_float(self.ap), "num_gt": self.num_gt, "num_ignored_gt": self.num_ignored_gt,
            "num_det": self.num_det, "num_tp": self.num_tp, "num_fp": self.num_fp,
            "max_recall": _json_float(self.max_recall),
        }
        if curves:
            out["precision_r40"] = [float(v) for v in self.precision_r40]
            out["precision"] = [float(v) for v in self.precision]
            out["recall"] = [float(v) for v in self.recall]
            out["thresholds"] = [float(v) for v in self.thresholds]
        return out


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def bootstrap_interval(num_frames: int, statistic: Callable[[np.ndarray], float | np.ndarray], level: float = 0.9,
                       resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over frames (module docstring): ``resamples`` times, ``num_frames`` frames are drawn
    with replacement and ``statistic(times)`` computed (``times``: ``[num_frames]`` int64, how often each frame
    was drawn; it returns one value or ``[K]``). Returns ``(low, high)``, each ``[K]`` (``[1]`` for one value),
    holding the middle ``level`` of the draws (NaN draws left out). Deterministic for a given ``seed``."""
    _check_level(level)
    rng = np.random.default_rng(seed)
    draws = np.array([np.atleast_1d(statistic(np.bincount(rng.integers(0, num_frames, num_frames),
                                                          minlength=num_frames))) for _ in range(resamples)],
                     dtype=np.float64)
    low, high = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return low, high


def _json_float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


@dataclass
class EvalResult:
    """All :class:`ClassMetrics`, keyed by ``(class_name, metric, iou_threshold)``."""

    class_names: list[str]
    iou_thresholds: dict[str, tuple[float, ...]]
    metrics: dict[tuple[str, str, float], ClassMetrics]
    num_frames: int
    max_range: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def get(self, class_name: str, metric: str = "3d", iou_threshold: float | None = None) -> ClassMetrics:
        """One entry; ``iou_threshold`` None = the class's first (strictest by convention) threshold."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if class_name not in self.iou_thresholds:
            raise KeyError(f"unknown class {class_name!r}; evaluated: {self.class_names}")
        thr = self.iou_thresholds[class_name][0] if iou_threshold is None else float(iou_threshold)
        key = (class_name, metric, thr)
        if key not in self.metrics:
            raise KeyError(f"{class_name!r} was evaluated at IoU {self.iou_thresholds[class_name]}, not {thr}")
        return self.metrics[key]

    def ap(self, class_name: str, metric: str = "3d", iou_threshold: float | None = None) -> float:
        """AP in percent (NaN when the class has no ground truth)."""
        return self.get(class_name, metric, iou_threshold).ap

    def mean_ap(self, metric: str = "3d", level: int = 0) -> float:
        """Mean AP over the classes with ground truth at each class's ``level``-th threshold (NaN if none)."""
        aps = [self.get(c, metric, t[level]).ap for c, t in self.iou_thresholds.items() if level < len(t)]
        aps = [a for a in aps if math.isfinite(a)]
        return float(np.mean(aps)) if aps else float("nan")

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready: settings, one record per class/metric/threshold and the mean APs."""
        levels = max((len(t) for t in self.iou_thresholds.values()), default=0)
        return {
            "num_frames": self.num_frames,
            "max_range": self.max_range,
            "num_recall_points": NUM_RECALL_POINTS,
            "class_names": list(self.class_names),
            "iou_thresholds": {c: list(t) for c, t in self.iou_thresholds.items()},
            "results": [m.to_dict(curves) for m in self.metrics.values()],
            "mean_ap": {m: [_json_float(self.mean_ap(m, lv)) for lv in range(levels)] for m in METRICS},
            **self.extras,
        }

    def format_table(self) -> str:
        """A per-class text table: one row per class and IoU threshold, AP and recall for BEV and 3D."""
        head = (f"{'class':<14s} {'IoU':>5s} {'GT':>6s} {'ign':>5s} {'det':>7s} "
                f"{'BEV AP':>7s} {'3D AP':>7s} {'BEV rec':>8s} {'3D rec':>7s} {'3D TP':>6s} {'3D FP':>6s}")
        lines = [f"R{NUM_RECALL_POINTS} AP over {self.num_frames} frames"
                 + (f", within {self.max_range:g} m" if self.max_range is not None else ""), head,
                 "-" * len(head)]

        def num(v: float, width: int, digits: int = 2) -> str:
            return f"{v:{width}.{digits}f}" if math.isfinite(v) else f"{'-':>{width}s}"

        for c, thrs in self.iou_thresholds.items():
            for t in thrs:
                bev, d3 = self.get(c, "bev", t), self.get(c, "3d", t)
                lines.append(f"{c:<14s} {t:5.2f} {d3.num_gt:6d} {d3.num_ignored_gt:5d} {d3.num_det:7d} "
                             f"{num(bev.ap, 7)} {num(d3.ap, 7)} {num(bev.max_recall, 8, 3)} "
                             f"{num(d3.max_recall, 7, 3)} {d3.num_tp:6d} {d3.num_fp:6d}")
        levels = max((len(t) for t in self.iou_thresholds.values()), default=0)
        names = ["strict", "loose"] + [f"level {i}" for i in range(2, levels)]
        for lv in range(levels):
            lines.append(f"{'mean (' + names[lv] + ')':<26s} {'':6s} {'':7s} "
                         f"{num(self.mean_ap('bev', lv), 7)} {num(self.mean_ap('3d', lv), 7)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Input handling


def _field(frame: Any, name: str) -> Any:
    if isinstance(frame, Mapping):
        return frame.get(name)
    return getattr(frame, name, None)


def _as_array(x: Any) -> np.ndarray:
    if x is None:
        return None  # type: ignore[return-value]
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _read_frame(frame: Any, what: str, index: int, num_classes: int, is_pred: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> boxes (K, 7) float64, labels (K,) int64, scores (K,) float64 (zeros for GT), ignore (K,) bool."""
    boxes = _as_array(_field(frame, "boxes"))
    labels = _as_array(_field(frame, "labels"))
    if boxes is None or labels is None:
        raise ValueError(f"{what} frame {index}: needs 'boxes' and 'labels'")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 7)
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"{what} frame {index}: boxes must have shape (K, >=7), got {boxes.shape}")
    k = len(boxes)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != k:
        raise ValueError(f"{what} frame {index}: {k} boxes but {len(labels)} labels")
    if k and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels.astype(np.float64), 1), 0)):
            raise ValueError(f"{what} frame {index}: labels must be integer class indices")
    labels = labels.astype(np.int64)
    if k and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} frame {index}: labels must lie in [0, {num_classes}), got "
                         f"{labels.min()}..{labels.max()}")
    if is_pred:
        scores = _as_array(_field(frame, "scores"))
        if scores is None:
            raise ValueError(f"{what} frame {index}: predictions need 'scores'")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != k:
            raise ValueError(f"{what} frame {index}: {k} boxes but {len(scores)} scores")
        if not np.isfinite(scores).all():
            raise ValueError(f"{what} frame {index}: scores must be finite")
        ignore = np.zeros(k, dtype=bool)
    else:
        scores = np.zeros(k)
        ign = _as_array(_field(frame, "ignore"))
        ignore = np.zeros(k, dtype=bool) if ign is None else np.asarray(ign, dtype=bool).reshape(-1)
        if len(ignore) != k:
            raise ValueError(f"{what} frame {index}: {k} boxes but {len(ignore)} ignore flags")
    return boxes[:, :7], labels, scores, ignore


def resolve_iou_thresholds(class_names: Sequence[str],
                           iou_thresholds: Mapping[str, float | Sequence[float]] | None = None
                           ) -> dict[str, tuple[float, ...]]:
    """Per class the IoU thresholds to evaluate at: ``iou_thresholds[class]`` (one value or several), else
    :data:`DEFAULT_IOU_THRESHOLDS`, else :data:`FALLBACK_IOU_THRESHOLDS`. Duplicates removed, order kept."""
    given = dict(iou_thresholds or {})
    unknown = set(given) - set(class_names)
    if unknown:
        raise ValueError(f"IoU thresholds given for unknown classes {sorted(unknown)}; classes: {list(class_names)}")
    out: dict[str, tuple[float, ...]] = {}
    for c in class_names:
        v = given.get(c, DEFAULT_IOU_THRESHOLDS.get(c, FALLBACK_IOU_THRESHOLDS))
        values = [float(v)] if np.ndim(v) == 0 else [float(x) for x in v]  # type: ignore[union-attr]
        if not values or not all(0.0 < x <= 1.0 for x in values):
            raise ValueError(f"IoU thresholds of {c!r} must be in (0, 1], got {values}")
        out[c] = tuple(dict.fromkeys(values))
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation


def _curve(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, ...]:
    """Precision, recall, thresholds (one point per distinct score), R40 precisions and AP (percent)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ctp = np.cumsum(tp[order].astype(np.int64))
    cfp = np.arange(1, len(s) + 1, dtype=np.int64) - ctp
    last = np.ones(len(s), dtype=bool)
    if len(s) > 1:
        last[:-1] = s[1:] != s[:-1]
    ctp, cfp, s = ctp[last], cfp[last], s[last]
    precision = ctp / np.maximum(ctp + cfp, 1)
    recall = ctp / num_gt if num_gt > 0 else np.zeros(len(ctp))
    if num_gt == 0:
        return precision, recall, s, np.zeros(NUM_RECALL_POINTS), float("nan")
    best_after = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    # First curve point with recall >= k / 40, compared exactly as 40 * TP >= k * num_gt.
    need = np.arange(1, NUM_RECALL_POINTS + 1, dtype=np.int64) * num_gt
    first = np.searchsorted(ctp * NUM_RECALL_POINTS, need, side="left")
    reached = first < len(ctp)
    p40 = np.zeros(NUM_RECALL_POINTS)
    p40[reached] = best_after[first[reached]]
    return precision, recall, s, p40, float(p40.mean() * 100.0)


def evaluate(predictions: Sequence[Any], ground_truths: Sequence[Any], class_names: Sequence[str],
             iou_thresholds: Mapping[str, float | Sequence[float]] | None = None,
             max_range: float | None = None) -> EvalResult:
    """Evaluate detections against ground truth (see the module docstring for the rules).

    Args:
        predictions: one entry per frame with ``boxes``, ``scores``, ``labels`` (mapping or object, e.g.
            :class:`FrameBoxes` or :class:`fastpillars_ros.detector.Detections`).
        ground_truths: one entry per frame with ``boxes``, ``labels`` and optionally ``ignore``.
        class_names: names of the label indices; every class is evaluated.
        iou_thresholds: ``{class: threshold or thresholds}`` overriding :data:`DEFAULT_IOU_THRESHOLDS`.
        max_range: only evaluate within this BEV distance (metres) of the origin; None = everywhere.

    Returns:
        :class:`EvalResult`.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction frames but {len(ground_truths)} ground truth frames")
    if max_range is not None and not max_range > 0:
        raise ValueError(f"max_range must be positive metres or None, got {max_range}")
    class_names = list(class_names)
    thresholds = resolve_iou_thresholds(class_names, iou_thresholds)
    nc = len(class_names)

    d_boxes, d_labels, d_scores, d_frame = [], [], [], []
    g_boxes, g_labels, g_ignore, g_frame = [], [], [], []
    pair_d, pair_g = [], []
    nd = ng = 0
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths, strict=True)):
        db, dl, ds, _ = _read_frame(pred, "prediction", i, nc, True)
        gb, gl, _, gi = _read_frame(gt, "ground truth", i, nc, False)
        if max_range is not None:
            keep = np.hypot(db[:, 0], db[:, 1]) <= max_range
            db, dl, ds = db[keep], dl[keep], ds[keep]
            gi = gi | ~(np.hypot(gb[:, 0], gb[:, 1]) <= max_range)
        if len(db) and len(gb):
            rd = 0.5 * np.hypot(np.maximum(db[:, 3], 0), np.maximum(db[:, 4], 0))
            rg = 0.5 * np.hypot(np.maximum(gb[:, 3], 0), np.maximum(gb[:, 4], 0))
            dx = db[:, None, 0] - gb[None, :, 0]
            dy = db[:, None, 1] - gb[None, :, 1]
            reach = rd[:, None] + rg[None, :]
            near = (dl[:, None] == gl[None, :]) & (dx * dx + dy * dy <= reach * reach)
            ii, jj = np.nonzero(near)
            pair_d.append(ii + nd)
            pair_g.append(jj + ng)
        d_boxes.append(db)
        d_labels.append(dl)
        d_scores.append(ds)
        d_frame.append(np.full(len(db), i, dtype=np.int64))
        g_boxes.append(gb)
        g_labels.append(gl)
        g_ignore.append(gi)
        g_frame.append(np.full(len(gb), i, dtype=np.int64))
        nd += len(db)
        ng += len(gb)

    def cat(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts) if parts else empty

    dl_all = cat(d_labels, np.zeros(0, np.int64))
    ds_all = cat(d_scores, np.zeros(0))
    df_all = cat(d_frame, np.zeros(0, np.int64))
    gl_all = cat(g_labels, np.zeros(0, np.int64))
    gi_all = cat(g_ignore, np.zeros(0, bool))
    pd_all = cat(pair_d, np.zeros(0, np.int64))
    pg_all = cat(pair_g, np.zeros(0, np.int64))
    ious: dict[str, np.ndarray] = {m: np.zeros(0) for m in METRICS}
    if len(pd_all):
        db_all, gb_all = np.concatenate(d_boxes), np.concatenate(g_boxes)
        a, b = db_all[pd_all], gb_all[pg_all]
        ious = {"bev": rotated_iou_bev_pairs(a, b), "3d": iou_3d_pairs(a, b)}
        # Matching order: frame, descending score (ties: input order), valid GT before ignored, IoU desc.
        rank = np.empty(nd, dtype=np.int64)
        rank[np.lexsort((np.arange(nd), -ds_all, df_all))] = np.arange(nd)
        order_keys = {m: np.lexsort((-ious[m], gi_all[pg_all], rank[pd_all])) for m in METRICS}
    else:
        order_keys = {m: np.zeros(0, np.int64) for m in METRICS}

    metrics: dict[tuple[str, str, float], ClassMetrics] = {}
    pair_label = dl_all[pd_all]
    gf_all = cat(g_frame, np.zeros(0, np.int64))
    # Not-ignored ground truth per class and frame (the bootstrap resamples frames).
    gt_frames = [np.bincount(gf_all[~gi_all & (gl_all == c)], minlength=len(predictions)) for c in range(nc)]
    for c, name in enumerate(class_names):
        det_c = np.flatnonzero(dl_all == c)
        gt_c = gl_all == c
        num_gt = int(gt_frames[c].sum())
        num_ign = int(np.count_nonzero(gt_c & gi_all))
        for metric in METRICS:
            order = order_keys[metric]
            in_class = order[pair_label[order] == c]
            iou_c = ious[metric][in_class]
            for thr in thresholds[name]:
                sel = in_class[iou_c >= thr]
                state = _match(pd_all[sel].tolist(), pg_all[sel].tolist(), gi_all, nd, ng)
                st = state[det_c]
                counted = st != 2
                tp = st[counted] == 1
                scores_c = ds_all[det_c][counted]
                precision, recall, thr_scores, p40, ap = _curve(scores_c, tp, num_gt)
                n_tp = int(np.count_nonzero(tp))
                metrics[(name, metric, thr)] = ClassMetrics(
                    class_name=name, metric=metric, iou_threshold=thr, ap=ap, num_gt=num_gt,
                    num_ignored_gt=num_ign, num_det=int(np.count_nonzero(counted)), num_tp=n_tp,
                    num_fp=int(np.count_nonzero(counted)) - n_tp,
                    max_recall=(n_tp / num_gt) if num_gt else float("nan"),
                    precision=precision, recall=recall, thresholds=thr_scores, precision_r40=p40,
                    det_frame=df_all[det_c][counted], det_score=scores_c, det_tp=tp, gt_per_frame=gt_frames[c])
    # Order the entries by class, then threshold, then metric (the table's order).
    ordered = {k: metrics[k] for k in sorted(metrics, key=lambda k: (class_names.index(k[0]),
                                                                    thresholds[k[0]].index(k[2]),
                                                                    METRICS.index(k[1])))}
    return EvalResult(class_names=class_names, iou_thresholds=thresholds, metrics=ordered,
                      num_frames=len(predictions), max_range=None if max_range is None else float(max_range))


def _match(pairs_d: list[int], pairs_g: list[int], gt_ignore: np.ndarray, nd: int, ng: int) -> np.ndarray:
    """Greedy matching over pairs already in matching order (all with IoU >= the threshold).

    Returns the state of every detection: 0 false positive, 1 true positive, 2 absorbed by an ignored box.
    A detection's pairs come consecutively, valid ground truth first (by descending IoU), so the first
    free valid box is its best one and an ignored box is reached only when no valid box is free.
    """
    state = bytearray(nd)
    taken = bytearray(ng)
    ignore = gt_ignore.tolist() if pairs_d else []
    for d, g in zip(pairs_d, pairs_g, strict=True):
        if state[d]:
            continue
        if ignore[g]:
            state[d] = 2
        elif not taken[g]:
            taken[g] = 1
            state[d] = 1
    return np.frombuffer(bytes(state), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Plot


def plot_pr_curves(result: EvalResult, path: str | os.PathLike, classes: Sequence[str] | None = None,
                   dpi: int = 100) -> None:
    """Write precision/recall curves as a PNG: one panel per class, one curve per metric and IoU threshold
    (solid BEV, dashed 3D), AP in the legend. Uses matplotlib's Agg canvas directly (no pyplot state, no
    display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result.class_names if classes is None else classes)
    n = max(len(names), 1)
    fig = Figure(figsize=(4.2 * n, 4.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for ax, name in zip(axes, names, strict=False):
        for k, thr in enumerate(result.iou_thresholds[name]):
            for metric, style in (("bev", "-"), ("3d", "--")):
                m = result.get(name, metric, thr)
                ap = f"{m.ap:.1f}" if math.isfinite(m.ap) else "n/a"
                # Start the curve at recall 0 with the first point's precision so a single point shows.
                r = np.concatenate(([0.0], m.recall)) if len(m.recall) else np.zeros(0)
                p = np.concatenate(([m.precision[0]], m.precision)) if len(m.precision) else np.zeros(0)
                ax.plot(r, p, style, drawstyle="steps-post", color=colours[k % len(colours)],
                        label=f"{_METRIC_TITLES[metric]} @{thr:g}: AP {ap}")
        gt = result.get(name, "3d").num_gt
        ax.set_title(f"{name} ({gt} GT)")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    suffix = f", within {result.max_range:g} m" if result.max_range is not None else ""
    fig.suptitle(f"Precision/recall, {result.num_frames} frames{suffix} (R{NUM_RECALL_POINTS} AP)")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
