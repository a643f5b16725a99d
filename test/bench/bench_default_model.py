"""The embedded default against the previous one (``make bench``): tiny360 (360 degrees, real + simulated training) end
to end on real ~120k-point KITTI HDL-64 scans, against ``tiny`` (front 51.2 m only, the default before it) measured
side by side in the same run, both with the CPU defaults (MAPE in torch, dense part in onnxruntime where installed,
OpenVINO bf16 on a processor with AMX). Runs alternate between the two detectors so that other load on the machine
hits both alike. What the 360-degree canvas costs on today's code paths, for information: issue #14's speed goal
(within 1.5x of the default path *as it was when the issue was filed*: tiny, fp32, the MAPE of then) is measured by
``bench_cpu_default.py``, whose anchor is that path.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_header, print_ratio
from real_data import real_file

from fastpillars_ros.config import DEFAULT_MODEL
from fastpillars_ros.detector import STAGES, Detector
from fastpillars_ros.pointcloud import read_points

logging.basicConfig(level=logging.ERROR)
ANCHOR = "tiny"


def _interleaved(a: Detector, b: Detector, points: np.ndarray, repeat: int) -> tuple[list[dict], list[dict]]:
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(a.detect(points).timings)
        tb.append(b.detect(points).timings)
    return ta, tb


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def main(repeat: int = 15) -> None:
    print_header(f"Embedded default ({DEFAULT_MODEL}) vs the previous default ({ANCHOR}), CPU, end to end")
    new, old = Detector(DEFAULT_MODEL, device="cpu"), Detector(ANCHOR, device="cpu")
    print(f"back ends: {DEFAULT_MODEL} {new.backend}, {ANCHOR} {old.backend}; {repeat} alternating runs per scan")
    for frame in ("000000", "000001", "000010"):
        pts = read_points(real_file(f"kitti/training/velodyne/{frame}.bin"))
        t0 = time.perf_counter()
        tn, to = _interleaved(new, old, pts, repeat)
        for name, runs in ((DEFAULT_MODEL, tn), (ANCHOR, to)):
            split = "  ".join(f"{k} {_median(runs, k):.1f}" for k in STAGES)
            print(f"{name:<8s} kitti {frame} ({len(pts):,} pts) stages ms: {split}")
        a, b = _median(to, "total"), _median(tn, "total")
        print_ratio(f"  {DEFAULT_MODEL} end to end, kitti {frame}", f"{ANCHOR} (previous default)", a, b)
        print(f"  ({time.perf_counter() - t0:.1f} s for this scan)")


if __name__ == "__main__":
    main()
