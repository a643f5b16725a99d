"""Vectorised ray casting of a :class:`~fastpillars_ros.sim.scene.Scene` by a spinning multi-beam LiDAR.

Algorithm (all numpy, no per-ray Python):

1. Ground: every ray is intersected analytically with the road plane; rays that land beyond a kerb are
   tested against the vertical kerb face and then the raised sidewalk plane.
2. Culling: each primitive's bounding cylinder (footprint circle, z range) gives a conservative azimuth
   interval (columns) and elevation interval (beams). Only the (ray, primitive) pairs inside both are
   tested, so a ray meets only the primitives of its own azimuth sector and elevation band.
3. Exact tests on the candidate pairs, in the primitive's own frame: slab method for oriented boxes, a
   quadratic for ellipsoids.
4. Occlusion: the nearest hit along each ray wins (ground included).
5. Sensor effects: range noise along the ray, intensity from the material's reflectivity, the incidence
   angle and the range (KITTI-like 0..1), random drop-outs, weak returns lost, min/max range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastpillars_ros.sim.scene import BOX, ELLIPSOID, Ground, Scene
from fastpillars_ros.sim.sensors import SensorModel

__all__ = ["Scan", "cast_rays", "ground_hits", "primitive_pairs"]

_PAIR_CHUNK = 1 << 20
GROUND_OWNER = -1


@dataclass
class Scan:
    """``points (N, 4)`` float32 x, y, z, intensity (0..1); ``owner (N,)`` int32: object id or -1 for the
    ground; ``ray (N,)`` ray index; per object ``num_points`` (returns in the output) and ``rays_hit``
    (rays that met the object at any depth before drop-outs: the unoccluded count)."""

    points: np.ndarray
    owner: np.ndarray
    ray: np.ndarray
    num_points: np.ndarray
    rays_hit: np.ndarray
    visible_rays: np.ndarray


def ground_hits(scene: Scene, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance along each ray to the ground (``inf``: none), the ground's reflectivity there and the cosine
    of the incidence angle.

    Where the ground changes grade ahead of or behind the sensor (``Ground.grades``), a ray heading that way
    hits the sensor's stretch if it reaches the ground before ``|u| = U``, otherwise the stretch beyond (a
    planar ground of its own) if it reaches that one after ``U``; the ground is continuous at ``U``, so the
    first crossing is the hit (beyond a crest a ray may miss both).
    """
    g = scene.ground
    t, refl, cos_inc = _cross_section_hits(g, dirs)
    du = dirs[:, :2] @ g.axis_dir  # du/dt
    for k, sign in enumerate((1.0, -1.0)):
        start, grade = g.grades[k]
        if grade == 0.0:
            continue
        rate = sign * du
        towards = rate > 0
        with np.errstate(invalid="ignore"):
            here = np.isfinite(t) & ~(towards & (t * rate > start))
            t2, refl2, cos2 = _cross_section_hits(g.piece(ahead=k == 0), dirs)
            there = ~here & towards & np.isfinite(t2) & (t2 * rate > start)
        t = np.where(here, t, np.where(there, t2, np.inf))
        refl = np.where(there, refl2, refl)
        cos_inc = np.where(there, cos2, cos_inc)
    return t, refl, cos_inc


def _cross_section_hits(g: Ground, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ground_hits` for one planar stretch (grades ignored).

    The sensor stands on the road, so a ray's lateral coordinate ``|s|`` only grows once it leaves the road
    strip: it meets, in this order, the road plane, the kerb face, the sidewalk plane, the step up to raised
    terrain and the terrain plane; the first of these inside its own zone is the hit.
    """
    a, b = g.slope
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    n = g.normal_dir
    nd = n[0] * dx + n[1] * dy  # ds/dt
    denom = dz - a * dx - b * dy  # d(height above the road plane)/dt
    edge = g.road_half_width + g.sidewalk_width
    inf = np.full(len(dirs), np.inf)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        down = denom < -1e-9
        t_road = np.where(down, g.z0 / denom, np.inf)
        s_road = t_road * nd - g.road_offset
        side = np.where(nd >= 0, 1.0, -1.0)  # the side the ray leaves the road on
        # kerb face at |s| = road_half_width
        t_kerb = (side * g.road_half_width + g.road_offset) / np.abs(nd) * side
        h_kerb = t_kerb * denom - g.z0  # ray height above the road plane there
        # sidewalk plane
        t_walk = np.where(down, (g.z0 + g.kerb_height) / denom, np.inf)
        s_walk = t_walk * nd - g.road_offset
        # step to the terrain at |s| = edge, terrain plane beyond
        left = side > 0
        off = np.where(left, g.terrain_offset[1], g.terrain_offset[0])
        tsl = np.where(left, g.terrain_slope[1], g.terrain_slope[0])
        t_edge = (side * edge + g.road_offset) / nd
        h_edge = t_edge * denom - g.z0
        level = g.kerb_height + off
        # height above road plane of the terrain along the ray: level + tsl * (side * s - edge)
        rate = denom - tsl * side * nd
        t_terr = (g.z0 + level - tsl * (side * g.road_offset + edge)) / rate
        t_terr = np.where((rate < -1e-12) & (t_terr > 0), t_terr, np.inf)
    in_road = np.abs(s_road) < g.road_half_width
    hit_kerb = ~in_road & (t_kerb > 0) & (h_kerb <= g.kerb_height)
    in_walk = ~in_road & ~hit_kerb & (np.abs(s_walk) < edge)
    hit_step = ~in_road & ~hit_kerb & ~in_walk & (t_edge > 0) & (h_edge <= level) & (off > 0)
    in_terr = ~in_road & ~hit_kerb & ~in_walk & ~hit_step
    t = np.where(in_road, t_road, np.where(hit_kerb, t_kerb, np.where(in_walk, t_walk,
                                                                          np.where(hit_step, t_edge, t_terr))))
    t = np.where(np.isfinite(t) & (t > 0), t, inf)
    tf = np.where(np.isfinite(t), t, 0.0)
    s_hit = tf * nd - g.road_offset
    refl = np.full(len(dirs), g.road_reflectivity)
    if g.markings and g.road_half_width < 1e5:
        ax = g.axis_dir
        u_hit = tf * (ax[0] * dx + ax[1] * dy)
        centre = (np.abs(s_hit) < 0.08) & (np.mod(u_hit, 9.0) < 3.0)
        edge_line = (np.abs(s_hit) > g.road_half_width - 0.45) & (np.abs(s_hit) < g.road_half_width - 0.3)
        refl = np.where(in_road & (centre | edge_line), 0.65, refl)
    refl = np.where(hit_kerb | in_walk, g.sidewalk_reflectivity, refl)
    refl = np.where(hit_step | in_terr, g.terrain_reflectivity, refl)
    pn = np.array([-a, -b, 1.0]) / math.sqrt(a * a + b * b + 1.0)
    cos_plane = np.abs(dirs @ pn)
    # terrain plane normal ~ (-a, -b, 1) tilted by the lateral slope along n
    tn = np.stack([-a - tsl * side * n[0], -b - tsl * side * n[1], np.ones(len(dirs))], axis=1)
    cos_terr = np.abs((dirs * tn).sum(axis=1)) / np.linalg.norm(tn, axis=1)
    cos_inc = np.where(hit_kerb | hit_step, np.abs(nd), np.where(in_terr, cos_terr, cos_plane))
    return t, refl, cos_inc


def _sector_ranges(prims: dict[str, np.ndarray], sensor: SensorModel) -> tuple[np.ndarray, ...]:
    """Per primitive: first column, column count, first beam, beam count (conservative)."""
    c, h = prims["centre"], prims["half"]
    r_xy = np.hypot(h[:, 0], h[:, 1])
    rho = np.hypot(c[:, 0], c[:, 1])
    zlo, zhi = c[:, 2] - h[:, 2], c[:, 2] + h[:, 2]
    inside = rho <= r_xy * 1.0001 + 1e-6
    res = sensor.azimuth_resolution
    ncols = sensor.columns
    with np.errstate(invalid="ignore", divide="ignore"):
        span = np.arcsin(np.clip(r_xy / np.maximum(rho, 1e-9), 0.0, 1.0))
        az = np.arctan2(c[:, 1], c[:, 0])
        c0 = np.floor((az - span + math.pi) / res).astype(np.int64)
        c1 = np.ceil((az + span + math.pi) / res).astype(np.int64)
        ncol = np.minimum(c1 - c0 + 1, ncols)
        c0 = np.where(inside, 0, c0)
        ncol = np.where(inside, ncols, ncol)
        rmin = np.where(inside, 0.0, rho - r_xy)
        rmax = rho + r_xy
        el_hi = np.where(zhi > 0, np.arctan2(zhi, np.maximum(rmin, 1e-9)), np.arctan2(zhi, rmax))
        el_lo = np.where(zlo > 0, np.arctan2(zlo, rmax), np.arctan2(zlo, np.maximum(rmin, 1e-9)))
    el = sensor.elevations()
    b0 = np.searchsorted(el, el_lo - 1e-9, side="left")
    b1 = np.searchsorted(el, el_hi + 1e-9, side="right")
    nbeam = np.maximum(b1 - b0, 0)
    nbeam = np.where(rmin > sensor.max_range, 0, nbeam)
    return np.mod(c0, ncols), ncol, b0, nbeam


def primitive_pairs(prims: dict[str, np.ndarray], sensor: SensorModel, cull: bool = True):
    """Yield ``(prim_index, ray_index)`` candidate pair chunks (int64 arrays). ``cull=False`` pairs every
    primitive with every ray (the brute-force reference)."""
    nprim = len(prims["kind"])
    if cull:
        c0, ncol, b0, nbeam = _sector_ranges(prims, sensor)
    else:
        c0 = np.zeros(nprim, dtype=np.int64)
        ncol = np.full(nprim, sensor.columns, dtype=np.int64)
        b0 = np.zeros(nprim, dtype=np.int64)
        nbeam = np.full(nprim, sensor.beams, dtype=np.int64)
    counts = ncol * nbeam
    ends = np.cumsum(counts)
    start = 0
    while start < nprim:
        base = ends[start] - counts[start]
        stop = int(np.searchsorted(ends, base + _PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        idx = np.arange(start, stop)
        cnt = counts[idx]
        total = int(cnt.sum())
        if total:
            prim = np.repeat(idx, cnt)
            k = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            nb = nbeam[prim]
            col = np.mod(c0[prim] + k // nb, sensor.columns)
            beam = b0[prim] + k % nb
            yield prim, beam * sensor.columns + col
        start = stop


def _local(prims: dict[str, np.ndarray], prim: np.ndarray, dirs: np.ndarray):
    """Ray origin (the sensor) and direction in each primitive's frame, scaled by nothing."""
    c = prims["centre"][prim]
    yaw = prims["yaw"][prim]
    co, si = np.cos(yaw), np.sin(yaw)
    ox = -(c[:, 0] * co + c[:, 1] * si)
    oy = -(-c[:, 0] * si + c[:, 1] * co)
    oz = -c[:, 2]
    dx = dirs[:, 0] * co + dirs[:, 1] * si
    dy = -dirs[:, 0] * si + dirs[:, 1] * co
    dz = dirs[:, 2]
    return (ox, oy, oz), (dx, dy, dz)


def _box_t(o, d, h, want_cos: bool = False):
    with np.errstate(divide="ignore", invalid="ignore"):
        tn, tf = [], []
        for i in range(3):
            inv = 1.0 / d[i]
            t1 = (-h[:, i] - o[i]) * inv
            t2 = (h[:, i] - o[i]) * inv
            tn.append(np.fmin(t1, t2))
            tf.append(np.fmax(t1, t2))
        tmin = np.fmax(np.fmax(tn[0], tn[1]), tn[2])
        tmax = np.fmin(np.fmin(tf[0], tf[1]), tf[2])
    t = np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)
    if not want_cos:
        return t
    axis = np.argmax(np.stack(tn), axis=0)
    cos = np.abs(np.choose(axis, d))
    return t, cos


def _ellipsoid_t(o, d, h, want_cos: bool = False):
    os_ = [o[i] / h[:, i] for i in range(3)]
    ds = [d[i] / h[:, i] for i in range(3)]
    a = ds[0] ** 2 + ds[1] ** 2 + ds[2] ** 2
    b = os_[0] * ds[0] + os_[1] * ds[1] + os_[2] * ds[2]
    c = os_[0] ** 2 + os_[1] ** 2 + os_[2] ** 2 - 1.0
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > 0) & (c > 0), t, np.inf)
    if not want_cos:
        return t
    tt = np.where(np.isfinite(t), t, 0.0)
    n = [(o[i] + tt * d[i]) / h[:, i] ** 2 for i in range(3)]
    norm = np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2) + 1e-12
    cos = np.abs(n[0] * d[0] + n[1] * d[1] + n[2] * d[2]) / norm
    return t, cos


def _pair_t(prims, prim, dirs, want_cos: bool = False):
    o, d = _local(prims, prim, dirs)
    h = prims["half"][prim]
    kind = prims["kind"][prim]
    is_box = kind == BOX
    if is_box.all():
        return _box_t(o, d, h, want_cos)
    if (kind == ELLIPSOID).all():
        return _ellipsoid_t(o, d, h, want_cos)
    t = np.empty(len(prim))
    cos = np.empty(len(prim))
    for mask, fn in ((is_box, _box_t), (~is_box, _ellipsoid_t)):
        r = fn(tuple(v[mask] for v in o), tuple(v[mask] for v in d), h[mask], want_cos)
        if want_cos:
            t[mask], cos[mask] = r
        else:
            t[mask] = r
    return (t, cos) if want_cos else t


def cast_rays(scene: Scene, sensor: SensorModel, rng: np.random.Generator, cull: bool = True,
              effects: bool = True) -> Scan:
    """Ray-cast ``scene`` with ``sensor``. ``effects=False`` turns off noise, drop-outs and pass-through
    (exact geometry, for tests). ``cull=False`` tests every ray against every primitive (slow reference)."""
    dirs = sensor.directions()
    nrays = len(dirs)
    t_best, refl_g, cos_g = ground_hits(scene, dirs)
    t_best = np.where(t_best <= sensor.max_range, t_best, np.inf)
    prims = scene.primitives()
    nobj = len(scene.objects)
    hit_ray, hit_prim, hit_t = [], [], []
    if len(prims["kind"]):
        for prim, ray in primitive_pairs(prims, sensor, cull=cull):
            t = _pair_t(prims, prim, dirs[ray])
            ok = t < t_best[ray]
            if effects:
                # Porous materials (foliage, glass) let some rays through to whatever lies behind.
                ok &= rng.random(len(t)) >= prims["passthrough"][prim]
            hit_ray.append(ray[ok])
            hit_prim.append(prim[ok])
            hit_t.append(t[ok])
    ray_h = np.concatenate(hit_ray) if hit_ray else np.zeros(0, np.int64)
    prim_h = np.concatenate(hit_prim) if hit_prim else np.zeros(0, np.int64)
    t_h = np.concatenate(hit_t) if hit_t else np.zeros(0)
    owner_h = prims["owner"][prim_h] if len(prim_h) else np.zeros(0, np.int32)
    # Rays meeting each object at any depth (occlusion reference), counted once per (ray, object).
    rays_hit = np.zeros(nobj, dtype=np.int64)
    if len(ray_h):
        key = np.unique(ray_h * max(nobj, 1) + owner_h)
        rays_hit = np.bincount(key % max(nobj, 1), minlength=nobj)
    # Nearest hit per ray.
    order = np.argsort(t_h, kind="stable")
    r_sorted = ray_h[order]
    first = np.unique(r_sorted, return_index=True)[1]
    win = order[first]
    best_prim = np.full(nrays, -1, dtype=np.int64)
    best_prim[ray_h[win]] = prim_h[win]
    t_best[ray_h[win]] = t_h[win]
    valid = np.isfinite(t_best)
    rays = np.nonzero(valid)[0]
    t = t_best[rays]
    bp = best_prim[rays]
    on_obj = bp >= 0
    owner = np.full(len(rays), GROUND_OWNER, dtype=np.int32)
    owner[on_obj] = prims["owner"][bp[on_obj]]
    refl = refl_g[rays].copy()
    cos = cos_g[rays].copy()
    noise_extra = np.zeros(len(rays))
    if on_obj.any():
        _, cos_o = _pair_t(prims, bp[on_obj], dirs[rays[on_obj]], want_cos=True)
        cos[on_obj] = cos_o
        refl[on_obj] = prims["refl"][bp[on_obj]]
        noise_extra[on_obj] = prims["noise"][bp[on_obj]]
    visible_rays = np.bincount(owner[on_obj], minlength=nobj).astype(np.int64)
    keep = np.ones(len(rays), dtype=bool)
    if effects:
        t = t + rng.normal(0.0, 1.0, len(t)) * (sensor.range_noise + noise_extra)
        falloff = 1.0 - 0.3 * np.clip(t / sensor.max_range, 0.0, 1.0)
        inten = refl * (0.3 + 0.7 * np.sqrt(np.clip(cos, 0.0, 1.0))) * falloff
        # surface texture / speckle (multiplicative) plus receiver noise (additive)
        inten = inten * rng.lognormal(0.0, 0.3, len(t)) + rng.normal(0.0, sensor.intensity_noise, len(t))
        inten = np.clip(inten, 0.0, 1.0)
        keep &= rng.random(len(t)) >= sensor.dropout
        # Weak returns (dark surfaces at grazing incidence and long range) are often lost.
        weak = inten * 100.0 / np.maximum(t, 1.0) < 0.05
        keep &= ~(weak & (rng.random(len(t)) < 0.7))
    else:
        inten = np.clip(refl * (0.3 + 0.7 * np.sqrt(np.clip(cos, 0.0, 1.0))), 0.0, 1.0)
    keep &= (t >= sensor.min_range) & (t <= sensor.max_range)
    rays, t, owner, inten = rays[keep], t[keep], owner[keep], inten[keep]
    xyz = dirs[rays] * t[:, None]
    points = np.hstack([xyz, inten[:, None]]).astype(np.float32)
    num_points = np.bincount(owner[owner >= 0], minlength=nobj).astype(np.int64)
    return Scan(points=points, owner=owner, ray=rays, num_points=num_points, rays_hit=rays_hit,
                visible_rays=visible_rays)
