"""``fastpillars-ros demo`` (``make demo``): the whole product on the embedded default, end to end.

1. starts the detector node (``fastpillars-ros launch``: the tiny model with the shipped checkpoint) on
   simulated time, loopback-only DDS;
2. replays the sample bag shipped with the package (``fastpillars_ros/data/sample.mcap``: simulated HDL-64
   street scenes with their ground truth) with back-pressure, recording the node's answers;
3. prints a summary: frames sent/answered, detections per class against ground truth, latency p50/p95,
   KITTI-style AP of the answers against the bag's ground truth;
4. writes BEV pictures (points by height, ground truth dashed, detections with class and score) of a few
   frames, an overview image and the precision-recall curves to ``out/demo/``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastpillars_ros.tools.replay import ReplayStats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastpillars_ros.bags import SAMPLE_BAG

    parser.add_argument("--bag", type=Path, default=SAMPLE_BAG, help="bag to replay (default: the sample bag)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for pictures and results")
    parser.add_argument("--model", default="", help="model config (default: the node's, i.e. tiny)")
    parser.add_argument("--checkpoint", default="", help="checkpoint (default: the one shipped for the model)")
    parser.add_argument("--max-frames", type=int, default=None, help="replay only this many frames")
    parser.add_argument("--pictures", type=int, default=6, help="frames drawn in the overview")
    parser.add_argument("--start-timeout-s", type=float, default=120.0,
                        help="how long to wait for the node to come up")


def _start_node(model: str, checkpoint: str, log_path: Path, params: Sequence[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fastpillars_ros.tools.launch", "--loopback", "--use-sim-time",
           "--input-topic", "/points", "-p", "cpu_threads:=2"]
    for param in params:
        cmd += ["-p", param]
    if model:
        cmd += ["--model", model]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def replay_through_node(bag: Path, record: Path, node_log: Path, *, model: str = "", checkpoint: str = "",
                        max_frames: int | None = None, start_timeout_s: float = 120.0,
                        params: Sequence[str] = ()) -> ReplayStats:
    """Start the detector node as its own process (loopback DDS, simulated time), replay ``bag`` into it
    with back-pressure and ``/clock``, record its answers to ``record`` and score them against the bag's
    ``/ground_truth``; the node is stopped afterwards. ``params``: more node parameters (``NAME:=VALUE``).
    Used by the demo and the CI regression test."""
    from fastpillars_ros.ros.rosenv import apply_loopback_environment
    from fastpillars_ros.tools.launch import stop_process
    from fastpillars_ros.tools.replay import ReplayOptions, replay

    apply_loopback_environment()
    if record.exists():
        shutil.rmtree(record) if record.is_dir() else record.unlink()
    node = _start_node(model, checkpoint, node_log, params)
    try:
        return replay(ReplayOptions(bag=bag, max_rate=True, clock=True, record=record, loopback=True,
                                    evaluate=True, wait_s=start_timeout_s, timeout_s=10.0, max_frames=max_frames))
    finally:
        stop_process(node)


def _summary(stats: ReplayStats, record: Path, bag: Path) -> str:
    from fastpillars_ros.bags import read_detections
    from fastpillars_ros.tools.regression import detections_from_bag

    answered = detections_from_bag(record, "/detections")
    stamps = {f.stamp_ns for f in answered}
    truth = [t for t in read_detections(bag) if t.stamp_ns in stamps]
    det_count = collections.Counter(n for f in answered for n in f.names)
    gt_count = collections.Counter(n for t in truth for n in t.names)
    lines = ["", "=== demo summary",
             f"frames: sent {stats.sent}, answered {stats.answered}, dropped {stats.dropped}",
             f"latency (cloud stamp -> Detection3DArray received): p50 {stats.latency(50):.1f} ms, "
             f"p95 {stats.latency(95):.1f} ms",
             f"{'class':<12s} {'detections':>10s} {'ground truth':>12s}"]
    for name in sorted(set(det_count) | set(gt_count)):
        lines.append(f"{name:<12s} {det_count[name]:>10d} {gt_count[name]:>12d}")
    if stats.evaluation is not None:
        ev = stats.evaluation
        lines.append(f"mean AP (R40) BEV / 3D: strict {ev.mean_ap('bev', 0):.1f} / {ev.mean_ap('3d', 0):.1f}, "
                     f"loose {ev.mean_ap('bev', 1):.1f} / {ev.mean_ap('3d', 1):.1f} (per-class table above)")
    return "\n".join(lines)


def _pictures(bag: Path, record: Path, out: Path, count: int, answered: int) -> list[Path]:
    from fastpillars_ros.tools.viz import load_view, overview, render

    frames = sorted({round(i * (answered - 1) / max(count - 1, 1)) for i in range(count)}) if answered else []
    views = [load_view(bag, k, detections=record) for k in frames]
    paths = [render(v, out / f"frame_{k:03d}.png", score_threshold=0.3) for k, v in zip(frames, views, strict=True)]
    if views:
        paths.append(overview(views, out / "overview.png", score_threshold=0.3,
                              title="fastpillars_ros demo: ground truth dashed, detections solid (score >= 0.3)"))
    return paths


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    record, node_log = args.out / "detections.mcap", args.out / "node.log"
    print(f"[demo] starting the detector node (log: {node_log}) and replaying {args.bag} ...", flush=True)
    t0 = time.monotonic()
    stats = replay_through_node(args.bag, record, node_log, model=args.model, checkpoint=args.checkpoint,
                                max_frames=args.max_frames, start_timeout_s=args.start_timeout_s)
    if stats.answered == 0:
        print(f"[demo] the node answered no frame; see {node_log}", file=sys.stderr)
        return 1
    print(stats.format())
    print(_summary(stats, record, args.bag))
    if stats.evaluation is not None:
        from fastpillars_ros.evaluation import plot_pr_curves

        plot_pr_curves(stats.evaluation, args.out / "pr_curves.png")
    pictures = _pictures(args.bag, record, args.out, args.pictures, stats.answered)
    print(f"\n[demo] done in {time.monotonic() - t0:.0f} s; pictures: "
          + ", ".join(str(p) for p in pictures) + f", {args.out / 'pr_curves.png'}")
    return 0
