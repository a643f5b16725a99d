"""Detector latency per stage and end to end (``make bench``).

CPU: the tiny and kitti configs on real scans (KITTI HDL-64 frames, a 64-beam outdoor PCD). Anchor: the
same pipeline with the network in training form (multi-branch RepVGG, BN not folded), measured side by
side, so the ratio shows what fusion buys. Goal: tiny end to end <= 150 ms on the 2-core CI machine.
GPU (when one is present): tiny on the same scans, torch fp32 on the GPU against the same Detector on the CPU;
nuscenes_official on a 250k-point input, TensorRT fp16 (or torch fp16 when TensorRT is missing) against torch
fp32 in the same run; goal <= 10 ms on an H100-class card.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_header, print_ratio, time_ms
from real_data import real_file

from fastpillars_ros.detector import STAGES, Detector
from fastpillars_ros.pointcloud import read_points

logging.basicConfig(level=logging.ERROR)


def _scans() -> dict[str, np.ndarray]:
    scans = {f"kitti {i}": read_points(real_file(f"kitti/training/velodyne/00000{i}.bin")) for i in (0, 1)}
    p64 = read_points(real_file("pcd_sensorscalibration/p64.pcd"))
    p64[:, 3] /= 255.0  # 0..255 driver intensity onto the KITTI-like 0..1 scale the models use
    scans["p64 (64-beam, 77k)"] = p64
    return scans


def _stage_medians(det: Detector, points: np.ndarray, repeat: int) -> dict[str, float]:
    runs = [det.detect(points).timings for _ in range(repeat)]
    return {k: float(np.median([r[k] for r in runs])) for k in (*STAGES, "total")}


def bench_cpu(config: str, repeat: int, goal: float | None) -> None:
    fused = Detector(config, device="cpu", warmup=True)
    unfused = Detector(config, device="cpu", warmup=False)
    unfused.model = unfused._dense = _unfused_like(unfused)
    for name, pts in _scans().items():
        stages = _stage_medians(fused, pts, repeat)
        anchor = time_ms(lambda p=pts: unfused.detect(p), repeat=max(2, repeat // 2), warmup=1)
        split = "  ".join(f"{k} {stages[k]:.1f}" for k in STAGES)
        print(f"{config:<6s} {name:<20s} ({len(pts):,} pts) stages ms: {split}")
        print_ratio(f"  {config} end to end", "training-form network", anchor, stages["total"], goal)


def _unfused_like(det: Detector) -> torch.nn.Module:
    from fastpillars_ros.model import build_model

    model = build_model(det.config).eval()
    model.load_state_dict({k: v for k, v in det.model.state_dict().items() if k in model.state_dict()},
                          strict=False)
    return model


def bench_gpu() -> None:
    cpu = Detector("tiny", device="cpu")
    gpu = Detector("tiny", device="cuda", backend="torch", precision="fp32")
    sync = torch.cuda.synchronize
    for name, pts in _scans().items():
        a = time_ms(lambda p=pts: cpu.detect(p), repeat=10)
        b = time_ms(lambda p=pts: gpu.detect(p), repeat=50, sync=sync)
        split = _stage_medians(gpu, pts, 20)
        print(f"tiny GPU {name:<20s} stages ms: " + "  ".join(f"{k} {split[k]:.2f}" for k in STAGES))
        print_ratio(f"  tiny torch fp32 GPU, {name}", "same Detector on the CPU", a, b)
    rng = np.random.default_rng(0)
    n = 250_000
    pts = np.stack([rng.uniform(-54, 54, n), rng.uniform(-54, 54, n), rng.uniform(-3, 1, n),
                    rng.uniform(0, 255, n), rng.uniform(0, 0.45, n)], 1).astype(np.float32)
    fp32 = Detector("nuscenes_official", device="cuda", backend="torch", precision="fp32", max_points=n)
    fast = Detector("nuscenes_official", device="cuda", backend="auto", precision="fp16", max_points=n)
    a = time_ms(lambda: fp32.detect(pts), repeat=20, sync=sync)
    b = time_ms(lambda: fast.detect(pts), repeat=50, sync=sync)
    split = _stage_medians(fast, pts, 20)
    print(f"nuscenes_official {fast.backend} fp16 stages ms: " + "  ".join(f"{k} {split[k]:.2f}" for k in STAGES))
    print_ratio(f"nuscenes_official {fast.backend} fp16, 250k pts", "torch fp32", a, b, 10.0)


def main() -> None:
    print_header("Detector latency (CPU)")
    bench_cpu("tiny", repeat=10, goal=150.0)
    bench_cpu("kitti", repeat=2, goal=None)
    if torch.cuda.is_available():
        print_header("Detector latency (GPU)")
        bench_gpu()
    else:
        print("\nno CUDA device: GPU figures not measured in this run")


if __name__ == "__main__":
    main()
