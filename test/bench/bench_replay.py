"""Replay throughput (``make bench``): ``replay --max-rate`` against an echo detector vs reading the bag alone.

Anchor: reading the sample bag's clouds with rosbags (raw CDR bytes, and decoded to (N, 4) numpy arrays),
i.e. the fastest the replay could go if DDS and the detector cost nothing.
Candidate: :func:`fastpillars_ros.tools.replay.replay` with ``max_rate`` (back-pressure: each cloud waits for the
answer to the previous one) against the echo detector of ``test/test_replay.py`` (a separate process that
answers every cloud with a Detection3DArray carrying its header), over loopback DDS: frames/s and the
latency percentiles (cloud sent -> answer received).

Goal: the replay machinery must not be the bottleneck for the tiny detector (~10 frames/s on 2 cores), so
>= 50 frames/s with ~60k-point clouds and p95 latency <= 50 ms.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_header

from fastpillars_ros import bags
from fastpillars_ros.ros.rosenv import apply_loopback_environment

GOAL_FPS = 50.0
GOAL_P95_MS = 50.0
LOOPS = 3


def read_rate(decode: bool) -> tuple[float, int]:
    """Frames/s reading every cloud of the sample bag (best of 3)."""
    best = 0.0
    n = 0
    for _ in range(3):
        t0 = time.perf_counter()
        if decode:
            n = sum(1 for _ in bags.read_clouds(bags.SAMPLE_BAG))
        else:
            n = sum(1 for _ in bags.iter_raw(bags.SAMPLE_BAG, None))
        best = max(best, n / (time.perf_counter() - t0))
    return best, n


def main() -> int:
    apply_loopback_environment()
    from ros_processes import spawn_python, stop
    from test_replay import DETECTIONS, ECHO, TOPIC

    from fastpillars_ros.tools.replay import ReplayOptions, replay

    print_header(f"replay --max-rate vs bag reading ({bags.SAMPLE_BAG.name}, {LOOPS} loops)")
    raw_fps, n = read_rate(decode=False)
    dec_fps, _ = read_rate(decode=True)
    clouds = list(bags.read_clouds(bags.SAMPLE_BAG))
    mean_points = sum(len(c.points) for c in clouds) / len(clouds)
    print(f"sample bag: {n} clouds, {mean_points:.0f} points each on average")
    print(f"anchor  bag read (raw CDR)          {raw_fps:9.1f} frames/s")
    print(f"anchor  bag read + decode to numpy  {dec_fps:9.1f} frames/s")

    echo = spawn_python(ECHO)
    try:
        if echo.stdout.readline().strip() != "ready":
            print("echo detector did not start:", stop(echo)[1][-2000:])
            return 1
        opts = ReplayOptions(bag=bags.SAMPLE_BAG, publish_topic=TOPIC, detections_topic=DETECTIONS,
                             max_rate=True, loops=LOOPS, timeout_s=5.0, wait_s=30.0, quiet=True)
        stats = replay(opts)
    finally:
        stop(echo)
    fps = stats.answered_fps
    p50, p95 = stats.latency(50), stats.latency(95)
    print(f"replay  --max-rate vs echo          {fps:9.1f} frames/s   latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
          f"max {stats.latency(100):.1f} ms")
    print(f"        sent {stats.sent}, answered {stats.answered}, dropped {stats.dropped}, late {stats.late}")
    print(f"replay / decoded bag read: x{fps / dec_fps:.2f} of the anchor's frame rate")
    ok = fps >= GOAL_FPS and p95 <= GOAL_P95_MS and stats.dropped == 0
    print(f"goal >= {GOAL_FPS:g} frames/s, p95 <= {GOAL_P95_MS:g} ms, no drops: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
