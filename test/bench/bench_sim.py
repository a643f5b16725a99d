"""LiDAR simulator speed: seconds per HDL-64 street scene, and the ray caster against two anchors.

Anchors, on the same scene and rays:
* brute force: every ray tested against every primitive (all-pairs numpy, no sector culling);
* naive: a Python loop over rays, each testing every primitive (a few hundred rays, extrapolated).
The candidate is the sector/elevation-culled vectorised caster used by ``fastpillars-ros simulate``.
"""

from __future__ import annotations

import math
import time

import numpy as np
from common import print_header, print_ratio, time_ms

from fastpillars_ros.sim.generate import simulate_frame
from fastpillars_ros.sim.raycast import cast_rays, ground_hits
from fastpillars_ros.sim.scene import BOX
from fastpillars_ros.sim.sensors import get_sensor
from fastpillars_ros.sim.street import street_scene


def _naive_ms_per_ray(scene, sensor, n_rays: int = 300) -> float:
    prims = scene.primitives()
    dirs = sensor.directions()
    rays = np.random.default_rng(0).choice(len(dirs), n_rays, replace=False)
    t_ground, _, _ = ground_hits(scene, dirs[rays])
    t0 = time.perf_counter()
    for k, r in enumerate(rays):
        d = dirs[r]
        best = t_ground[k]
        for i in range(len(prims["kind"])):
            cx, cy, cz = prims["centre"][i]
            co, si = math.cos(prims["yaw"][i]), math.sin(prims["yaw"][i])
            o = (-(cx * co + cy * si), -(-cx * si + cy * co), -cz)
            dl = (d[0] * co + d[1] * si, -d[0] * si + d[1] * co, d[2])
            h = prims["half"][i]
            if prims["kind"][i] == BOX:
                tn, tf = -math.inf, math.inf
                for a in range(3):
                    if abs(dl[a]) < 1e-12:
                        if abs(o[a]) > h[a]:
                            tn, tf = math.inf, -math.inf
                        continue
                    t1, t2 = (-h[a] - o[a]) / dl[a], (h[a] - o[a]) / dl[a]
                    tn, tf = max(tn, min(t1, t2)), min(tf, max(t1, t2))
                t = tn if tf >= tn > 0 else math.inf
            else:
                os_ = [o[a] / h[a] for a in range(3)]
                ds = [dl[a] / h[a] for a in range(3)]
                qa = sum(v * v for v in ds)
                qb = sum(os_[a] * ds[a] for a in range(3))
                qc = sum(v * v for v in os_) - 1.0
                disc = qb * qb - qa * qc
                t = (-qb - math.sqrt(disc)) / qa if disc >= 0 else math.inf
                t = t if t > 0 and qc > 0 else math.inf
            best = min(best, t)
    return (time.perf_counter() - t0) * 1e3 / n_rays


def main() -> None:
    print_header("LiDAR street-scene simulator (hdl64, 64 beams x 2083 columns = 133,312 rays)")
    sensor = get_sensor("hdl64")
    scene = street_scene(np.random.default_rng(np.random.SeedSequence([0, 3])), sensor)
    nprim = len(scene.primitives()["kind"])
    nrays = sensor.beams * sensor.columns
    culled = time_ms(lambda: cast_rays(scene, sensor, np.random.default_rng(0)), repeat=5, warmup=1)
    brute = time_ms(lambda: cast_rays(scene, sensor, np.random.default_rng(0), cull=False), repeat=1, warmup=0)
    naive = _naive_ms_per_ray(scene, sensor) * nrays
    print(f"scene: {len(scene.objects)} objects, {nprim} primitives; "
          f"naive loop extrapolated from 300 rays")
    print_ratio("ray cast, sector-culled (vectorised)", "brute force all pairs", brute, culled, goal_ms=1000.0)
    print_ratio("ray cast, sector-culled (vectorised)", "naive per-ray loop", naive, culled, goal_ms=1000.0)
    times = []
    npts = []
    for i in range(5):
        t0 = time.perf_counter()
        f = simulate_frame(0, i, "hdl64")
        times.append(time.perf_counter() - t0)
        npts.append(len(f.points))
    print(f"{'simulate_frame (scene + scan + labels)':<44s} median {np.median(times):.3f} s/scene, "
          f"max {max(times):.3f} s over 5 scenes; {np.mean(npts):,.0f} points/scene on average")


if __name__ == "__main__":
    main()
