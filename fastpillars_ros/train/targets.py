"""CenterPoint training targets: the exact inverse of :func:`fastpillars_ros.model.head.decode_head_outputs`.

For a GT box ``[x, y, z, l, w, h, yaw]`` (ours, LiDAR frame) and a head grid with cells of
``cell = pillar_size * out_size_factor`` metres starting at ``(x_min, y_min)``:

* continuous cell coordinates ``c = ((x - x_min) / cell_x, (y - y_min) / cell_y)``; the object's cell is
  ``(row, col) = (floor(c_y), floor(c_x))``; objects whose cell is off the map are skipped;
* ``reg = c - floor(c)`` (x then y), ``height = z`` (box centre), ``dim = log(w, l, h)`` (det3d order:
  width first), ``rot = (sin r, cos r)`` with det3d's ``r = -yaw - pi/2``, ``vel = (vx, vy)``,
  ``axis = (sin 2r, cos 2r)`` (models with ``head.axis``);
* heatmap: per class channel, a Gaussian peak of value 1 at the object's cell (CenterNet radius from the
  box's length/width in head cells, min overlap 0.1, sigma = (2 r + 1) / 6), combined with ``max``.

Minimum radius: det3d uses 2 cells on 0.6 m cells (~1.2 m). Our ``tiny`` head has 1.28 m cells where 2
cells would spread a pedestrian's peak over 6 m, so by default the minimum radius is ``round(1.2 m / cell)``
and at least 1 (kitti/nuScenes-like heads: 2; tiny: 1). Override with ``min_radius``.

Ignore regions: boxes of classes that are real objects but not trained (KITTI ``Van``, ``Truck``, ...) mark
their Gaussian window as "ignore" in every channel of every task, so predicting a car there is not
punished as a false positive (the focal loss skips those negatives).

Everything is numpy and vectorised over objects (no per-pixel Python loops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig

__all__ = ["FrameTargets", "HeadGeometry", "build_targets", "draw_gaussians", "encode_boxes",
           "gaussian_radius", "head_geometry", "regression_branches"]

#: Regression channels in the order of the L1 loss and of det3d's code weights (vel only if configured).
REG_ORDER = ("reg", "height", "dim", "vel", "rot", "axis")


def regression_branches(config: ModelConfig) -> tuple[str, ...]:
    """The :data:`REG_ORDER` branches this config has (the columns of its regression targets, in order)."""
    present = {name for name, _ in config.heads}
    return tuple(name for name in REG_ORDER if name in present)


@dataclass(frozen=True)
class HeadGeometry:
    """Head map geometry: origin (m), cell size (m), map size (rows, cols), minimum Gaussian radius."""

    x_min: float
    y_min: float
    cell_x: float
    cell_y: float
    height: int
    width: int
    min_radius: int


def head_geometry(config: ModelConfig, min_radius: int | None = None) -> HeadGeometry:
    cell_x = config.pillar_size[0] * config.out_size_factor
    cell_y = config.pillar_size[1] * config.out_size_factor
    if min_radius is None:
        min_radius = max(1, round(1.2 / max(cell_x, cell_y)))
    h, w = config.head_shape
    return HeadGeometry(float(config.pc_range[0]), float(config.pc_range[1]), float(cell_x), float(cell_y),
                        int(h), int(w), int(min_radius))


def gaussian_radius(length: np.ndarray, width: np.ndarray, min_overlap: float = 0.1) -> np.ndarray:
    """CenterNet radius (in the units of the inputs): the largest corner shift for which a box of size
    ``length x width`` still overlaps the GT with IoU >= ``min_overlap`` in all three CenterNet cases
    (both corners inside, both outside, one of each); the smallest of the three roots."""
    h = np.asarray(length, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    # case 1: r^2 - (h + w) r + h w (1 - o) / (1 + o) = 0
    b1, c1 = h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(np.maximum(b1 ** 2 - 4 * c1, 0.0))) / 2
    # case 2: 4 r^2 - 2 (h + w) r + (1 - o) w h = 0
    b2, c2 = 2 * (h + w), (1 - min_overlap) * w * h
    r2 = (b2 + np.sqrt(np.maximum(b2 ** 2 - 16 * c2, 0.0))) / 2
    # case 3: 4 o r^2 + 2 o (h + w) r + (o - 1) w h = 0
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    r3 = (b3 + np.sqrt(np.maximum(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
    return np.minimum(np.minimum(r1, r2), r3)


def _radii(boxes: np.ndarray, geo: HeadGeometry) -> np.ndarray:
    r = gaussian_radius(boxes[:, 3] / geo.cell_x, boxes[:, 4] / geo.cell_y, 0.1)
    return np.maximum(geo.min_radius, np.floor(r).astype(np.int64))


def draw_gaussians(hm: np.ndarray, channel: np.ndarray, row: np.ndarray, col: np.ndarray,
                   radius: np.ndarray) -> np.ndarray:
    """Max-combine CenterNet Gaussians into ``hm`` ``(C, H, W)`` in place (and return it).

    Object ``k`` draws ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2 r + 1) / 6``, on the square window
    ``|dx|, |dy| <= r`` around ``(row[k], col[k])`` of channel ``channel[k]``; values below
    ``eps * max`` are 0 (as CenterNet). The centre cell gets exactly 1.
    """
    k = len(row)
    if k == 0:
        return hm
    h, w = hm.shape[1:]
    rmax = int(radius.max())
    d = np.arange(-rmax, rmax + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")  # (S, S)
    sigma = (2 * radius + 1) / 6.0
    val = np.exp(-(dx[None] ** 2 + dy[None] ** 2) / (2 * sigma[:, None, None] ** 2))
    val[val < np.finfo(np.float64).eps * val.max()] = 0
    rr = row[:, None, None] + dy[None]
    cc = col[:, None, None] + dx[None]
    ok = ((np.abs(dx)[None] <= radius[:, None, None]) & (np.abs(dy)[None] <= radius[:, None, None])
          & (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))
    flat = (np.broadcast_to(channel[:, None, None], ok.shape)[ok] * (h * w) + rr[ok] * w + cc[ok])
    np.maximum.at(hm.reshape(-1), flat, val[ok].astype(hm.dtype))
    return hm


def encode_boxes(boxes: np.ndarray, geo: HeadGeometry, velocities: np.ndarray | None = None, axis: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Regression targets of boxes (ours, ``(K, 7)``).

    Returns:
        ``(row, col, inside, targets)``: head cell ``(K,)`` int64 each, ``inside (K,)`` bool (cell on the
        map), ``targets (K, R)`` float32 in :data:`REG_ORDER` (reg 2, height 1, dim 3, [vel 2], rot 2,
        [axis 2]).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    cx = (b[:, 0] - geo.x_min) / geo.cell_x
    cy = (b[:, 1] - geo.y_min) / geo.cell_y
    col = np.floor(cx).astype(np.int64)
    row = np.floor(cy).astype(np.int64)
    inside = (col >= 0) & (col < geo.width) & (row >= 0) & (row < geo.height)
    r = -b[:, 6] - math.pi / 2  # det3d yaw (decode: yaw = -atan2(sin r, cos r) - pi/2)
    parts = [cx - col, cy - row, b[:, 2], np.log(np.maximum(b[:, 4], 1e-3)), np.log(np.maximum(b[:, 3], 1e-3)),
             np.log(np.maximum(b[:, 5], 1e-3))]
    if velocities is not None:
        v = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
        parts += [v[:, 0], v[:, 1]]
    parts += [np.sin(r), np.cos(r)]
    if axis:
        parts += [np.sin(2 * r), np.cos(2 * r)]
    return row, col, inside, np.stack(parts, axis=1).astype(np.float32)


@dataclass
class FrameTargets:
    """Targets of one frame, per task ``t``.

    ``hm[t]`` ``(C_t, H, W)`` float32 Gaussian heatmap; ``ind[t]`` ``(K_t,)`` int64 flat head cell
    (``row * W + col``); ``reg[t]`` ``(K_t, R)`` float32 regression targets (:data:`REG_ORDER`);
    ``boxes[t]`` ``(K_t, 7)`` float32 GT boxes (ours; for the IoU target); ``cls[t]`` ``(K_t,)`` int64
    channel within the task. ``ignore`` ``(H, W)`` bool: negatives there are not penalised.
    """

    hm: list[np.ndarray]
    ind: list[np.ndarray]
    reg: list[np.ndarray]
    boxes: list[np.ndarray]
    cls: list[np.ndarray]
    ignore: np.ndarray


def build_targets(boxes: np.ndarray, labels: np.ndarray, config: ModelConfig, geo: HeadGeometry | None = None,
                  velocities: np.ndarray | None = None, ignored_boxes: np.ndarray | None = None,
                  max_objects: int = 500) -> FrameTargets:
    """Targets for one frame.

    Args:
        boxes: ``(K, 7)`` GT boxes (ours). labels: ``(K,)`` global class ids (index into
            ``config.class_names``); ids outside the config's classes are skipped.
        velocities: ``(K, 2)`` (required when the config has ``vel``; zeros are used if missing).
        ignored_boxes: ``(J, 7)`` boxes of untrained real objects -> ``ignore`` mask.
        max_objects: per task, at most this many objects (first ones win, as det3d).
    """
    geo = geo or head_geometry(config)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    vel = None
    if config.vel:
        vel = np.zeros((len(b), 2)) if velocities is None else np.asarray(velocities, dtype=np.float64)
    row, col, inside, reg = encode_boxes(b, geo, vel, axis=config.head.axis)
    radius = _radii(b, geo) if len(b) else np.zeros(0, np.int64)
    out = FrameTargets([], [], [], [], [], np.zeros((geo.height, geo.width), bool))
    first = 0
    for task in config.tasks:
        n = len(task)
        local = labels - first
        sel = np.nonzero(inside & (local >= 0) & (local < n))[0][:max_objects]
        hm = np.zeros((n, geo.height, geo.width), np.float32)
        draw_gaussians(hm, local[sel], row[sel], col[sel], radius[sel])
        out.hm.append(hm)
        out.ind.append(row[sel] * geo.width + col[sel])
        out.reg.append(reg[sel])
        out.boxes.append(b[sel].astype(np.float32))
        out.cls.append(local[sel])
        first += n
    if ignored_boxes is not None and len(ignored_boxes):
        ib = np.asarray(ignored_boxes, dtype=np.float64).reshape(-1, 7)
        irow, icol, iin, _ = encode_boxes(ib, geo)
        if iin.any():
            mask = np.zeros((1, geo.height, geo.width), np.float32)
            draw_gaussians(mask, np.zeros(int(iin.sum()), np.int64), irow[iin], icol[iin], _radii(ib[iin], geo))
            out.ignore = mask[0] > 0
    return out
