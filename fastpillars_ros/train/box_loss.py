"""A differentiable 3D DIoU loss for rotated boxes (the box loss of FastPillars' own recipe, fastpillars-model.md §4.3).

Why: the L1 loss on the regression channels treats a centre error, a size error and a heading error as independent
numbers, while what KITTI's car AP@0.7 rewards is their joint overlap; the DIoU loss (Zheng et al., AAAI 2020)
trains that overlap directly: ``1 - IoU3D + d^2 / c^2`` with ``d`` the distance between the box centres and ``c``
the diagonal of the smallest axis-aligned box holding both, so that disjoint boxes are still pulled together.

The overlap here is built from vertices so that gradients reach every box parameter: the intersection of two convex
quadrilaterals is the convex polygon of (a) the corners of each box inside the other and (b) the crossings of their
edges. Those up to 24 candidate points are sorted by angle about their mean and the polygon's area is the shoelace
sum. It is exact (it agrees with :func:`fastpillars_ros.ops.iou.iou_3d_pairs`, which uses another construction for
speed and degenerate cases, to float rounding) except where edges lie on each other, where it may count a
touching contact as a sliver; that changes the loss, never the evaluation.

Boxes are ``[x, y, z_center, length, width, height, yaw]`` (metres, radians; REP 103, ``length`` along the
heading), as everywhere in the package.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["diou_loss", "iou_3d_differentiable"]

_EPS = 1e-7
# Counter-clockwise corner signs in a box's own frame (halves of length and width).
_SIGNS = ((1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0))


def _corners(boxes: Tensor) -> Tensor:
    """BEV corners ``[N, 4, 2]`` (counter-clockwise) of boxes ``[N, 7]``."""
    signs = boxes.new_tensor(_SIGNS)  # [4, 2]
    half = torch.stack([boxes[:, 3], boxes[:, 4]], dim=-1)[:, None, :] * 0.5 * signs  # [N, 4, 2]
    c, s = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
    x = c * half[..., 0] - s * half[..., 1] + boxes[:, None, 0]
    y = s * half[..., 0] + c * half[..., 1] + boxes[:, None, 1]
    return torch.stack([x, y], dim=-1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """z component of the cross product of 2D vectors ``[..., 2]``."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: Tensor, corners: Tensor) -> Tensor:
    """``[N, P]`` bool: ``points`` ``[N, P, 2]`` inside (or within 1e-5 m of) the quadrilateral ``corners[n]``
    (``[N, 4, 2]``, counter-clockwise): on the left of all four edges."""
    start = corners[:, None, :, :]  # [N, 1, 4, 2]
    edge = corners.roll(-1, dims=1)[:, None, :, :] - start
    side = _cross(edge, points[:, :, None, :] - start)  # |edge| x signed distance to the edge's line
    return (side >= -1e-5 * edge.norm(dim=-1)).all(dim=-1)


def _edge_crossings(ca: Tensor, cb: Tensor) -> tuple[Tensor, Tensor]:
    """Crossings of the 4 edges of each ``ca`` quadrilateral with the 4 of ``cb`` (``[N, 4, 2]`` each):
    points ``[N, 16, 2]`` and a validity mask ``[N, 16]`` (parallel edges never cross here)."""
    p = ca[:, :, None, :]  # edge start, [N, 4, 1, 2]
    r = (ca.roll(-1, dims=1) - ca)[:, :, None, :]  # edge vector
    q = cb[:, None, :, :]
    s = (cb.roll(-1, dims=1) - cb)[:, None, :, :]
    den = _cross(r, s)  # [N, 4, 4]
    ok = den.abs() > 1e-9
    safe = torch.where(ok, den, torch.ones_like(den))
    t = _cross(q - p, s) / safe
    u = _cross(q - p, r) / safe
    ok = ok & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    pts = p + t[..., None] * r
    return pts.flatten(1, 2), ok.flatten(1, 2)


def _intersection_area_bev(ca: Tensor, cb: Tensor) -> Tensor:
    """BEV area (m^2) ``[N]`` of the overlap of the quadrilaterals ``ca[n]`` and ``cb[n]`` (corners ``[N, 4, 2]``)."""
    cross_pts, cross_ok = _edge_crossings(ca, cb)
    pts = torch.cat([ca, cb, cross_pts], dim=1)  # [N, 24, 2]
    ok = torch.cat([_inside(ca, cb), _inside(cb, ca), cross_ok], dim=1)  # [N, 24]
    okf = ok.to(pts.dtype)
    count = okf.sum(dim=1)
    centre = (pts * okf[..., None]).sum(dim=1) / count.clamp_min(1.0)[:, None]
    rel = pts - centre[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(ok, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(dim=1)
    rel = rel.gather(1, order[..., None].expand(-1, -1, 2))
    ok_sorted = ok.gather(1, order)
    # Invalid points become copies of the first polygon vertex: their shoelace terms vanish.
    rel = torch.where(ok_sorted[..., None], rel, rel[:, :1, :].expand_as(rel))
    nxt = rel.roll(-1, dims=1)
    twice = _cross(rel, nxt).sum(dim=1)
    return torch.where(count >= 3, 0.5 * twice.abs(), torch.zeros_like(twice))


def _z_overlap(a: Tensor, b: Tensor) -> Tensor:
    top = torch.minimum(a[:, 2] + a[:, 5] * 0.5, b[:, 2] + b[:, 5] * 0.5)
    bottom = torch.maximum(a[:, 2] - a[:, 5] * 0.5, b[:, 2] - b[:, 5] * 0.5)
    return (top - bottom).clamp_min(0.0)


def _iou_3d(a: Tensor, b: Tensor, ca: Tensor, cb: Tensor) -> Tensor:
    """3D IoU ``[N]`` of boxes ``a``, ``b`` (``[N, 7]``) whose BEV corners ``ca``, ``cb`` are already known."""
    inter = _intersection_area_bev(ca, cb) * _z_overlap(a, b)
    vol_a = a[:, 3] * a[:, 4] * a[:, 5]
    vol_b = b[:, 3] * b[:, 4] * b[:, 5]
    return inter / (vol_a + vol_b - inter).clamp_min(_EPS)


def iou_3d_differentiable(a: Tensor, b: Tensor) -> Tensor:
    """3D IoU ``[N]`` of box pairs ``a[n]``, ``b[n]`` (``[N, 7]`` each), differentiable in both."""
    return _iou_3d(a, b, _corners(a), _corners(b))


def diou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Per pair ``1 - IoU3D + d^2 / c^2`` ``[N]`` (0 for identical boxes; in [0, 2)).

    Args:
        pred: predicted boxes ``[N, 7]`` (the gradient flows through them).
        target: ground-truth boxes ``[N, 7]`` of the same frame.
    """
    cp, ct = _corners(pred), _corners(target)
    corners = torch.cat([cp, ct], dim=1)  # [N, 8, 2]
    lo_z = torch.minimum(pred[:, 2] - pred[:, 5] * 0.5, target[:, 2] - target[:, 5] * 0.5)
    hi_z = torch.maximum(pred[:, 2] + pred[:, 5] * 0.5, target[:, 2] + target[:, 5] * 0.5)
    extent = corners.amax(dim=1) - corners.amin(dim=1)  # [N, 2]
    diag2 = (extent ** 2).sum(dim=1) + (hi_z - lo_z) ** 2
    centre2 = ((pred[:, :3] - target[:, :3]) ** 2).sum(dim=1)
    return 1.0 - _iou_3d(pred, target, cp, ct) + centre2 / diag2.clamp_min(_EPS)
