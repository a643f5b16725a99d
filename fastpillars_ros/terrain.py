"""Terrain following: heights measured from the local ground instead of the sensor's ground plane.

Why: the network learns how high objects stand above the ground plane of the training data (z = -sensor_height
in the model frame). On a ramp, a hill or a raised square that plane is wrong: View-of-Delft 01201's five
pedestrians stand on ground 0.6-0.75 m above it 8-13 m ahead and are not detected at any score, and a mounting
estimated from the near ground cannot see where the far ground goes. With terrain following every point is moved
down by the height of the ground under it above that plane (``z - dz``), the network sees every object standing
on a flat ground, and the boxes are moved back up (``z + dz`` at their centre). The same transform is applied to
the training scans, so the network is trained on what it sees in use.

Settings: the model config's ``terrain`` section (:class:`~fastpillars_ros.config.TerrainConfig`). The local
ground, on a grid of ``cell`` m squares over the model's range (model frame, metres):

1. per cell, the lowest point within ``max_offset`` of the ground plane, if the cell has at least
   ``min_points`` such points (higher points are roofs, canopies and walls, never ground);
2. the median of those over ``window`` x ``window`` cells: a cell covered by a car's side or a bush takes the
   ground visible around it, and a single low point (a reflection) does not pull the ground down;
3. averaged over 3 x 3 cells with ground; cells without ground in reach keep the plane (offset 0).

Shapes: points ``(N, C)`` float32 with x, y, z in the first three columns; boxes ``(K, 7)``
``[x, y, z, l, w, h, yaw]`` (z the box centre); offsets ``dz`` in metres, positive where the ground is higher
than the plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, TerrainConfig

__all__ = ["TerrainMap", "follow_terrain", "local_ground"]


@dataclass(frozen=True)
class TerrainMap:
    """Local ground offsets on a grid (model frame).

    Attributes:
        offsets: ``(nx, ny)`` float32 tensor, metres above the ground plane, cell ``(i, j)`` covering
            ``x0 + i * cell .. x0 + (i + 1) * cell`` and likewise in y (same device as the points).
        x0, y0: the grid's corner [m]. cell: cell edge [m].
    """

    offsets: torch.Tensor
    x0: float
    y0: float
    cell: float

    def at(self, xy: torch.Tensor) -> torch.Tensor:
        """``(M,)`` offsets [m] at positions ``xy`` ``(M, 2)`` [m]; positions off the grid take the nearest
        edge cell."""
        nx, ny = self.offsets.shape
        i = ((xy[:, 0] - self.x0) / self.cell).floor().long().clamp_(0, nx - 1)
        j = ((xy[:, 1] - self.y0) / self.cell).floor().long().clamp_(0, ny - 1)
        return self.offsets[i, j]

    def flatten_points(self, points: torch.Tensor) -> torch.Tensor:
        """A copy of ``points`` ``(N, C)`` with z measured from the local ground (``z - dz``)."""
        out = points.clone()
        out[:, 2] -= self.at(points[:, :2]).to(points.dtype)
        return out

    def flatten_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``(K, 7)`` (numpy) in the flattened frame: centre z minus the offset at the centre."""
        return self._shift_boxes(boxes, -1.0)

    def raise_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``(K, 7)`` (numpy) found in the flattened frame, back on the real ground (``z + dz``)."""
        return self._shift_boxes(boxes, 1.0)

    def _shift_boxes(self, boxes: np.ndarray, sign: float) -> np.ndarray:
        out = np.array(boxes, copy=True)
        if len(out):
            dz = self.at(torch.from_numpy(np.ascontiguousarray(out[:, :2], np.float32)).to(self.offsets.device))
            out[:, 2] += sign * dz.cpu().numpy().astype(out.dtype)
        return out


def local_ground(points: torch.Tensor, ground_z: float, extent: tuple[float, float, float, float],
                 config: TerrainConfig) -> TerrainMap:
    """The local ground under ``points`` (module docstring).

    Args:
        points: ``(N, C)`` float tensor, x, y, z [m] in the model frame in its first columns (any device).
        ground_z: the ground plane's height in that frame [m] (``-sensor_height``).
        extent: ``(x_min, y_min, x_max, y_max)`` [m], the area the map covers (the model's range).
        config: the grid and limits.
    """
    x_min, y_min, x_max, y_max = extent
    cell = float(config.cell)
    nx, ny = int(np.ceil((x_max - x_min) / cell)), int(np.ceil((y_max - y_min) / cell))
    dev = points.device
    z = points[:, 2].float() - ground_z
    i = ((points[:, 0].float() - x_min) / cell).floor().long()
    j = ((points[:, 1].float() - y_min) / cell).floor().long()
    near = (z.abs() <= config.max_offset) & (i >= 0) & (i < nx) & (j >= 0) & (j < ny)
    flat = i[near] * ny + j[near]
    lowest = torch.full((nx * ny,), float("inf"), device=dev).scatter_reduce_(0, flat, z[near], "amin")
    count = torch.bincount(flat, minlength=nx * ny)
    lowest = torch.where(count >= config.min_points, lowest, torch.full_like(lowest, float("inf")))
    w = int(config.window)
    # The median over the window of the cells that see ground: robust to cells whose lowest point is a car's
    # sill (more ground around than car) and to single low outliers.
    grid = torch.where(torch.isfinite(lowest), lowest, torch.full_like(lowest, float("nan"))).view(1, 1, nx, ny)
    patches = F.unfold(F.pad(grid, (w // 2,) * 4, value=float("nan")), w)  # (1, w*w, nx*ny)
    median = patches.nanmedian(dim=1).values.view(1, 1, nx, ny)
    seen = ~torch.isnan(median)
    values = torch.where(seen, median, torch.zeros_like(median))
    weight = F.avg_pool2d(seen.float(), 3, stride=1, padding=1, count_include_pad=False)
    mean = F.avg_pool2d(values, 3, stride=1, padding=1, count_include_pad=False)
    offsets = torch.where(weight > 0, mean / weight.clamp_min(1e-6), torch.zeros_like(mean))
    return TerrainMap(offsets[0, 0].contiguous(), float(x_min), float(y_min), cell)


def follow_terrain(points: torch.Tensor, config: ModelConfig) -> tuple[torch.Tensor, TerrainMap | None]:
    """``points`` ``(N, C)`` (model frame) as the network of ``config`` expects them: flattened onto the local
    ground when the config turns terrain following on (then with the map, to raise the boxes found), else
    unchanged (and None)."""
    if config.terrain is None:
        return points, None
    r = config.pc_range
    tmap = local_ground(points, -config.sensor_height, (r[0], r[1], r[3], r[4]), config.terrain)
    return tmap.flatten_points(points), tmap
