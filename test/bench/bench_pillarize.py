"""Dynamic pillarization on the CPU (fastpillars_ros.ops.pillarize) on real scans.

Headline (issue #4): the 120,268-point KITTI scan 000001.bin (and 000000.bin, 115,384 points) with the
KITTI range (0, -39.68, -3, 69.12, 39.68, 1) and 0.16 m pillars (432 x 496 grid); goal <= 1.8 ms here.
PCD scans from other sensors (read with fastpillars_ros.pointcloud.read_points when available) use the
official nuScenes grid (+-54 m, 0.15 m pillars, 720 x 720).

The candidate is what ``pillarize`` runs: the compiled kernel (``ops/pillarize_cpu.c``, since session 14) where a C
compiler is, else the numpy reference. Anchors, measured in the same run on the same points:
  (a) np.unique: the same float32 cell rule, then ``np.unique(flat_cell, return_inverse=True)`` (a sort);
      its pillars are checked to be identical to the candidate's before timing;
  (b) spconv 2.x ``Point2VoxelCPU3d`` (CPU PointToVoxel) with the same range and pillar size, one voxel
      covering all z (z from -100 to 100 m), max points per voxel = the scan's densest pillar and max
      voxels = the scan's pillar count (nothing is dropped; spconv preallocates max voxels x max points x C
      floats, so this is its best case). It keeps the same ``x_min <= x < x_max`` cells (its pillar count
      may still differ by float rounding at a cell edge); it also gathers points into a padded (M, P, C)
      array, more work than a point -> pillar map. Skipped with a note when spconv is not installed.
Also timed: ``decorate`` (per-point features) and, when present, the GPU paths.

Page faults: megabyte temporaries/outputs freed after every call make glibc trim its heap and fault the
memory back in on the next call (about 250 faults per call, 0.6 ms idle and 5 ms on this loaded machine).
pillarize avoids them (pooled outputs, np.take(mode="clip") which does not buffer `out`); the last two
sections re-run the headline scan in fresh child processes, with glibc's defaults and with
MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ raised for all contenders, and print faults per call.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run as a script

from common import print_header, print_ratio, time_ms

from fastpillars_ros.ops import decorate, pillarize, pillarize_cpu
from fastpillars_ros.ops.pillarize import grid_constants

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
KITTI_PILLAR = (0.16, 0.16)
NUSC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
NUSC_PILLAR = (0.15, 0.15)
GOAL_MS = 1.8
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(64 << 20)}


def unique_pillarize(points: np.ndarray, pc_range, pillar_size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor (a): same rule, pillar ids by np.unique (sort-based)."""
    g = grid_constants(pc_range, pillar_size)
    qx = (points[:, 0] - g.x_min) / g.px
    qy = (points[:, 1] - g.y_min) / g.py
    keep = (qx >= 0) & (qx < g.nx) & (qy >= 0) & (qy < g.ny) & np.isfinite(points[:, 2])
    point_index = np.flatnonzero(keep)
    flat = qy[point_index].astype(np.int64) * g.nx + qx[point_index].astype(np.int64)
    cells, point_pillar = np.unique(flat, return_inverse=True)
    coords = np.stack([cells // g.nx, cells % g.nx], axis=1).astype(np.int32)
    return coords, point_pillar, point_index


def spconv_generator(points: np.ndarray, pc_range, pillar_size, max_points: int, max_voxels: int):
    """Anchor (b): spconv CPU PointToVoxel, or None when spconv is not installed.

    spconv preallocates max_voxels x max_points x C floats, so max_voxels is the scan's pillar count
    (plus a little), not the grid size: the smallest setting that drops nothing, its best case."""
    try:
        from cumm import tensorview as tv
        from spconv.utils import Point2VoxelCPU3d
    except ImportError:
        return None
    gen = Point2VoxelCPU3d(vsize_xyz=[float(pillar_size[0]), float(pillar_size[1]), 200.0],
                           coors_range_xyz=[pc_range[0], pc_range[1], -100.0, pc_range[3], pc_range[4], 100.0],
                           num_point_features=points.shape[1], max_num_voxels=max_voxels,
                           max_num_points_per_voxel=max_points)
    pts_tv = tv.from_numpy(np.ascontiguousarray(points))
    return lambda: gen.point_to_voxel(pts_tv)


def faults_per_call(fn, n: int = 50) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def scans() -> list[tuple[str, np.ndarray, tuple, tuple]]:
    out = []
    for path in sorted((REAL / "kitti" / "training" / "velodyne").glob("*.bin")):
        out.append((f"kitti/{path.name}", np.fromfile(path, np.float32).reshape(-1, 4), KITTI_RANGE, KITTI_PILLAR))
    try:
        from fastpillars_ros.pointcloud import read_points
    except ImportError:
        print("(fastpillars_ros.pointcloud.read_points not available: PCD scans skipped)")
        return out
    for path in sorted(REAL.glob("pcd_*/*.pcd")):
        try:
            pts = read_points(path, ("x", "y", "z", "intensity"), defaults={"intensity": 0.0})
        except Exception as e:  # a reader limitation must not hide the KITTI numbers
            print(f"(skipped {path.name}: {e})")
            continue
        out.append((f"{path.parent.name}/{path.name}", np.ascontiguousarray(pts, np.float32), NUSC_RANGE, NUSC_PILLAR))
    return out


# What pillarize() runs here: the compiled kernel, or the numpy reference without a C compiler.
CANDIDATE = ("pillarize (CPU kernel)" if pillarize_cpu.kernel() is not None
             else "pillarize (CPU, numpy occupancy + gather)")


def bench_scan(name: str, pts: np.ndarray, pc_range, pillar_size, goal: float | None) -> None:
    p = pillarize(pts, pc_range, pillar_size)
    coords, pp, pi = unique_pillarize(pts, pc_range, pillar_size)
    assert np.array_equal(coords, p.coords) and np.array_equal(pp, p.point_pillar) and np.array_equal(pi, p.point_index)
    max_points = int(np.bincount(p.point_pillar).max()) if p.num_points else 1
    print(f"\n{name}: N={len(pts):,} kept L={p.num_points:,} pillars M={p.num_pillars:,} grid {p.grid_shape}, "
          f"densest pillar {max_points} points")
    t_cand = time_ms(lambda: pillarize(pts, pc_range, pillar_size), repeat=200, warmup=5)
    t_uniq = time_ms(lambda: unique_pillarize(pts, pc_range, pillar_size), repeat=50, warmup=2)
    print_ratio(CANDIDATE, "np.unique", t_uniq, t_cand, goal)
    try:
        gen = spconv_generator(pts, pc_range, pillar_size, max_points, p.num_pillars + 16)
    except MemoryError:
        gen = None
        print(f"(spconv P2V could not allocate {p.num_pillars} x {max_points} points: not timed)")
    if gen is not None:
        m_spconv = int(gen()[0].shape[0])
        t_spc = time_ms(gen, repeat=50, warmup=2)
        print_ratio(CANDIDATE, "spconv P2V", t_spc, t_cand, goal)
        print(f"{'':44s} (spconv pillars: {m_spconv:,}; the same x_min <= x < x_max rule)")
    t_dec = time_ms(lambda: decorate(pts, p, pc_range, pillar_size), repeat=100, warmup=3)
    print(f"{'decorate (CPU)':<44s} {t_dec:9.3f} ms   page faults/call pillarize: "
          f"{faults_per_call(lambda: pillarize(pts, pc_range, pillar_size)):.0f}")


def bench_gpu(pts: np.ndarray) -> None:
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        print("\n(no CUDA GPU: GPU paths not timed)")
        return
    dev = torch.from_numpy(pts).cuda()
    sync = torch.cuda.synchronize
    t_cpu = time_ms(lambda: pillarize(pts, KITTI_RANGE, KITTI_PILLAR), repeat=100)
    for backend in ("torch", "cupy"):
        try:
            pillarize(dev, KITTI_RANGE, KITTI_PILLAR, gpu_backend=backend)
        except Exception as e:  # CuPy missing
            print(f"(GPU {backend} path unavailable: {e})")
            continue
        t = time_ms(lambda b=backend: pillarize(dev, KITTI_RANGE, KITTI_PILLAR, gpu_backend=b), repeat=100, sync=sync)
        print_ratio(f"pillarize GPU ({backend}, {torch.cuda.get_device_name(0)})", "CPU pillarize", t_cpu, t)


def child_fresh() -> None:
    """Headline scan only, candidate only, in a fresh child process with glibc's default malloc settings.

    In the main process the anchors' big allocations have already raised glibc's dynamic mmap/trim
    thresholds, which hides the page faults a fresh process pays on every call."""
    pts = np.fromfile(REAL / "kitti" / "training" / "velodyne" / "000001.bin", np.float32).reshape(-1, 4)
    t_cand = time_ms(lambda: pillarize(pts, KITTI_RANGE, KITTI_PILLAR), repeat=200, warmup=5)
    faults = faults_per_call(lambda: pillarize(pts, KITTI_RANGE, KITTI_PILLAR))
    print(f"{'pillarize, fresh process, default malloc':<44s} {t_cand:9.3f} ms   page faults/call: {faults:.0f}"
          f"  goal <= {GOAL_MS:g} ms: {'met' if t_cand <= GOAL_MS else 'NOT met'}")


def child_malloc_tuned() -> None:
    """Headline scan only, run in a child process whose environment raised glibc's trim/mmap thresholds."""
    pts = np.fromfile(REAL / "kitti" / "training" / "velodyne" / "000001.bin", np.float32).reshape(-1, 4)
    t_cand = time_ms(lambda: pillarize(pts, KITTI_RANGE, KITTI_PILLAR), repeat=200, warmup=5)
    t_uniq = time_ms(lambda: unique_pillarize(pts, KITTI_RANGE, KITTI_PILLAR), repeat=50, warmup=2)
    print_ratio("pillarize, malloc thresholds raised", "np.unique", t_uniq, t_cand, GOAL_MS)
    p = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    gen = spconv_generator(pts, KITTI_RANGE, KITTI_PILLAR, int(np.bincount(p.point_pillar).max()), p.num_pillars + 16)
    if gen is not None:
        print_ratio("pillarize, malloc thresholds raised", "spconv P2V", time_ms(gen, repeat=50, warmup=2), t_cand,
                    GOAL_MS)
    print(f"{'':44s} page faults/call: {faults_per_call(lambda: pillarize(pts, KITTI_RANGE, KITTI_PILLAR)):.0f}")


def main() -> None:
    if "--malloc-tuned-child" in sys.argv:
        child_malloc_tuned()
        return
    if "--fresh-child" in sys.argv:
        child_fresh()
        return
    print_header("dynamic pillarization, CPU (issue #4 goal: 120k KITTI points <= 1.8 ms)")
    all_scans = scans()
    for name, pts, pc_range, pillar_size in all_scans:
        bench_scan(name, pts, pc_range, pillar_size, GOAL_MS if pc_range == KITTI_RANGE else None)
    headline = [pts for name, pts, _, _ in all_scans if name.endswith("000001.bin")]
    if headline:
        bench_gpu(headline[0])
    print("\nkitti/000001.bin again, candidate alone in a fresh child process")
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--fresh-child"], check=True)
    print("\nkitti/000001.bin again, child process with " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()))
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--malloc-tuned-child"], env={**os.environ, **MALLOC_ENV}, check=True)


if __name__ == "__main__":
    main()
