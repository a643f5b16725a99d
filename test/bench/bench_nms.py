"""Rotated BEV NMS on the CPU: 1,000 detector-like boxes against a shapely-based greedy NMS.

Scene: 1,000 boxes clustered around 300 objects (70% cars, 20% pedestrians, 10% cyclists) spread over
120 m x 120 m, each box the object's box plus jitter (0.25 m in position, 5% in size, 0.08 rad in yaw)
with a random score, like raw detector output before NMS; pre_max 1000, IoU threshold 0.1 (CenterPoint
/ det3d style) and 0.5. Goal (issue #4): nms_bev <= 5 ms on the CPU this runs on.

Anchor: greedy NMS that, for each kept box, asks shapely for the intersection areas with all boxes not
yet decided (one vectorised shapely call per kept box) -- what a careful Python implementation without
a custom IoU kernel does. The keep lists of both are checked to be identical before timing.
Also timed: the (N, N) IoU matrix and exact IoU of row-aligned pairs against shapely.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run as a script

from common import print_header, print_ratio, time_ms

from fastpillars_ros.ops import circle_nms, nms_3d, nms_bev, rotated_iou_bev
from fastpillars_ros.ops.iou import rotated_iou_bev_pairs

N_BOXES = 1000
N_OBJECTS = 300
GOAL_MS = 5.0


def detector_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dims = np.array([[4.5, 1.9, 1.6], [0.8, 0.7, 1.7], [1.8, 0.7, 1.6]])[
        rng.choice(3, N_OBJECTS, p=[0.7, 0.2, 0.1])]
    centres = rng.uniform(-60, 60, (N_OBJECTS, 2))
    yaw = rng.uniform(-np.pi, np.pi, N_OBJECTS)
    owner = rng.integers(0, N_OBJECTS, N_BOXES)
    boxes = np.column_stack((
        centres[owner] + rng.normal(0, 0.25, (N_BOXES, 2)), rng.normal(-1, 0.1, N_BOXES),
        dims[owner] * rng.normal(1, 0.05, (N_BOXES, 3)), yaw[owner] + rng.normal(0, 0.08, N_BOXES)))
    return boxes, rng.uniform(0.05, 1.0, N_BOXES)


def footprints(boxes: np.ndarray) -> np.ndarray:
    c, s = np.cos(boxes[:, 6])[:, None], np.sin(boxes[:, 6])[:, None]
    u = np.array([0.5, 0.5, -0.5, -0.5]) * boxes[:, 3:4]
    v = np.array([-0.5, 0.5, 0.5, -0.5]) * boxes[:, 4:5]
    return shapely.polygons(np.stack((boxes[:, 0:1] + c * u - s * v, boxes[:, 1:2] + s * u + c * v), -1))


def shapely_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    polys = footprints(boxes[order])
    areas = shapely.area(polys)
    alive = np.ones(len(order), dtype=bool)
    kept = []
    for k in range(len(order)):
        if not alive[k]:
            continue
        kept.append(order[k])
        rest = np.flatnonzero(alive[k + 1:]) + k + 1
        if len(rest) == 0:
            break
        inter = shapely.area(shapely.intersection(polys[k], polys[rest]))
        iou = inter / (areas[k] + areas[rest] - inter)
        alive[rest[iou > threshold]] = False
    return np.array(kept, dtype=np.int64)


def main() -> None:
    boxes, scores = detector_scene()
    print_header(f"rotated NMS, {N_BOXES} detector-like boxes around {N_OBJECTS} objects, CPU")
    for threshold in (0.1, 0.5):
        keep = nms_bev(boxes, scores, threshold, pre_max=1000)
        ref = shapely_nms(boxes, scores, threshold)
        assert np.array_equal(keep, ref), "nms_bev and the shapely greedy NMS disagree"
        ours = time_ms(lambda t=threshold: nms_bev(boxes, scores, t, pre_max=1000), repeat=50, warmup=5)
        anchor = time_ms(lambda t=threshold: shapely_nms(boxes, scores, t), repeat=3, warmup=1)
        print_ratio(f"nms_bev thr {threshold} ({len(keep)} kept)", "shapely greedy", anchor, ours,
                    goal_ms=GOAL_MS)
    t3d = time_ms(lambda: nms_3d(boxes, scores, 0.1, pre_max=1000), repeat=50, warmup=5)
    tcircle = time_ms(lambda: circle_nms(boxes, scores, 1.0), repeat=50, warmup=5)
    print(f"{'nms_3d thr 0.1':<44s} {t3d:9.3f} ms")
    print(f"{'circle_nms radius 1 m':<44s} {tcircle:9.3f} ms")

    print_header("exact rotated BEV IoU, CPU")
    tmat = time_ms(lambda: rotated_iou_bev(boxes, boxes), repeat=10)
    print(f"{'IoU matrix 1000 x 1000 (circle prefilter)':<44s} {tmat:9.3f} ms")
    rng = np.random.default_rng(1)
    pairs = 10_000
    a = np.column_stack((rng.uniform(-3, 3, (pairs, 2)), np.zeros(pairs), rng.uniform(0.1, 5, (pairs, 3)),
                         rng.uniform(-np.pi, np.pi, pairs)))
    b = a[rng.permutation(pairs)]
    pa, pb = footprints(a), footprints(b)

    def shapely_pairs() -> np.ndarray:
        inter = shapely.area(shapely.intersection(pa, pb))
        return inter / (shapely.area(pa) + shapely.area(pb) - inter)

    err = float(np.max(np.abs(rotated_iou_bev_pairs(a, b) - shapely_pairs())))
    ours = time_ms(lambda: rotated_iou_bev_pairs(a, b), repeat=10)
    anchor = time_ms(shapely_pairs, repeat=3, warmup=1)
    print_ratio(f"IoU of {pairs} random pairs (max err {err:.1e})", "shapely", anchor, ours)
    gpu_section(boxes, scores)


def gpu_section(boxes: np.ndarray, scores: np.ndarray) -> None:
    """nms_bev on CUDA tensors (cuda/nms.cu through CuPy) against the CPU path, when a GPU is present."""
    try:
        import cupy  # noqa: F401
        import torch
    except ImportError:
        print("GPU: skipped (CuPy or torch not installed)")
        return
    if not torch.cuda.is_available():
        print("GPU: skipped (no CUDA device)")
        return
    print_header("rotated NMS, same scene, GPU (CuPy kernels) vs this CPU path")
    tb = torch.as_tensor(boxes, dtype=torch.float32, device="cuda")
    ts = torch.as_tensor(scores, dtype=torch.float32, device="cuda")
    b32 = boxes.astype(np.float32).astype(np.float64)
    s32 = scores.astype(np.float32)
    for threshold in (0.1, 0.5):
        keep = nms_bev(tb, ts, threshold, pre_max=1000).cpu().numpy()
        assert np.array_equal(keep, nms_bev(b32, s32, threshold, pre_max=1000)), "GPU and CPU NMS disagree"
        gpu = time_ms(lambda t=threshold: nms_bev(tb, ts, t, pre_max=1000), repeat=50, warmup=5,
                      sync=torch.cuda.synchronize)
        cpu = time_ms(lambda t=threshold: nms_bev(b32, s32, t, pre_max=1000), repeat=50, warmup=5)
        print_ratio(f"nms_bev GPU thr {threshold}", "CPU nms_bev", cpu, gpu)
    gmat = time_ms(lambda: rotated_iou_bev(tb, tb), repeat=20, sync=torch.cuda.synchronize)
    print(f"{'IoU matrix 1000 x 1000 GPU':<44s} {gmat:9.3f} ms")


if __name__ == "__main__":
    main()
