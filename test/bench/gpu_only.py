"""Only the GPU rows of the benchmarks, for a short lease on a GPU machine (``scripts/gpu_check.sh``).

``make bench`` runs the same Detector rows inside the full benchmarks when torch sees a GPU; this script skips
the CPU anchors that take most of that time and adds the anchor of issue 18. Rows:

* pillarize of a real KITTI scan on the GPU (torch and CuPy back ends) vs the CPU path;
* rotated NMS of a 1,000-box detector-like scene, CuPy kernels vs the CPU path;
* Detector end to end (``bench_detector.GPU_CASES``): tiny360 on a KITTI scan (torch fp32, goal <= 3 ms) and
  nuscenes_official on 250k points (torch fp16, goal <= 10 ms), each against (a) the torch path before issue
  18 - the package at ``$FASTPILLARS_BASELINE`` (gpu_check.sh extracts it from git), run in its own process
  on the same weights and points - and (b) the same Detector without the CUDA graph. Both processes run
  one after the other on the same card, so the ratio is a same-run comparison.

The rows for BENCHMARKS.md (with the card's name) are written to ``<--out>/benchmark_rows.md``.

    python test/bench/gpu_only.py --out out/gpu_check
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from common import hardware, print_header, print_ratio, time_ms  # noqa: E402

logging.basicConfig(level=logging.WARNING)
STAGES = ("pillarize", "encode", "dense", "decode", "nms")


def run_anchor(args: argparse.Namespace) -> int:
    """``--anchor``: time whatever ``fastpillars_ros`` is first on the path (the baseline package) on the
    given points and weights; write end-to-end and stage medians and the detections to ``args.result``."""
    from fastpillars_ros.detector import Detector

    points = np.load(args.points)
    det = Detector(args.config, args.checkpoint, device="cuda", backend="torch", precision=args.precision,
                   max_points=max(len(points), 300_000))
    total = time_ms(lambda: det.detect(points), repeat=50, sync=torch.cuda.synchronize)
    runs = [det.detect(points).timings for _ in range(20)]
    out = det.detect(points)
    np.savez(args.result, total=total, boxes=out.boxes, scores=out.scores, labels=out.labels,
             **{f"stage_{k}": float(np.median([r[k] for r in runs])) for k in STAGES})
    return 0


def anchor_row(row: dict, baseline: Path, tmp: Path) -> dict | None:
    """Run the baseline package on the row's points and weights in a fresh process; None when it fails."""
    points, result = tmp / f"{row['config']}.npy", tmp / f"{row['config']}_anchor.npz"
    np.save(points, row["points"])
    # The baseline first: its fastpillars_ros shadows this checkout's.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(baseline), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--anchor", "--config", row["config"], "--precision",
           row["precision"], "--points", str(points), "--checkpoint", str(row["checkpoint"]), "--result", str(result)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    if proc.returncode != 0:
        print(f"anchor failed for {row['config']}:\n{proc.stderr[-2000:]}")
        return None
    data = np.load(result)
    return {"total_ms": float(data["total"]), "stages": {k: float(data[f"stage_{k}"]) for k in STAGES},
            "boxes": data["boxes"], "scores": data["scores"], "labels": data["labels"]}


def same_boxes(row: dict, anchor: dict) -> str:
    """How the two paths' detections compare (they run the same weights on the same points)."""
    a, b = row["detections"], anchor
    if len(a) != len(b["scores"]):
        return f"{len(a)} vs {len(b['scores'])} detections"
    if len(a) == 0:
        return "both empty"
    return (f"{len(a)} detections, labels {'equal' if np.array_equal(a.labels, b['labels']) else 'DIFFER'}, "
            f"max |box diff| {np.abs(a.boxes - b['boxes']).max():.1e}, max |score diff| "
            f"{np.abs(a.scores - b['scores']).max():.1e}")


def markdown_row(row: dict, anchor: dict | None) -> str:
    """One row of the BENCHMARKS.md GPU table: stages, total and both anchors."""
    s = row["stages"]
    before = "not measured"
    if anchor is not None:
        a = anchor["stages"]
        before = (f"before issue 18 {anchor['total_ms']:.1f} ms (dense {a['dense']:.2f}, decode {a['decode']:.2f}, "
                  f"nms {a['nms']:.2f}): x{anchor['total_ms'] / row['total_ms']:.1f}")
    return (f"| {row['config']}, {row['input']} | torch {row['precision']}, GPU, CUDA graph | "
            + " | ".join(f"{s[k]:.2f}" for k in STAGES)
            + f" | {row['total_ms']:.1f} ms | {before}; without graph {row['no_graph_ms']:.1f} ms |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu_check"))
    parser.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    for name in ("config", "precision", "points", "checkpoint", "result"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    if args.anchor:
        return run_anchor(args)

    import bench_detector
    import bench_nms
    import bench_pillarize

    print_header("GPU rows: pillarize (real KITTI scan)")
    headline = [p for name, p, _, _ in bench_pillarize.scans() if name.endswith("000001.bin")]
    bench_pillarize.bench_gpu(headline[0])
    bench_nms.gpu_section(*bench_nms.detector_scene())
    print_header("GPU rows: Detector end to end")
    baseline = os.environ.get("FASTPILLARS_BASELINE")
    lines = [f"GPU rows (`test/bench/gpu_only.py`, {time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name(0)}; "
             f"{hardware()}; median of 50 frames, stage medians of 20, seeded random weights):", "",
             "| config, input | back end | pillarize | encode | dense | decode | nms | total | anchors (same run) |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for row in bench_detector.bench_gpu(Path(tmp)):
            anchor = None if not baseline else anchor_row(row, Path(baseline), Path(tmp))
            if anchor is not None:
                print_ratio(f"  {row['config']} torch {row['precision']} GPU", "torch path before issue 18",
                            anchor["total_ms"], row["total_ms"], row["goal_ms"])
                print(f"  same points and weights: {same_boxes(row, anchor)}")
            lines.append(markdown_row(row, anchor))
    if not baseline:
        lines.append("\n(no FASTPILLARS_BASELINE: the torch path before issue 18 was not measured)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark_rows.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
