"""``fastpillars-ros simulate``: write simulated LiDAR street scenes in KITTI layout.

Scene ``i`` (file ``NNNNNN`` with ``NNNNNN = i``) is drawn from ``(seed, i)`` alone, so ``--start``/``--scenes``
ranges can be produced by separate processes or machines and give the same bytes as one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastpillars_ros.sim.generate import LABEL_STYLES
from fastpillars_ros.sim.sensors import SENSORS
from fastpillars_ros.sim.street import VRU_RANGES

__all__ = ["add_arguments", "generate", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (velodyne/, label_2/, calib/, sim_meta/)")
    parser.add_argument("--scenes", type=int, required=True, help="number of scenes to write")
    parser.add_argument("--seed", type=int, default=0, help="run seed (scene i is seeded from (seed, i))")
    parser.add_argument("--start", type=int, default=0, help="index of the first scene (default 0)")
    parser.add_argument("--sensor", choices=sorted(SENSORS), default="hdl64", help="LiDAR model (default hdl64)")
    parser.add_argument("--mount-height", type=float, default=None, metavar="M",
                        help="sensor height above the ground in metres (default: the sensor model's own; 1.73 puts "
                             "any sensor at the KITTI height the models are trained for)")
    parser.add_argument("--ramps", type=float, default=0.0,
                        help="probability (0..1) of a grade change on the road ahead of and behind the sensor each "
                             "(ramps, hills: objects far away stand off the sensor's ground plane; default 0)")
    parser.add_argument("--crossings", type=float, default=0.0,
                        help="probability (0..1) of vehicles crossing the road at right angles ahead of and behind "
                             "the sensor each (side-on cars, as at junctions; default 0)")
    parser.add_argument("--vru-ranges", choices=VRU_RANGES, default="uniform",
                        help="how far along the road pedestrians and cyclists stand: uniform out to 55-60 m "
                             "(default), or nearer, as in KITTI's labels (kitti)")
    parser.add_argument("--label-style", choices=LABEL_STYLES, default="tight",
                        help="label boxes tight around each object (default), or as KITTI's annotators draw them "
                             "(pedestrians longer, cyclists narrower; models meant for KITTI-labelled data)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="do not regenerate scenes whose sim_meta file already exists (resume a run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _one(job: tuple[str, int, int, str, float | None, dict[str, Any]]) -> tuple[int, int, int]:
    from dataclasses import replace

    from fastpillars_ros.sim.generate import simulate_frame, write_frame
    from fastpillars_ros.sim.sensors import get_sensor

    out, seed, index, sensor, mount_height, scene_options = job
    model = get_sensor(sensor)
    if mount_height is not None:
        model = replace(model, mount_height=mount_height)
    frame = simulate_frame(seed, index, model, **scene_options)
    if mount_height is not None:
        frame.meta["mount_height"] = mount_height
    write_frame(out, f"{index:06d}", frame)
    return index, len(frame.points), len(frame.types)


def generate(out: str | Path, scenes: int, seed: int = 0, start: int = 0, sensor: str = "hdl64", workers: int = 1,
             progress: bool = True, skip_existing: bool = False, ramps: float = 0.0, label_style: str = "tight",
             mount_height: float | None = None, crossings: float = 0.0, vru_ranges: str = "uniform") -> int:
    """Write scenes ``start .. start + scenes - 1``; returns the number written. ``mount_height``: the sensor's
    height above the ground in metres (None: the sensor model's own); ``ramps``, ``crossings``, ``vru_ranges``: see
    :func:`~fastpillars_ros.sim.street.street_scene`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    indices = [i for i in range(start, start + scenes)
               if not (skip_existing and (out / "sim_meta" / f"{i:06d}.json").is_file())]
    # What simulate_frame takes besides the scene's identity, passed through by name.
    scene_options = {"ramps": ramps, "label_style": label_style, "crossings": crossings, "vru_ranges": vru_ranges}
    jobs = [(str(out), seed, i, sensor, mount_height, scene_options) for i in indices]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="scene", desc=f"simulate {sensor}")
    done = 0
    if workers <= 1:
        for job in jobs:
            _one(job)
            done += 1
            if bar is not None:
                bar.update(1)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_one, jobs, chunksize=1):
                done += 1
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return done


def run(args: argparse.Namespace) -> int:
    if args.scenes < 0 or args.start < 0 or args.seed < 0:
        print("simulate: --scenes, --start and --seed must be >= 0", file=sys.stderr)
        return 2
    for flag, value in (("--ramps", args.ramps), ("--crossings", args.crossings)):
        if not 0.0 <= value <= 1.0:
            print(f"simulate: {flag} is a probability in [0, 1], got {value}", file=sys.stderr)
            return 2
    if args.mount_height is not None and not 0.3 <= args.mount_height <= 5.0:
        print(f"simulate: --mount-height is the sensor's height above the ground, 0.3..5 m, got {args.mount_height}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    n = generate(args.out, args.scenes, seed=args.seed, start=args.start, sensor=args.sensor,
                 workers=max(1, args.workers), progress=not args.no_progress, skip_existing=args.skip_existing,
                 ramps=args.ramps, label_style=args.label_style, mount_height=args.mount_height,
                 crossings=args.crossings, vru_ranges=args.vru_ranges)
    dt = time.perf_counter() - t0
    print(f"simulate: wrote {n} scene(s) to {args.out} in {dt:.1f} s ({dt / max(n, 1):.2f} s/scene)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastpillars_ros.sim.cli``, the same as ``fastpillars-ros simulate``."""
    from fastpillars_ros.cli import main as cli_main

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
