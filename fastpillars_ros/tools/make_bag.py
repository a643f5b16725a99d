"""``fastpillars-ros make-bag`` and ``make-sample-bag``: KITTI folders and the simulator -> rosbag2 files (the
bag I/O itself is the library's :mod:`fastpillars_ros.bags`)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastpillars_ros.bags import DEFAULT_START_NS, SAMPLE_BAG, BagSummary, kitti_to_bag

__all__ = ["SAMPLE_RECIPE", "MakeBag", "MakeSampleBag", "add_arguments", "make_sample_bag", "run"]

SAMPLE_RECIPE: dict[str, Any] = {
    "seed": 900000, "frames": 30, "sensor": "hdl64", "model": "tiny", "quantize": 1.0 / 64.0, "level": 19,
    "rate": 10.0, "topic": "/points", "frame_id": "velodyne",
    # ground truth drawn as the default model learnt to draw boxes (KITTI's annotation habits)
    "label_style": "kitti",
}


def make_sample_bag(out: str | Path = SAMPLE_BAG, *, workdir: str | Path | None = None, frames: int | None = None,
                    workers: int = 1, progress: bool = True) -> BagSummary:
    """Regenerate the sample bag from :data:`SAMPLE_RECIPE` (deterministic: same bytes each run)."""
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.sim.cli import generate

    r = SAMPLE_RECIPE
    n = int(r["frames"] if frames is None else frames)
    pc_range = list(load_model_config(r["model"]).pc_range)
    with tempfile.TemporaryDirectory(prefix="sample-bag-") as tmp:
        kitti = Path(workdir) if workdir is not None else Path(tmp) / "kitti"
        generate(kitti, n, seed=r["seed"], sensor=r["sensor"], workers=workers, progress=progress,
                 skip_existing=True, label_style=r["label_style"])
        return kitti_to_bag(kitti, out, topic=r["topic"], frame_id=r["frame_id"], rate=r["rate"], max_frames=n,
                            compress=True, level=r["level"], crop=pc_range, quantize=r["quantize"],
                            overwrite=True, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``make-bag`` options."""
    parser.add_argument("--kitti", required=True, type=Path, help="KITTI-layout folder (velodyne/, label_2/, calib/)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output bag: FILE.mcap (one file) or a folder name (rosbag2 directory)")
    parser.add_argument("--topic", default="/points", help="PointCloud2 topic (default /points)")
    parser.add_argument("--frame-id", default="velodyne", help="header frame_id (default velodyne)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second of bag time (default 10)")
    parser.add_argument("--max-frames", type=int, default=None, help="write at most N frames")
    parser.add_argument("--compress", action="store_true", help="zstd chunk compression")
    parser.add_argument("--compress-level", type=int, default=None, help="zstd level (with --compress)")
    parser.add_argument("--crop", type=float, nargs=6, default=None,
                        metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"), help="keep only points in this box")
    parser.add_argument("--quantize", type=float, default=None,
                        help="round x/y/z to this step in metres (and intensity to 1/256) to compress better")
    parser.add_argument("--start-time", type=float, default=DEFAULT_START_NS / 1e9,
                        help="bag time / stamp of the first frame in seconds since the epoch")
    parser.add_argument("--force", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    """``make-bag``."""
    if args.rate <= 0:
        print("make-bag: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        summary = kitti_to_bag(args.kitti, args.out, topic=args.topic, frame_id=args.frame_id, rate=args.rate,
                               max_frames=args.max_frames, compress=args.compress, level=args.compress_level,
                               crop=args.crop, quantize=args.quantize, start_ns=round(args.start_time * 1e9),
                               overwrite=args.force, progress=sys.stderr.isatty())
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"make-bag: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


class MakeBag:
    """``fastpillars-ros make-bag``."""

    add_arguments = staticmethod(add_arguments)
    run = staticmethod(run)


class MakeSampleBag:
    """``fastpillars-ros make-sample-bag``: regenerate the shipped sample bag."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=SAMPLE_BAG, help=f"output .mcap (default {SAMPLE_BAG})")
        parser.add_argument("--frames", type=int, default=None,
                            help=f"number of frames (default {SAMPLE_RECIPE['frames']})")
        parser.add_argument("--workdir", type=Path, default=None,
                            help="keep the simulated KITTI folder here (default: a temporary folder)")
        parser.add_argument("--workers", type=int, default=1, help="simulator processes")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        summary = make_sample_bag(args.out, workdir=args.workdir, frames=args.frames, workers=max(1, args.workers),
                                  progress=sys.stderr.isatty())
        print(summary)
        return 0
