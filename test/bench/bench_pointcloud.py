"""cloud_to_array on a 120,000-point PointCloud2 against a naive per-point ``struct.unpack`` loop.

Layouts: (a) packed 16-byte x, y, z, intensity float32 (RoboSense XYZI, Ouster o_xyzi), (b) the 48-byte
Ouster ``original`` layout with PCL padding, and (c) Velodyne's 22-byte packed layout with unaligned
fields and (d) an organized Ouster cloud with 10% NaN points (no goals; (c) because unaligned reads
are the slow case, (d) because dropping invalid points costs one more copy). Goals (issue #2): packed < 1 ms,
Ouster < 3 ms, on the CPU this runs on. The naive loop is what a hand-written callback without numpy
does; it is timed on fewer repeats because it takes a few hundred milliseconds.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run as a script

from common import print_header, print_ratio, time_ms

from fastpillars_ros.pointcloud import DRIVER_LAYOUTS, FLOAT32, cloud_to_array
from fastpillars_ros.ros.cloud_messages import make_cloud

N = 120_000
FIELDS = ("x", "y", "z", "intensity")


def naive(msg) -> np.ndarray:
    """Per-point struct.unpack_from of x, y, z, intensity, skipping non-finite points."""
    offsets = {f.name: f.offset for f in msg.fields}
    data = bytes(msg.data)
    rows = []
    for i in range(msg.width * msg.height):
        base = (i // msg.width) * msg.row_step + (i % msg.width) * msg.point_step
        vals = tuple(struct.unpack_from("<f", data, base + offsets[f])[0] for f in FIELDS)
        if all(v == v and abs(v) != float("inf") for v in vals[:3]):
            rows.append(vals)
    return np.array(rows, dtype=np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    cols = {"x": rng.uniform(-80, 80, N).astype(np.float32), "y": rng.uniform(-80, 80, N).astype(np.float32),
            "z": rng.uniform(-3, 5, N).astype(np.float32), "intensity": rng.uniform(0, 255, N).astype(np.float32)}
    cases = [
        ("packed 16 B x,y,z,i float32", make_cloud(cols, [(f, 4 * i, FLOAT32) for i, f in enumerate(FIELDS)], 16),
         1.0),
        ("ouster original 48 B", make_cloud(cols, DRIVER_LAYOUTS["ouster_original"].fields, 48), 3.0),
        ("velodyne 22 B (unaligned)", make_cloud(cols, DRIVER_LAYOUTS["velodyne"].fields, 22), None),
    ]
    # An organized Ouster cloud (120 rows of 1000) with 10% NaN points (no return), as ouster-ros sends.
    holed = {k: v.copy() for k, v in cols.items()}
    holes = rng.random(N) < 0.1
    holed["x"][holes] = holed["y"][holes] = holed["z"][holes] = np.nan
    cases.append(("ouster organized 120x1000, 10% NaN", make_cloud(holed, DRIVER_LAYOUTS["ouster_original"].fields,
                                                                     48, height=120), None))
    print_header(f"cloud_to_array, {N:,} points, fields {FIELDS}")
    for name, msg, goal in cases:
        fast = cloud_to_array(msg, FIELDS)
        slow = naive(msg)
        source = holed if "NaN" in name else cols
        expected = np.stack([source[f] for f in FIELDS], axis=1)
        expected = expected[np.isfinite(expected[:, :3]).all(axis=1)]
        assert np.array_equal(fast, expected) and np.array_equal(slow, expected), name
        fast_ms = time_ms(lambda m=msg: cloud_to_array(m, FIELDS), repeat=200, warmup=5)
        naive_ms = time_ms(lambda m=msg: naive(m), repeat=3, warmup=1)
        print_ratio(name, "naive struct loop", naive_ms, fast_ms, goal)


if __name__ == "__main__":
    main()
