"""Only the GPU rows of the benchmarks, for a short lease on a GPU machine (``scripts/gpu_check.sh``).

``make bench`` runs these same rows inside the full benchmarks when torch sees a GPU; this script skips the
CPU anchors that take most of that time. Rows (each against the anchor it names, measured in this run):

* pillarize of a real KITTI scan on the GPU (torch and CuPy back ends) vs the CPU path;
* rotated NMS of a 1,000-box detector-like scene, CuPy kernels vs the CPU path;
* Detector end to end: tiny on real KITTI scans, torch fp32 on the GPU vs the CPU; nuscenes_official on a
  250k-point input, TensorRT fp16 (torch fp16 where TensorRT is missing) vs torch fp32 (goal <= 10 ms).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_detector
import bench_nms
import bench_pillarize
from common import print_header

logging.basicConfig(level=logging.WARNING)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    print_header("GPU rows: pillarize (real KITTI scan)")
    headline = [p for name, p, _, _ in bench_pillarize.scans() if name.endswith("000001.bin")]
    bench_pillarize.bench_gpu(headline[0])
    bench_nms.gpu_section(*bench_nms.detector_scene())
    print_header("GPU rows: Detector end to end")
    bench_detector.bench_gpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
