"""KITTI-style R40 evaluation (fastpillars_ros.evaluation.evaluate) against a naive per-pair Python loop.

Scene per frame: 30 labelled objects (70% cars, 20% pedestrians, 10% cyclists) over 80 m x 80 m, 10% of
them ignore boxes; detections: 85% of the objects found with jitter (0.15 m in position, 5% in size, 0.05
rad in yaw, 0.1 m in z), 5% duplicated, plus 5 false positives per frame; 3 classes x 2 metrics x 2 IoU
thresholds. Goal (issue #7): 200 frames in well under a second.

Anchor: what a plain Python implementation does: per class and frame, the IoU of every detection with every
ground truth box of the class from shapely polygons (one pair at a time, reused across thresholds), the
greedy matching as nested loops and the R40 curve in Python. Both give the same APs (checked) on the
smaller set (20 frames) that is timed against the anchor; the 200-frame set is timed alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run as a script

from common import print_header, print_ratio, time_ms

from fastpillars_ros.evaluation import FrameBoxes, evaluate

CLASSES = ["car", "pedestrian", "cyclist"]
THRESHOLDS = {"car": (0.7, 0.5), "pedestrian": (0.5, 0.25), "cyclist": (0.5, 0.25)}
PER_FRAME = 30
GOAL_MS = 1000.0


def scene(frames: int, seed: int = 0) -> tuple[list[FrameBoxes], list[FrameBoxes]]:
    rng = np.random.default_rng(seed)
    dims = np.array([[4.5, 1.9, 1.6], [0.8, 0.7, 1.7], [1.8, 0.7, 1.6]])
    preds, gts = [], []
    for _ in range(frames):
        labels = rng.choice(3, PER_FRAME, p=[0.7, 0.2, 0.1])
        boxes = np.column_stack((rng.uniform(-40, 40, (PER_FRAME, 2)), rng.normal(-1, 0.1, PER_FRAME),
                                 dims[labels] * rng.normal(1, 0.05, (PER_FRAME, 3)),
                                 rng.uniform(-np.pi, np.pi, PER_FRAME)))
        gts.append(FrameBoxes(boxes, labels, ignore=rng.random(PER_FRAME) < 0.1))
        found = np.flatnonzero(rng.random(PER_FRAME) < 0.85)
        found = np.concatenate((found, found[rng.random(len(found)) < 0.05]))
        det = boxes[found].copy()
        det[:, :2] += rng.normal(0, 0.15, (len(found), 2))
        det[:, 2] += rng.normal(0, 0.1, len(found))
        det[:, 3:6] *= rng.normal(1, 0.05, (len(found), 3))
        det[:, 6] += rng.normal(0, 0.05, len(found))
        fp_labels = rng.integers(0, 3, 5)
        fp = np.column_stack((rng.uniform(-40, 40, (5, 2)), np.full(5, -1.0), dims[fp_labels],
                              rng.uniform(-np.pi, np.pi, 5)))
        preds.append(FrameBoxes(np.vstack((det, fp)), np.concatenate((labels[found], fp_labels)),
                                scores=np.concatenate((rng.uniform(0.3, 1.0, len(found)), rng.uniform(0.05, 0.6, 5)))))
    return preds, gts


def _polygon(b: np.ndarray) -> shapely.Polygon:
    c, s = math.cos(b[6]), math.sin(b[6])
    pts = [(b[0] + c * u - s * v, b[1] + s * u + c * v)
           for u, v in ((b[3] / 2, -b[4] / 2), (b[3] / 2, b[4] / 2), (-b[3] / 2, b[4] / 2), (-b[3] / 2, -b[4] / 2))]
    return shapely.Polygon(pts)


def _naive_iou(a: np.ndarray, b: np.ndarray, three_d: bool) -> float:
    inter = _polygon(a).intersection(_polygon(b)).area
    va, vb = a[3] * a[4], b[3] * b[4]
    if three_d:
        dz = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
        inter, va, vb = inter * dz, va * a[5], vb * b[5]
    union = va + vb - inter
    return inter / union if union > 0 else 0.0


def naive_evaluate(preds: list[FrameBoxes], gts: list[FrameBoxes]) -> dict[tuple[str, str, float], float]:
    out = {}
    for c, name in enumerate(CLASSES):
        for metric in ("bev", "3d"):
            # Per frame: dets of the class by descending score, the class's GT, their IoU matrix.
            frames = []
            for p, g in zip(preds, gts, strict=True):
                di = [i for i in np.argsort(-p.scores, kind="stable") if p.labels[i] == c]
                gi = [j for j in range(len(g.labels)) if g.labels[j] == c]
                ious = [[_naive_iou(p.boxes[i], g.boxes[j], metric == "3d") for j in gi] for i in di]
                frames.append((di, gi, ious, p, g))
            for thr in THRESHOLDS[name]:
                records, num_gt = [], 0
                for di, gi, ious, p, g in frames:
                    num_gt += sum(1 for j in gi if not g.ignore[j])
                    taken = set()
                    for row, i in enumerate(di):
                        best, best_iou, absorbed = None, thr, False
                        for col, j in enumerate(gi):
                            if ious[row][col] < thr:
                                continue
                            if g.ignore[j]:
                                absorbed = True
                            elif j not in taken and ious[row][col] >= best_iou:
                                if best is None or ious[row][col] > best_iou:
                                    best, best_iou = j, ious[row][col]
                        if best is not None:
                            taken.add(best)
                            records.append((p.scores[i], 1))
                        elif not absorbed:
                            records.append((p.scores[i], 0))
                records.sort(key=lambda r: -r[0])
                tp = fp = 0
                curve = []
                for _, hit in records:
                    tp, fp = tp + hit, fp + 1 - hit
                    curve.append((tp / num_gt, tp / (tp + fp)))
                levels = [max((pr for rc, pr in curve if rc * 40 >= k - 1e-9), default=0.0) for k in range(1, 41)]
                out[(name, metric, thr)] = 100.0 * sum(levels) / 40
    return out


def main() -> None:
    print_header("evaluation: R40 AP, 3 classes x BEV/3D x 2 IoU thresholds")
    small_p, small_g = scene(20, seed=1)
    ours = evaluate(small_p, small_g, CLASSES, THRESHOLDS)
    ref = naive_evaluate(small_p, small_g)
    for key, ap in ref.items():
        assert abs(ours.metrics[key].ap - ap) < 1e-9, (key, ours.metrics[key].ap, ap)
    anchor = time_ms(lambda: naive_evaluate(small_p, small_g), repeat=2, warmup=0)
    cand = time_ms(lambda: evaluate(small_p, small_g, CLASSES, THRESHOLDS), repeat=10)
    print_ratio(f"evaluate, 20 frames x {PER_FRAME} objects", "naive shapely loop", anchor, cand)
    big_p, big_g = scene(200, seed=2)
    big = time_ms(lambda: evaluate(big_p, big_g, CLASSES, THRESHOLDS), repeat=5)
    print_ratio(f"evaluate, 200 frames x {PER_FRAME} objects", "naive (20-frame time x 10)", anchor * 10, big,
                goal_ms=GOAL_MS)
    res = evaluate(big_p, big_g, CLASSES, THRESHOLDS)
    print("APs (200 frames): " + ", ".join(f"{c} 3D@{THRESHOLDS[c][0]} {res.ap(c, '3d'):.1f}" for c in CLASSES))


if __name__ == "__main__":
    main()
