"""SweepBuffer.push: accumulating 10 sweeps of 35,000 points (x, y, z, intensity) per frame.

Anchor: a plain numpy transform-and-concatenate of the same data, re-transforming all 9 past sweeps
from scratch every frame in float64 (``inv(T_now) @ T_past`` by ``np.linalg.inv``, homogeneous points,
then ``np.concatenate`` with a dt column), as a hand-written callback would. The candidate does the
whole per-frame job: continuity checks, composition, ego-box filtering of the new sweep for later,
transform in float32 into a preallocated output, dt column. Both outputs are checked equal (to 1 mm)
before timing. GPU rows (when torch sees one): numpy input moved onto the device by the buffer, and
input already on the device.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run as a script

from common import print_header, print_ratio, time_ms

from fastpillars_ros.ros.pose_sources import make_transform, quat_from_rpy
from fastpillars_ros.sweeps import SweepBuffer

N = 35_000
SWEEPS = 10
HZ = 20.0
T0 = 1_700_000_000.0
FRAMES = 40


def pose(t: float) -> np.ndarray:
    return make_transform((100.0 + 10.0 * t, 20.0 + math.sin(t), 0.0), quat_from_rpy(0.0, 0.0, 0.3 * t))


def make_frames() -> list[tuple[np.ndarray, float, np.ndarray]]:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(FRAMES):
        pts = np.empty((N, 4), np.float32)
        pts[:, :2] = rng.uniform(-50, 50, (N, 2))
        pts[:, 2] = rng.uniform(-2, 3, N)
        pts[:, 3] = rng.uniform(0, 255, N)
        frames.append((pts, k / HZ, pose(k / HZ)))
    return frames


class NaiveAccumulator:
    """The anchor: keep raw sweeps with their poses, re-transform everything every frame in float64."""

    def __init__(self, num_sweeps: int):
        self.sweeps: list[tuple[np.ndarray, float, np.ndarray]] = []
        self.num_sweeps = num_sweeps

    def push(self, pts: np.ndarray, stamp: float, pose_now: np.ndarray) -> np.ndarray:
        self.sweeps = [(pts, stamp, pose_now), *self.sweeps][:self.num_sweeps]
        inv_now = np.linalg.inv(pose_now)
        parts = []
        for p, s, pose_past in self.sweeps:
            p64 = p.astype(np.float64)
            if s != stamp:
                keep = ~((np.abs(p64[:, 0]) < 1.0) & (np.abs(p64[:, 1]) < 1.0))
                p64 = p64[keep]
            hom = np.hstack([p64[:, :3], np.ones((len(p64), 1))])
            xyz = (hom @ (inv_now @ pose_past).T)[:, :3]
            parts.append(np.hstack([xyz, p64[:, 3:], np.full((len(p64), 1), stamp - s)]))
        return np.concatenate(parts).astype(np.float32)


def run(push, frames, start: int = 0):
    """A callable pushing the next frame each call (stamps keep increasing across the cycle)."""
    counter = itertools.count(start)

    def step():
        k = next(counter)
        pts, t, p = frames[k % FRAMES]
        lap = k // FRAMES
        t_total = lap * FRAMES / HZ + t
        return push(pts, T0 + t_total, _lapped(p, lap))

    return step


_LAP_CACHE: dict = {}


def _lapped(p: np.ndarray, lap: int) -> np.ndarray:
    """The trajectory continues smoothly after a cycle of frames: shift by the last frame's motion."""
    if lap == 0:
        return p
    key = (id(p), lap)
    if key not in _LAP_CACHE:
        step = pose(FRAMES / HZ) @ np.linalg.inv(pose(0.0))
        _LAP_CACHE[key] = np.linalg.matrix_power(step, lap) @ p
    return _LAP_CACHE[key]


def main() -> None:
    frames = make_frames()
    print_header(f"SweepBuffer.push, {SWEEPS} sweeps x {N:,} points (x, y, z, intensity) -> "
                 f"{SWEEPS * N:,} x 5 float32")
    naive, buf = NaiveAccumulator(SWEEPS), SweepBuffer(SWEEPS, max_time_gap_s=1.0)
    for k in range(SWEEPS + 2):  # fill both, compare the outputs
        pts, t, p = frames[k]
        a, b = naive.push(pts, T0 + t, p), buf.push(pts, T0 + t, p)
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-3, np.abs(a - b).max()
    naive_ms = time_ms(run(naive.push, frames, SWEEPS + 2), repeat=15, warmup=2)
    push_ms = time_ms(run(buf.push, frames, SWEEPS + 2), repeat=60, warmup=3)
    assert buf.resets == 0, buf.status()
    print_ratio("SweepBuffer.push (numpy, CPU)", "naive numpy f64", naive_ms, push_ms)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  load average {load:.1f} on {os.cpu_count()} cores while measuring (shared machine: numbers vary)")
    print(f"  output {b.shape[0]:,} points, {buf.last_info.num_sweeps} sweeps, {buf.last_info.ego_removed} "
          f"own-vehicle points removed from past sweeps")

    try:
        import torch
    except ImportError:
        return
    # The torch path on CPU tensors (the device code run on the CPU; numpy is the fast CPU path). One
    # thread: on a shared, loaded CPU torch's pool spin-waits and is several times slower with more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tbuf = SweepBuffer(SWEEPS, max_time_gap_s=1.0)
    tframes = [(torch.from_numpy(p), t, q) for p, t, q in frames]
    cpu_t_ms = time_ms(run(tbuf.push, tframes), repeat=20, warmup=SWEEPS + 2)
    torch.set_num_threads(threads)
    print_ratio("SweepBuffer.push (torch ops on CPU, 1 thread)", "naive numpy f64", naive_ms, cpu_t_ms)
    if not torch.cuda.is_available():
        print("GPU: none here (rows skipped)")
        return
    sync = torch.cuda.synchronize
    gbuf = SweepBuffer(SWEEPS, device="cuda", max_time_gap_s=1.0)
    gpu_np_ms = time_ms(run(gbuf.push, frames), repeat=60, warmup=SWEEPS + 5, sync=sync)
    print_ratio("SweepBuffer.push (cuda, numpy input)", "naive numpy f64", naive_ms, gpu_np_ms)
    dframes = [(torch.from_numpy(p).cuda(), t, q) for p, t, q in frames]
    dbuf = SweepBuffer(SWEEPS, max_time_gap_s=1.0)
    gpu_ms = time_ms(run(dbuf.push, dframes), repeat=60, warmup=SWEEPS + 5, sync=sync)
    print_ratio("SweepBuffer.push (cuda, input on device)", "naive numpy f64", naive_ms, gpu_ms)
    out = dbuf.push(dframes[0][0], T0 + 1000.0, frames[0][2])  # after a gap: reset, one sweep
    assert out.device.type == "cuda"


if __name__ == "__main__":
    main()
