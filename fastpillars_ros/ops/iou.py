"""Exact rotated-box overlap: bird's-eye-view (BEV) IoU and 3D IoU.

Boxes everywhere are ``[x, y, z_center, length, width, height, yaw]`` in one common frame (REP 103:
metres, ``yaw`` in radians counter-clockwise from +x about +z, ``length`` along the heading, ``width``
across it). Only the first 7 columns are read; extra columns (velocities, ...) are ignored.

Algorithm (the CUDA device function ``box_overlap_bev`` in ``fastpillars_ros/cuda/nms.cu`` is the
same, line for line): by Green's theorem, twice the area of the convex intersection of boxes ``a`` and
``b`` is the sum over its boundary pieces of cross(start, end). The boundary consists of the parts of
``a``'s 4 edges inside ``b`` and of ``b``'s 4 edges inside ``a``. Each edge is clipped (Liang–Barsky) in
the frame of the other box, where that box is the axis-aligned rectangle ``|u| <= l/2, |v| <= w/2``, so
clipping is 2 interval intersections. No polygon is ever built, so every pair costs the same fixed
sequence of operations and vectorises over pairs without any compaction step. Coordinates are taken
relative to the boxes' centres (rigid motions keep areas), so float64 gives ~1e-15 relative error
whatever the absolute position or the magnitude of the yaw.

Degenerate configurations: nearly parallel edges are made exactly parallel (``_SNAP_ANGLE``), and an
edge lying on a side of the other box is counted for one box only, and only when the interiors are on
the same side (see :func:`_clip_params`). Identical boxes, shared edges, touching boxes (IoU exactly 0),
nested boxes and zero-size boxes (IoU 0) are all exact cases of that rule.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np

__all__ = [
    "bev_intersection_area_pairs",
    "iou_3d",
    "iou_3d_pairs",
    "rotated_iou_bev",
    "rotated_iou_bev_pairs",
]

# Corner signs of a box, counter-clockwise in its own frame: (+l,-w), (+l,+w), (-l,+w), (-l,-w) halves.
_CORNER_SX = np.array([1.0, 1.0, -1.0, -1.0] * 2)[:, None]
_CORNER_SY = np.array([-1.0, 1.0, 1.0, -1.0] * 2)[:, None]
_NEXT = np.array([1, 2, 3, 0, 5, 6, 7, 4])  # next corner of the same box
_WS_ARRAYS = 18
_TLS = threading.local()  # per-thread workspace, see _workspace()
# Relative rotations within this (sin or cos, ~radians) of a multiple of 90 degrees are snapped onto it.
# Why: for edges crossing at a shallow angle theta the clipping parameters carry an error of
# ~noise / theta, and the pieces clipped from a's edge and from b's side no longer meet, leaving a gap of
# that length in the boundary sum (error ~ gap x box size). Snapping moves an edge by <= theta x length
# instead. With float64 noise ~1e-15 m both errors stay below ~1e-6 m^2 at theta = 1e-8.
_SNAP_ANGLE = 1e-8
# An edge parallel to a side of the other box and within this distance (metres) of it lies on it. Far
# above float64 noise for box-relative coordinates of tens of metres, far below anything meaningful.
_ON_LINE_TOL = 1e-10
# Pairs per vectorised chunk: the per-thread workspace is _WS_ARRAYS x 8 x _CHUNK float64 (4.7 MB).
_CHUNK = 4096

ArrayLike = Any  # numpy array or torch tensor


def _is_torch(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_f64(boxes: ArrayLike) -> np.ndarray:
    """(N, >=7) numpy or CPU torch -> float64 numpy (N, 7)."""
    arr = boxes.detach().cpu().numpy() if _is_torch(boxes) else np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] < 7:
        raise ValueError(f"boxes must have shape (N, >=7), got {arr.shape}")
    return np.ascontiguousarray(arr[:, :7], dtype=np.float64)


def _out_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    dt = np.result_type(a.dtype, b.dtype)
    return np.dtype(np.float32) if dt == np.float32 else np.dtype(np.float64)


def _workspace(p: int) -> np.ndarray:
    """Per-thread scratch of (_WS_ARRAYS, 8, >= p) float64, reused across calls.

    Why: fresh ~100 KB numpy temporaries are served by mmap / trimmed heap memory in glibc, so every
    call page-faults them in again; that costs more than the arithmetic (measured ~4x slower).
    """
    ws = getattr(_TLS, "ws", None)
    if ws is None or ws.shape[2] < p:
        ws = np.empty((_WS_ARRAYS, 8, max(p, 256)))
        _TLS.ws = ws
    return ws[:, :, :p]


def _clip_params(x0: np.ndarray, y0: np.ndarray, ex: np.ndarray, ey: np.ndarray, hx: np.ndarray,
                 hy: np.ndarray, t0: np.ndarray, t1: np.ndarray, scratch: np.ndarray) -> None:
    """Parameter interval ``[t0, t1]`` (written in place; ``t1 >= t0``, equal when empty) of the
    segments ``(x0, y0) + t (ex, ey)``, ``t in [0, 1]``, inside the rectangle ``|x| <= hx, |y| <= hy``
    (Liang–Barsky). All arrays are (8, P): rows 0-3 are edges of box a, rows 4-7 edges of box b.

    Edges exactly parallel to a side (the relative yaw is snapped, so this is an exact test) need a rule
    for lying *on* that side, or shared boundary would be counted twice (once per box) or not at all:
    an on-side edge of a (rows 0-3) is kept when it runs the same way as the rectangle's own
    counter-clockwise side there (+y on x = +hx, -x on y = +hy, ...), i.e. when the interiors lie on the
    same side; on-side edges of b (rows 4-7) are never kept. Opposite-running coincident sides (boxes
    touching from outside) are then kept by neither, as their overlap has no area.
    """
    inv, ta, tb = scratch
    t0.fill(0.0)
    t1.fill(1.0)
    for p0, e, h, ccw_other, ccw_sign in ((x0, ex, hx, ey, 1.0), (y0, ey, hy, ex, -1.0)):
        np.divide(1.0, e, out=inv)  # inf where parallel: those entries are overwritten below
        np.subtract(h, p0, out=tb)
        tb *= inv
        np.add(h, p0, out=ta)
        np.negative(ta, out=ta)
        ta *= inv
        lo, hi = np.minimum(ta, tb, out=inv), np.maximum(ta, tb, out=ta)
        rows, cols = np.nonzero(e == 0.0)
        if len(rows):  # rare: snapped rotations and zero-size boxes only, so handled by gather
            pr, hr = p0[rows, cols], h[rows, cols]
            dist = np.abs(pr) - hr
            on_ccw = (np.abs(dist) <= _ON_LINE_TOL) & (pr * ccw_other[rows, cols] * ccw_sign > 0.0)
            ok = (dist < -_ON_LINE_TOL) | ((rows < 4) & on_ccw)
            lo[rows, cols] = 0.0
            hi[rows, cols] = np.where(ok, 1.0, -1.0)
        np.maximum(t0, lo, out=t0)
        np.minimum(t1, hi, out=t1)
    np.maximum(t1, t0, out=t1)


def _snap(c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Snap a relative rotation within ``_SNAP_ANGLE`` of a multiple of 90 degrees onto it exactly, so
    nearly parallel edges become exactly parallel and meet the on-side rules of :func:`_clip_params`."""
    small_s = np.abs(s) < _SNAP_ANGLE
    small_c = np.abs(c) < _SNAP_ANGLE
    if small_s.any() or small_c.any():
        c = np.where(small_s, np.sign(c), np.where(small_c, 0.0, c))
        s = np.where(small_c, np.sign(s), np.where(small_s, 0.0, s))
    return c, s


def _area_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV intersection areas of row-aligned pairs of float64 (P, 7) boxes, by Green's theorem.

    Twice the area of the (convex) intersection is the sum over its boundary pieces of
    cross(start, end). Those pieces are the parts of a's edges inside b plus the parts of b's edges
    inside a; each edge is clipped in the frame of the other box, where that box is axis-aligned.
    For the piece ``t in [t0, t1]`` of an edge ``S + t E``, cross(start, end) = (t1 - t0) cross(S, E),
    taken in b's frame for all pieces (one common origin).
    Arrays are laid out (8 edges, P pairs) so every numpy operation streams over contiguous rows.
    """
    p = len(a)
    ca, sa = np.cos(a[:, 6]), np.sin(a[:, 6])
    cb, sb = np.cos(b[:, 6]), np.sin(b[:, 6])
    # Rotation of a relative to b by the angle-difference identities, as the float32 CUDA twin must
    # (subtracting two float32 yaws of ~1e4 rad would lose ~1e-3 rad).
    c, s = _snap(ca * cb + sa * sb, sa * cb - ca * sb)
    dx, dy = a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]
    hla, hwa = 0.5 * np.maximum(a[:, 3], 0.0), 0.5 * np.maximum(a[:, 4], 0.0)
    hlb, hwb = 0.5 * np.maximum(b[:, 3], 0.0), 0.5 * np.maximum(b[:, 4], 0.0)
    oxa, oya = cb * dx + sb * dy, cb * dy - sb * dx  # a's centre in b's frame
    ws = _workspace(p)
    lx, ly, hx, hy, ox, oy, rs, ex, ey, x0, y0, exo, eyo, t0, t1 = ws[:15]
    # Corners (counter-clockwise, each box in its own frame), and for each edge: the half-sizes of the
    # other box, the other box's centre seen from it and the rotation into the other box's frame.
    lx[:4], lx[4:] = hla, hlb
    ly[:4], ly[4:] = hwa, hwb
    lx *= _CORNER_SX
    ly *= _CORNER_SY
    hx[:4], hx[4:] = hlb, hla
    hy[:4], hy[4:] = hwb, hwa
    ox[:4], ox[4:] = oxa, -(ca * dx + sa * dy)  # b's centre in a's frame for b's edges
    oy[:4], oy[4:] = oya, sa * dx - ca * dy
    rs[:4], rs[4:] = s, -s  # a's edges rotate by +rel into b's frame, b's by -rel into a's
    np.take(lx, _NEXT, axis=0, out=ex)
    ex -= lx
    np.take(ly, _NEXT, axis=0, out=ey)
    ey -= ly
    tmp = ws[15]
    # Start points and edge vectors in the other box's frame: o + R L and R E.
    np.multiply(c, lx, out=x0)
    x0 += ox
    x0 -= np.multiply(rs, ly, out=tmp)
    np.multiply(rs, lx, out=y0)
    y0 += oy
    y0 += np.multiply(c, ly, out=tmp)
    np.multiply(c, ex, out=exo)
    exo -= np.multiply(rs, ey, out=tmp)
    np.multiply(rs, ex, out=eyo)
    eyo += np.multiply(c, ey, out=tmp)
    with np.errstate(divide="ignore", invalid="ignore"):
        _clip_params(x0, y0, exo, eyo, hx, hy, t0, t1, ws[15:18])
    t1 -= t0  # kept length, as a fraction of the edge
    # a's edges: cross(S, E) in b's frame; b's edges: cross(corner, edge) = 2 hl_b hw_b for each side.
    xa, ya, exa, eya, dta = x0[:4], y0[:4], exo[:4], eyo[:4], t1[:4]
    cross_a = np.multiply(xa, eya, out=ex[:4])
    cross_a -= np.multiply(ya, exa, out=ey[:4])
    cross_a *= dta
    twice = cross_a.sum(axis=0) + 2.0 * hlb * hwb * t1[4:].sum(axis=0)
    return np.maximum(0.5 * twice, 0.0)


def bev_intersection_area_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV intersection area (m^2) of row-aligned box pairs.

    Args:
        a, b: (P, >=7) boxes, row ``i`` of ``a`` paired with row ``i`` of ``b``.

    Returns:
        (P,) float64 areas, >= 0.
    """
    a64, b64 = _to_f64(a), _to_f64(b)
    if len(a64) != len(b64):
        raise ValueError(f"pair count mismatch: {len(a64)} vs {len(b64)}")
    out = np.empty(len(a64), dtype=np.float64)
    for s in range(0, len(a64), _CHUNK):
        out[s:s + _CHUNK] = _area_chunk(a64[s:s + _CHUNK], b64[s:s + _CHUNK])
    return out


def _iou_pairs64(a: np.ndarray, b: np.ndarray, three_d: bool) -> np.ndarray:
    inter = bev_intersection_area_pairs(a, b)
    area_a = np.maximum(a[:, 3], 0.0) * np.maximum(a[:, 4], 0.0)
    area_b = np.maximum(b[:, 3], 0.0) * np.maximum(b[:, 4], 0.0)
    if three_d:
        ha, hb = np.maximum(a[:, 5], 0.0), np.maximum(b[:, 5], 0.0)
        top = np.minimum(a[:, 2] + 0.5 * ha, b[:, 2] + 0.5 * hb)
        bottom = np.maximum(a[:, 2] - 0.5 * ha, b[:, 2] - 0.5 * hb)
        inter = inter * np.maximum(top - bottom, 0.0)
        area_a, area_b = area_a * ha, area_b * hb
    # The clipped area can exceed the smaller box by rounding only; clamp so IoU stays in [0, 1].
    inter = np.minimum(inter, np.minimum(area_a, area_b))
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0.0, inter / np.where(union > 0.0, union, 1.0), 0.0)
    return iou


def rotated_iou_bev_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BEV IoU of row-aligned pairs: (P, >=7) x (P, >=7) numpy -> (P,) float64."""
    return _iou_pairs64(_to_f64(a), _to_f64(b), three_d=False)


def iou_3d_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3D IoU of row-aligned pairs: (P, >=7) x (P, >=7) numpy -> (P,) float64."""
    return _iou_pairs64(_to_f64(a), _to_f64(b), three_d=True)


def _bounding_radius(boxes: np.ndarray) -> np.ndarray:
    """Radius (m) of the BEV circle around the centre that contains the whole box."""
    return 0.5 * np.hypot(np.maximum(boxes[:, 3], 0.0), np.maximum(boxes[:, 4], 0.0))


def _near_pairs(x: np.ndarray, y: np.ndarray, reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, whose centres are within ``reach[i] + reach[j]`` (metres).

    Uniform grid with cells of ``2 max(reach)``: partners lie in the same or an adjacent cell. Boxes are
    sorted by cell; each box looks at its own cell (boxes after it) and 4 of its 8 neighbour cells
    (the other 4 see it from their side), each a contiguous range of the sorted boxes. Cost grows with
    the number of near pairs, not N^2.
    """
    empty = np.empty(0, dtype=np.int64)
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(reach)
    if not finite.all():  # a box with a non-finite centre or size overlaps nothing
        keep = np.flatnonzero(finite)
        i, j = _near_pairs(x[keep], y[keep], reach[keep])
        return keep[i], keep[j]
    n = len(x)
    if n < 2:
        return empty, empty
    cell = 2.0 * float(reach.max())
    if not np.isfinite(cell) or cell <= 0.0:
        cell = 1.0
    ix = ((x - x.min()) / cell).astype(np.int64)
    iy = ((y - y.min()) / cell).astype(np.int64) + 1  # + 1: row -1 of a cell is still >= 0
    stride = int(iy.max()) + 2
    key = ix * stride + iy
    order = np.argsort(key, kind="stable")
    ks = key[order]
    offsets = np.array([0, 1, stride - 1, stride, stride + 1])  # own cell, (0,+1), (+1,-1), (+1,0), (+1,+1)
    n_cells = (int(ix.max()) + 2) * stride
    if n_cells <= 16 * n + 4096:
        # Start of every cell in the sorted order from a histogram: cheaper than 10 searchsorted calls.
        starts = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(np.bincount(ks, minlength=n_cells), out=starts[1:])
        target = ks[None, :] + offsets[:, None]
        lo, hi = starts[target], starts[target + 1]
    else:  # sparse, far-flung boxes: a dense cell table would be large
        target = ks[None, :] + offsets[:, None]
        lo, hi = np.searchsorted(ks, target, side="left"), np.searchsorted(ks, target, side="right")
    lo[0] = np.arange(1, n + 1)  # own cell: only the boxes after this one
    lo, hi = lo.ravel(), hi.ravel()
    count = np.maximum(hi - lo, 0)
    total = int(count.sum())
    if total == 0:
        return empty, empty
    src = np.repeat(np.tile(np.arange(n), len(offsets)), count)
    dst = np.arange(total) + np.repeat(lo - (np.cumsum(count) - count), count)
    # Distance test in sorted order (contiguous gathers), then back to the caller's indices.
    xs, ys, rs = x[order], y[order], reach[order]
    lim = rs[src] + rs[dst]
    dxs, dys = xs[dst] - xs[src], ys[dst] - ys[src]
    near = dxs * dxs + dys * dys <= lim * lim
    i, j = order[src[near]], order[dst[near]]
    return np.minimum(i, j), np.maximum(i, j)


def _iou_matrix(a: ArrayLike, b: ArrayLike, three_d: bool) -> ArrayLike:
    if _is_torch(a) or _is_torch(b):
        import torch

        ref = a if _is_torch(a) else b
        if ref.is_cuda:
            from fastpillars_ros.ops import nms_cuda

            return nms_cuda.iou_matrix_cuda(a, b, three_d=three_d)
        dtype = ref.dtype if ref.dtype in (torch.float32, torch.float64) else torch.float32
        res = _iou_matrix_np(_to_f64(a), _to_f64(b), three_d)
        return torch.from_numpy(res).to(dtype=dtype, device=ref.device)
    a_np, b_np = np.asarray(a), np.asarray(b)
    res = _iou_matrix_np(_to_f64(a_np), _to_f64(b_np), three_d)
    return res.astype(_out_dtype(a_np, b_np), copy=False)


def _iou_matrix_np(a: np.ndarray, b: np.ndarray, three_d: bool) -> np.ndarray:
    out = np.zeros((len(a), len(b)), dtype=np.float64)
    if out.size == 0:
        return out
    # Only pairs whose bounding circles meet can overlap; everything else is exactly 0.
    ra, rb = _bounding_radius(a), _bounding_radius(b)
    if out.size <= 4096:
        reach = ra[:, None] + rb[None, :]
        d2 = (a[:, None, 0] - b[None, :, 0]) ** 2 + (a[:, None, 1] - b[None, :, 1]) ** 2
        ii, jj = np.nonzero(d2 <= reach * reach)
    else:  # the grid search finds near pairs without touching all N x M pairs
        ii, jj = _near_pairs(np.concatenate((a[:, 0], b[:, 0])), np.concatenate((a[:, 1], b[:, 1])),
                             np.concatenate((ra, rb)))
        across = (ii < len(a)) & (jj >= len(a))
        ii, jj = ii[across], jj[across] - len(a)
    if len(ii):
        out[ii, jj] = _iou_pairs64(a[ii], b[jj], three_d)
    return out


def rotated_iou_bev(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Exact BEV IoU of every box in ``a`` with every box in ``b``.

    Args:
        a: (N, >=7) boxes ``[x, y, z, l, w, h, yaw]`` (metres, radians), numpy array or torch tensor.
        b: (M, >=7) boxes in the same frame.

    Returns:
        (N, M) IoU in [0, 1]. numpy in -> numpy out (float32 when both inputs are float32, else
        float64; computed in float64); torch in -> torch out on the same device and float dtype (CUDA
        tensors go through the CUDA kernel, float32). Zero-size boxes give IoU 0.
    """
    return _iou_matrix(a, b, three_d=False)


def iou_3d(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Exact 3D IoU of every box in ``a`` with every box in ``b`` (rotation about z only).

    Intersection volume = BEV intersection area x overlap of the vertical extents
    ``[z - h/2, z + h/2]``; union = sum of volumes - intersection.

    Args / returns: as :func:`rotated_iou_bev`; (N, M) in [0, 1].
    """
    return _iou_matrix(a, b, three_d=True)
