"""Detector latency per stage and end to end (``make bench``).

CPU: the tiny and kitti configs on real scans (KITTI HDL-64 frames, a 64-beam outdoor PCD). Anchor: the
same pipeline with the network in training form (multi-branch RepVGG, BN not folded), measured side by
side, so the ratio shows what fusion buys. Goal: tiny end to end <= 150 ms on the 2-core CI machine.
GPU (when one is present): tiny360 on a KITTI scan (torch fp32, goal <= 3 ms) and nuscenes_official on a
250k-point input (torch fp16, goal <= 10 ms on an H100-class card), each against the same Detector without the
CUDA graph; ``gpu_only.py`` adds the torch path from before issue 18 as the anchor.
"""

from __future__ import annotations

import logging
import sys
import tempfile
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


# The GPU rows: (config, precision, input, goal ms). tiny360 on a real scan, the official model on 250k points.
GPU_CASES = (("tiny360", "fp32", "kitti 1", 3.0), ("nuscenes_official", "fp16", "250k uniform", 10.0))


def gpu_points(config: str, source: str) -> np.ndarray:
    """The input of a GPU row: a real scan by name (see :func:`_scans`), or ``250k uniform``: 250,000 points
    spread over the official model's range (x, y, z, intensity 0-255, dt 0-0.45 s)."""
    if source != "250k uniform":
        return _scans()[source]
    rng = np.random.default_rng(0)
    n = 250_000
    return np.stack([rng.uniform(-54, 54, n), rng.uniform(-54, 54, n), rng.uniform(-3, 1, n),
                     rng.uniform(0, 255, n), rng.uniform(0, 0.45, n)], 1).astype(np.float32)


def random_checkpoint(config: str, path: Path) -> Path:
    """Seeded random weights saved to ``path``: the Detectors compared in a row (here and in the anchor
    process) run the same network, so they decode and suppress the same candidates."""
    from fastpillars_ros.model import build_model

    torch.manual_seed(0)
    torch.save(build_model(config).state_dict(), path)
    return path


def gpu_detector_times(det: Detector, points: np.ndarray) -> tuple[float, dict[str, float]]:
    """(median end-to-end ms over 50 frames, stage medians over 20): the numbers of one GPU row."""
    total = time_ms(lambda: det.detect(points), repeat=50, sync=torch.cuda.synchronize)
    return total, _stage_medians(det, points, 20)


def bench_gpu(checkpoint_dir: Path) -> list[dict]:
    """The GPU rows of GPU_CASES: this path (CUDA graph, one-pass decode, one-launch NMS) against the same
    Detector with graphs off; returns one dict per row (``test/bench/gpu_only.py`` adds the anchor of the
    torch path before issue 18, measured in its own process, and writes the rows)."""
    rows = []
    for config, precision, source, goal in GPU_CASES:
        pts = gpu_points(config, source)
        ckpt = random_checkpoint(config, checkpoint_dir / f"{config}.pt")
        kwargs = dict(device="cuda", backend="torch", precision=precision, max_points=max(len(pts), 300_000))
        det = Detector(config, ckpt, **kwargs)
        eager = Detector(config, ckpt, cuda_graphs=False, **kwargs)
        total, stages = gpu_detector_times(det, pts)
        eager_total, _ = gpu_detector_times(eager, pts)
        print(f"{config} {source} torch {precision} stages ms: " + "  ".join(f"{k} {stages[k]:.2f}" for k in STAGES))
        print_ratio(f"  {config} torch {precision} GPU", "same without CUDA graph", eager_total, total, goal)
        rows.append({"config": config, "precision": precision, "input": f"{source} ({len(pts):,} pts)",
                     "points": pts, "checkpoint": ckpt, "goal_ms": goal, "total_ms": total, "stages": stages,
                     "no_graph_ms": eager_total, "detections": det.detect(pts)})
    return rows


def main() -> None:
    print_header("Detector latency (CPU)")
    bench_cpu("tiny", repeat=10, goal=150.0)
    bench_cpu("kitti", repeat=2, goal=None)
    if torch.cuda.is_available():
        print_header("Detector latency (GPU)")
        with tempfile.TemporaryDirectory() as tmp:
            bench_gpu(Path(tmp))
    else:
        print("\nno CUDA device: GPU figures not measured in this run")


if __name__ == "__main__":
    main()
