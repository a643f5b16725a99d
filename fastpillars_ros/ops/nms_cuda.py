"""GPU path of the rotated IoU and NMS operators: the kernels of ``fastpillars_ros/cuda/nms.cu`` via CuPy.

Reached from :mod:`.iou` / :mod:`.nms` when the boxes are CUDA torch tensors, or called directly with
CuPy arrays. CuPy is imported lazily (``fastpillars_ros.cuda.loader``), so importing this module is
free on machines without a GPU. Results equal the CPU reference (same algorithm, geometry in float64
on the float32 box values): IoU matrices to float32 precision, NMS keep lists exactly.

Boxes: (N, >=7) ``[x, y, z, l, w, h, yaw]`` (REP 103, metres, radians); only 7 columns are read and
they are copied to contiguous float32 once.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["iou_matrix_cuda", "nms_cuda", "nms_grouped_cuda", "nms_groups_cuda"]

NMS_BLOCK = 64  # boxes per mask word; must match NMS_BLOCK in nms.cu
IOU_TILE = 16  # must match IOU_TILE in nms.cu
REDUCE_THREADS = 256
# One block per group in nms_groups_kernel: enough threads to fill the mask of ~1,000 boxes quickly, few
# enough that the greedy pass (two barriers per box) stays cheap.
GROUP_THREADS = 128
_MODES = {"bev": 0, "3d": 1, "circle": 2}

ArrayLike = Any


def _module() -> tuple[Any, Any]:
    import cupy

    from fastpillars_ros.cuda.loader import load_module

    return cupy, load_module("nms")


def _is_torch(x: object) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_cupy(x: ArrayLike, cupy: Any, device_like: ArrayLike | None = None) -> Any:
    """torch CUDA tensor (zero-copy via DLPack), CuPy array, or host data (copied to the device)."""
    if _is_torch(x):
        if not x.is_cuda:
            x = x.to(device_like.device if _is_torch(device_like) else "cuda")
        return cupy.from_dlpack(x.detach().contiguous())
    return cupy.asarray(x)


def _boxes32(boxes: ArrayLike, cupy: Any) -> Any:
    b = _to_cupy(boxes, cupy)
    if b.ndim != 2 or (b.shape[0] and b.shape[1] < 7):
        raise ValueError(f"boxes must have shape (N, >=7), got {tuple(b.shape)}")
    if b.shape[0] == 0:
        return cupy.empty((0, 7), dtype=cupy.float32)
    return cupy.ascontiguousarray(b[:, :7], dtype=cupy.float32)


def _back(arr: Any, like: ArrayLike) -> ArrayLike:
    """Return ``arr`` as the caller's array type: torch (same device) for torch input, else CuPy."""
    if _is_torch(like):
        import torch

        return torch.from_dlpack(arr).to(like.device)
    return arr


def iou_matrix_cuda(a: ArrayLike, b: ArrayLike, three_d: bool = False) -> ArrayLike:
    """(N, M) BEV (or 3D) IoU on the GPU; float32 (torch: the input's float dtype), same device."""
    cupy, mod = _module()
    a32, b32 = _boxes32(a, cupy), _boxes32(b, cupy)
    n, m = a32.shape[0], b32.shape[0]
    out = cupy.zeros((n, m), dtype=cupy.float32)
    if n and m:
        kernel = mod.get_function("iou_matrix_kernel")
        grid = ((m + IOU_TILE - 1) // IOU_TILE, (n + IOU_TILE - 1) // IOU_TILE)
        kernel(grid, (IOU_TILE, IOU_TILE), (a32, np.int32(n), b32, np.int32(m), np.int32(1 if three_d else 0),
                                            out))
    ref = a if _is_torch(a) else b
    res = _back(out, ref)
    if _is_torch(ref) and ref.dtype.is_floating_point:
        res = res.to(ref.dtype)
    return res


def _sorted_order(scores: Any, cupy: Any, stacklevel: int) -> Any:
    """Indices by descending score, ties by ascending index; NaN scores dropped with a warning."""
    s = scores.astype(cupy.float64).reshape(-1)
    nan = cupy.isnan(s)
    dropped = int(nan.sum())
    if dropped:
        warnings.warn(f"NMS dropped {dropped} box(es) with NaN score", RuntimeWarning, stacklevel=stacklevel)
    idx = cupy.flatnonzero(~nan)
    # lexsort: the last key is the primary one.
    return idx[cupy.lexsort(cupy.stack((idx.astype(cupy.float64), -s[idx])))]


def _nms_sorted(cupy: Any, mod: Any, boxes32: Any, order: Any, threshold: float, mode: int,
                post_max: int | None) -> Any:
    """Greedy NMS over ``boxes32[order]`` (order = by descending score); returns kept original indices."""
    n = int(order.shape[0])
    if n == 0:
        return cupy.empty(0, dtype=cupy.int64)
    ranked = cupy.ascontiguousarray(boxes32[order])
    col_blocks = (n + NMS_BLOCK - 1) // NMS_BLOCK
    mask = cupy.empty(n * col_blocks, dtype=cupy.uint64)  # below-diagonal words are never read
    removed = cupy.zeros(col_blocks, dtype=cupy.uint64)
    keep = cupy.empty(n, dtype=cupy.int64)
    num = cupy.zeros(1, dtype=cupy.int32)
    max_keep = n if post_max is None else max(int(post_max), 0)
    mod.get_function("nms_mask_kernel")((col_blocks, col_blocks), (NMS_BLOCK,),
                                        (ranked, np.int32(n), np.float64(threshold), np.int32(mode), mask))
    mod.get_function("nms_reduce_kernel")((1,), (REDUCE_THREADS,),
                                          (mask, np.int32(n), removed, keep, num, np.int32(max_keep)))
    count = int(cupy.asnumpy(num)[0])
    return order[keep[:count]]


def _threshold(kind: str, iou_threshold: float, min_radius: float | None) -> float:
    """The kernel's threshold for an NMS ``kind``: the IoU threshold, or the radius (m) for circle NMS."""
    if kind not in _MODES:
        raise ValueError(f"unknown NMS kind {kind!r}")
    if kind == "circle":
        if min_radius is None:
            raise ValueError("circle NMS needs min_radius")
        return float(min_radius)
    return float(iou_threshold)


def nms_cuda(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, pre_max: int | None = None,
             post_max: int | None = None, kind: str = "bev", min_radius: float | None = None) -> ArrayLike:
    """Greedy NMS on the GPU; semantics of :func:`fastpillars_ros.ops.nms_bev` / ``nms_3d`` /
    ``circle_nms`` (``kind``). Returns int64 indices (torch on the boxes' device for torch input)."""
    threshold = _threshold(kind, iou_threshold, min_radius)
    cupy, mod = _module()
    b32 = _boxes32(boxes, cupy)
    s = _to_cupy(scores, cupy, boxes)
    if s.size != b32.shape[0]:
        raise ValueError(f"{s.size} scores for {b32.shape[0]} boxes")
    order = _sorted_order(s, cupy, stacklevel=5)  # < nms_cuda < _dispatch < nms_bev < caller
    if pre_max is not None:
        order = order[:max(int(pre_max), 0)]
    return _back(_nms_sorted(cupy, mod, b32, order, threshold, _MODES[kind], post_max), boxes)


def nms_grouped_cuda(boxes: ArrayLike, scores: ArrayLike, groups: ArrayLike, iou_threshold: float,
                     kind: str = "bev", pre_max: int | None = None, post_max: int | None = None,
                     min_radius: float | None = None) -> ArrayLike:
    """Per-group NMS on the GPU; semantics of :func:`fastpillars_ros.ops.nms_grouped`."""
    threshold = _threshold(kind, iou_threshold, min_radius)
    cupy, mod = _module()
    b32 = _boxes32(boxes, cupy)
    s = _to_cupy(scores, cupy, boxes).astype(cupy.float64).reshape(-1)
    g = _to_cupy(groups, cupy, boxes).reshape(-1)
    if s.size != b32.shape[0] or g.size != b32.shape[0]:
        raise ValueError(f"{s.size} scores / {g.size} group ids for {b32.shape[0]} boxes")
    order = _sorted_order(s, cupy, stacklevel=4)  # < nms_grouped_cuda < nms_grouped < caller
    kept = [cupy.empty(0, dtype=cupy.int64)]
    ranked_groups = g[order]
    for gid in cupy.asnumpy(cupy.unique(ranked_groups)).tolist():
        members = order[ranked_groups == gid]  # still by descending score
        if pre_max is not None:
            members = members[:max(int(pre_max), 0)]
        kept.append(_nms_sorted(cupy, mod, b32, members, threshold, _MODES[kind], post_max))
    out = cupy.concatenate(kept)
    out = out[cupy.lexsort(cupy.stack((out.astype(cupy.float64), -s[out])))]
    return _back(out, boxes)


def _prefix_counts(valid: ArrayLike, cupy: Any, like: ArrayLike) -> Any:
    """int32 count of true flags per row of ``valid`` (G, P), on the device. Counted where ``valid`` lives:
    torch bool tensors do not cross DLPack everywhere."""
    if _is_torch(valid):
        import torch

        return _to_cupy(valid.sum(-1, dtype=torch.int32), cupy, like)
    return cupy.asarray(valid).sum(axis=-1, dtype=cupy.int32)


def nms_groups_cuda(boxes: ArrayLike, valid: ArrayLike, iou_threshold: float, kind: str = "bev",
                    pre_max: int | None = None, post_max: int | None = None,
                    min_radius: float | None = None) -> ArrayLike:
    """Greedy NMS of many groups in one kernel launch, on a fixed-shape block of candidates whose rows are
    already sorted by descending score (the decoder's layout, :class:`~fastpillars_ros.model.head.DenseCandidates`).
    Per group the semantics of :func:`fastpillars_ros.ops.nms_grouped` (pre_max/post_max per group); nothing
    is read back to the host, so a frame keeps running on the device.

    Args:
        boxes: (G, P, >=7) ``[x, y, z, l, w, h, yaw]``; row g holds group g's candidates by descending score.
        valid: (G, P) bool, a prefix of each row: the candidates that take part.
    Returns:
        (G, P) bool keep flags (torch on the boxes' device for torch input, else CuPy).
    """
    threshold = _threshold(kind, iou_threshold, min_radius)
    cupy, mod = _module()
    b = _to_cupy(boxes, cupy)
    if b.ndim != 3 or b.shape[2] < 7 or tuple(valid.shape) != tuple(b.shape[:2]):
        raise ValueError(f"boxes must be (G, P, >=7) and valid (G, P), got {tuple(b.shape)} and {tuple(valid.shape)}")
    groups, p = int(b.shape[0]), int(b.shape[1])
    b32 = cupy.ascontiguousarray(b[:, :, :7], dtype=cupy.float32)
    count = _prefix_counts(valid, cupy, boxes)
    if pre_max is not None:
        count = cupy.minimum(count, np.int32(max(int(pre_max), 0)))
    stride = (p + NMS_BLOCK - 1) // NMS_BLOCK
    mask = cupy.empty(groups * p * stride, dtype=cupy.uint64)
    removed = cupy.empty(groups * stride, dtype=cupy.uint64)
    keep = cupy.empty((groups, p), dtype=cupy.uint8)
    max_keep = p if post_max is None else max(int(post_max), 0)
    if groups and p:
        mod.get_function("nms_groups_kernel")((groups,), (GROUP_THREADS,), (
            b32, cupy.ascontiguousarray(count, dtype=cupy.int32), np.int32(p), np.float64(threshold),
            np.int32(_MODES[kind]), np.int32(max_keep), mask, removed, keep))
    out = _back(keep, boxes)
    return out.bool() if _is_torch(out) else out.astype(bool)
