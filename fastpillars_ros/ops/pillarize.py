"""Dynamic pillarization and point decoration (CPU reference, numpy; plus a pure-torch path).

This is the reference semantics for the CUDA kernels in ``fastpillars_ros/cuda/pillarize.cu``: both
must give identical results, element for element. The rules (FastPillars ``points_cuda``, see
``fastpillars-model.md`` §1.4-1.5, except for the range rule below):

* Grid: ``nx = round((x_max - x_min) / px)``, ``ny = round((y_max - y_min) / py)`` (double precision, on
  the host). Pillar ``(row, col) = (iy, ix)``; flat cell ``iy * nx + ix``.
* Column of a point, computed in **float32** exactly like the kernel::

      qx = (x - x_min) / px        # two IEEE float32 operations, round to nearest, x_min and px as float32
      keep iff 0 <= qx < nx        # (NaN fails, so non-finite x is dropped)
      ix = floor(qx)               # == truncation, qx >= 0 here

  and the same for rows: the ``x_min <= x < x_max`` rule, ``floor((x - x_min) / px)`` in ``[0, nx)``, of
  spconv, mmdetection3d and CUDA-PointPillars. (The official FastPillars ``points_cuda`` keeps ``-1 < qx``
  and truncates, which puts points up to one pillar below ``x_min`` into column 0; this project does not.)
  ``z`` is not cropped (it is a feature), but points whose ``z`` is not finite are dropped, so that no
  NaN/Inf reaches the pillar encoder.
* Pillar ids: occupancy over the grid, compact ids in row-major order of the occupied cells (what an
  inclusive prefix sum over the occupancy gives); deterministic.
* Kept points are listed in ascending order of their index in the input.
* Decoration (per kept point): its C raw columns, then ``xr - (ix + 0.5) * px``, ``yr - (iy + 0.5) * py``,
  ``zr - zc`` with ``xr = x - x_min``, ``yr = y - y_min``, ``zr = z - z_min`` and
  ``zc = (z_max - z_min) * 0.5`` (the z centre of every pillar in relative coordinates), all in float32
  with one rounding per operation (the kernel uses ``__f*_rn`` intrinsics so nvcc does not fuse them).

Frames: points are in the sensor (lidar) frame, metres; ``pc_range`` and ``pillar_size`` in the same frame.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from fastpillars_ros.ops import pillarize_cpu
from fastpillars_ros.ops.grid import GridConstants, Pillars, grid_constants

if TYPE_CHECKING:
    import torch

__all__ = ["GridConstants", "Pillars", "decorate", "grid_constants", "pillarize"]


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch")


# Scratch buffers reused between calls (per thread): allocating and page-faulting fresh megabyte-sized
# temporaries on every call costs about as much as the whole O(N) pass. `occ` is all False between calls.
_scratch = threading.local()


class _Scratch:
    def __init__(self) -> None:
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.capacity = 0
        self.iota = np.arange(0, dtype=np.int64)
        self.outputs = _OutputPool()

    def grid(self, cells: int) -> tuple[np.ndarray, np.ndarray]:
        if cells not in self.grids:
            if len(self.grids) > 4:
                self.grids.clear()
            self.grids[cells] = (np.zeros(cells, np.bool_), np.empty(cells, np.int64))
        return self.grids[cells]

    def arange(self, n: int) -> np.ndarray:
        """0..n-1 as int64 (read-only view of a cached array)."""
        if self.iota.shape[0] < n:
            self.iota = np.arange(max(n, 2 * self.iota.shape[0]), dtype=np.int64)
            self.iota.flags.writeable = False
        return self.iota[:n]

    def points(self, n: int) -> tuple[np.ndarray, ...]:
        """qx, qy, gathered float, keep, mask (N,) and flat, tmp (N,) int64 views of length n."""
        if n > self.capacity or self.capacity == 0:
            self.capacity = max(n, int(self.capacity * 1.5), 1024)
            c = self.capacity
            self.f = np.empty((3, c), np.float32)
            self.b = np.empty((2, c), np.bool_)
            self.i = np.empty((2, c), np.int64)
        return (self.f[0, :n], self.f[1, :n], self.f[2, :n], self.b[0, :n], self.b[1, :n], self.i[0, :n],
                self.i[1, :n])


class _OutputPool:
    """Reuses output buffers once the caller has dropped every array that views them.

    Fresh megabyte outputs freed after each call make glibc trim the heap and page-fault the memory back
    in on the next call (about 250 faults per 120k-point scan, 0.6-5 ms here depending on load). A pooled
    base buffer is handed out again only when nothing but the pool references it (CPython refcount), so
    arrays the caller still holds are never overwritten.
    """

    _MAX_SLOTS = 4

    def __init__(self) -> None:
        self.slots: list[np.ndarray] = []

    def take(self, n: int, dtype: type) -> np.ndarray:
        slots = self.slots
        for i in range(len(slots)):
            base = slots[i]
            # 3 references: the list, `base`, getrefcount's argument. Anything more is a live user view.
            if base.dtype == dtype and base.shape[0] >= n and sys.getrefcount(base) == 3:
                return base[:n]
        base = np.empty(max(n, 1024), dtype)
        if len(slots) >= self._MAX_SLOTS:
            slots.pop(0)
        slots.append(base)
        return base[:n]


def _get_scratch() -> _Scratch:
    s = getattr(_scratch, "s", None)
    if s is None:
        s = _scratch.s = _Scratch()
    return s


def _as_points_numpy(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, C>=3), got shape {pts.shape}")
    return pts if pts.dtype == np.float32 else pts.astype(np.float32)


def _pillarize_numpy(points: np.ndarray, g: GridConstants) -> Pillars:
    """The compiled kernel where there is one (``ops/pillarize_cpu.py``, equal bit for bit), else
    :func:`_pillarize_reference`."""
    if (lib := pillarize_cpu.kernel()) is None:
        return _pillarize_reference(points, g)
    pts = np.ascontiguousarray(_as_points_numpy(points))
    n = pts.shape[0]
    scratch = _get_scratch()
    occ, lut = scratch.grid(g.nx * g.ny)
    take = scratch.outputs.take
    point_index, point_pillar = take(n, np.int64), take(n, np.int64)
    coords = take(2 * min(n, g.nx * g.ny), np.int32).reshape(-1, 2)
    kept, num_pillars = pillarize_cpu.pillarize(lib, pts, g, occ, lut, point_index, point_pillar, coords)
    return Pillars(coords[:num_pillars], point_pillar[:kept], point_index[:kept], (g.ny, g.nx))


def _pillarize_reference(points: np.ndarray, g: GridConstants) -> Pillars:
    """The rules of the module docstring in numpy (the reference for the compiled and the CUDA kernels)."""
    pts = _as_points_numpy(points)
    nx, ny = g.nx, g.ny
    scratch = _get_scratch()
    qx, qy, gathered, keep, mask, flat_all, tmp_all = scratch.points(pts.shape[0])
    # float32 maths, one rounding per operation (see module docstring), written into reused buffers.
    np.subtract(pts[:, 0], g.x_min, out=qx)
    qx /= g.px
    np.subtract(pts[:, 1], g.y_min, out=qy)
    qy /= g.py
    np.greater_equal(qx, 0, out=keep)
    keep &= np.less(qx, nx, out=mask)
    keep &= np.greater_equal(qy, 0, out=mask)
    keep &= np.less(qy, ny, out=mask)
    keep &= np.isfinite(pts[:, 2], out=mask)
    point_index = np.flatnonzero(keep)
    n_kept = point_index.shape[0]
    # Assigning float32 to int64 truncates toward zero (C conversion), like __float2int_rz; the values
    # are in [0, n) here, so that is the floor. int64 (intp) cell indices: numpy's fancy indexing is ~2x
    # faster than with int32.
    # mode="clip" (indices are in range, so it changes nothing): with the default mode="raise", np.take
    # copies into a fresh temporary before writing `out`, and that megabyte allocation page-faults per call.
    flat, tmp, g_kept = flat_all[:n_kept], tmp_all[:n_kept], gathered[:n_kept]
    flat[...] = np.take(qy, point_index, out=g_kept, mode="clip")
    flat *= nx
    tmp[...] = np.take(qx, point_index, out=g_kept, mode="clip")
    flat += tmp

    occ, lut = scratch.grid(nx * ny)
    occ[flat] = True
    cells = np.flatnonzero(occ)  # occupied cells in row-major order == pillar ids 0..M-1
    occ[cells] = False  # restore the all-False invariant in O(M)
    lut[cells] = scratch.arange(cells.shape[0])
    point_pillar = lut.take(flat, out=scratch.outputs.take(n_kept, np.int64), mode="clip")
    coords = scratch.outputs.take(2 * cells.shape[0], np.int32).reshape(-1, 2)
    np.floor_divide(cells, nx, out=coords[:, 0], casting="unsafe")
    np.remainder(cells, nx, out=coords[:, 1], casting="unsafe")
    return Pillars(coords, point_pillar, point_index, (ny, nx))


def _pillarize_torch(points: torch.Tensor, g: GridConstants) -> Pillars:
    import torch

    if points.dim() != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, C>=3), got shape {tuple(points.shape)}")
    pts = points.float()
    dev = pts.device
    nx, ny = g.nx, g.ny
    # Divide by 1-element device tensors, not Python scalars: torch's CUDA `div` turns a CPU-scalar
    # divisor into a multiplication by its reciprocal, which is not bit-identical to a float32 division.
    consts = torch.tensor([g.x_min, g.y_min, g.px, g.py], dtype=torch.float32, device=dev)
    qx = (pts[:, 0] - consts[0:1]) / consts[2:3]
    qy = (pts[:, 1] - consts[1:2]) / consts[3:4]
    keep = (qx >= 0) & (qx < nx) & (qy >= 0) & (qy < ny) & torch.isfinite(pts[:, 2])
    point_index = torch.nonzero(keep).squeeze(1)  # ascending (row-major order of nonzero)
    flat = qy[point_index].to(torch.int64) * nx + qx[point_index].to(torch.int64)  # .to truncates (== floor, q >= 0)
    occ = torch.zeros(nx * ny, dtype=torch.bool, device=dev)
    occ[flat] = True
    cells = torch.nonzero(occ).squeeze(1)
    lut = torch.empty(nx * ny, dtype=torch.int64, device=dev)
    lut[cells] = torch.arange(cells.numel(), dtype=torch.int64, device=dev)
    point_pillar = lut[flat]
    coords = torch.stack([cells // nx, cells % nx], dim=1).to(torch.int32)
    return Pillars(coords, point_pillar, point_index, (ny, nx))


def _decorate_torch(points: torch.Tensor, pillars: Pillars, g: GridConstants) -> torch.Tensor:
    import torch

    pts = points.float()
    kept = pts[pillars.point_index]
    cr = pillars.coords[pillars.point_pillar].to(torch.float32)
    # float32 tensor (op) Python scalar keeps float32 maths; multiplication and subtraction are exact
    # IEEE operations on CUDA (no reciprocal trick as for division), one kernel each, so nothing fuses.
    off_x = (kept[:, 0] - float(g.x_min)) - (cr[:, 1] + 0.5) * float(g.px)
    off_y = (kept[:, 1] - float(g.y_min)) - (cr[:, 0] + 0.5) * float(g.py)
    off_z = (kept[:, 2] - float(g.z_min)) - float(g.z_centre)
    return torch.cat([kept, torch.stack([off_x, off_y, off_z], dim=1)], dim=1)


def _cupy_usable() -> bool:
    try:
        from fastpillars_ros.cuda import cuda_available
    except ImportError:  # pragma: no cover
        return False
    return cuda_available()


def _gpu_backend(choice: str) -> str:
    if choice not in ("auto", "cupy", "torch"):
        raise ValueError(f"gpu_backend must be 'auto', 'cupy' or 'torch', got {choice!r}")
    if choice == "auto":
        return "cupy" if _cupy_usable() else "torch"
    return choice


def _on_torch_stream(tensor: torch.Tensor) -> Any:
    """Context that makes CuPy run on the torch tensor's device and current stream (ordering with torch)."""
    import contextlib

    import cupy
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(tensor.device.index))
    stack.enter_context(cupy.cuda.ExternalStream(torch.cuda.current_stream(tensor.device).cuda_stream))
    return stack


def pillarize(points: np.ndarray | torch.Tensor, pc_range: tuple[float, ...] | list[float],
              pillar_size: tuple[float, ...] | list[float], *, gpu_backend: str = "auto") -> Pillars:
    """Assign points to BEV pillars (dynamic pillarization, no caps on points per pillar or pillars).

    Args:
        points: (N, C>=3) float32 [x, y, z, ...] in metres, lidar frame; numpy array, torch tensor (CPU or
            CUDA) or CuPy array. Other float dtypes are converted to float32 first.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) [m]; z bounds are not used for cropping.
        pillar_size: (px, py) [m].
        gpu_backend: for CUDA torch tensors: "cupy" (the kernels of ``cuda/pillarize.cu``), "torch"
            (pure torch ops, no CuPy needed) or "auto" (CuPy when it is installed and sees a GPU).

    Returns:
        :class:`Pillars` with numpy arrays for numpy input, torch tensors on the input's device for torch
        input, CuPy arrays for CuPy input. CPU torch tensors go through the numpy path (zero-copy). All
        paths give identical results (see the module docstring for the exact rules).
    """
    g = grid_constants(pc_range, pillar_size)
    if _is_torch(points):
        import torch

        if points.device.type == "cpu":
            p = _pillarize_numpy(points.detach().float().contiguous().numpy(), g)
            return Pillars(torch.from_numpy(p.coords), torch.from_numpy(p.point_pillar),
                           torch.from_numpy(p.point_index), p.grid_shape)
        if _gpu_backend(gpu_backend) == "cupy":
            import cupy

            from fastpillars_ros.ops.pillarize_cuda import pillarize_device

            pts = points.detach().float().contiguous()
            with _on_torch_stream(pts):
                p = pillarize_device(cupy.from_dlpack(pts), pc_range, pillar_size)
            return Pillars(torch.from_dlpack(p.coords), torch.from_dlpack(p.point_pillar),
                           torch.from_dlpack(p.point_index), p.grid_shape)
        return _pillarize_torch(points.detach(), g)
    if type(points).__module__.startswith("cupy"):
        from fastpillars_ros.ops.pillarize_cuda import pillarize_device

        return pillarize_device(points, pc_range, pillar_size)
    return _pillarize_numpy(points, g)


def decorate(points: np.ndarray | torch.Tensor, pillars: Pillars, pc_range: tuple[float, ...] | list[float],
             pillar_size: tuple[float, ...] | list[float], *, gpu_backend: str = "auto") -> np.ndarray | torch.Tensor:
    """Per-point features for the pillar encoder.

    Args:
        points: the same (N, C) points that were given to :func:`pillarize`.
        pillars: its result.
        pc_range, pillar_size, gpu_backend: as for :func:`pillarize`.

    Returns:
        (L, C + 3) float32, one row per kept point in ``pillars.point_index`` order: the C raw columns,
        then the offsets [m] of the point from its pillar centre in x, y and z (z centre = middle of the
        z range). Same array type and device as ``points``.
    """
    g = grid_constants(pc_range, pillar_size)
    if _is_torch(points):
        import torch

        if points.device.type == "cpu":
            return torch.from_numpy(decorate(
                points.detach().float().contiguous().numpy(),
                Pillars(pillars.coords.numpy(), pillars.point_pillar.numpy(), pillars.point_index.numpy(),
                        pillars.grid_shape), pc_range, pillar_size))
        if _gpu_backend(gpu_backend) == "cupy":
            import cupy

            from fastpillars_ros.ops.pillarize_cuda import decorate_device

            pts = points.detach().float().contiguous()
            with _on_torch_stream(pts):
                cp = Pillars(*(cupy.from_dlpack(t.contiguous()) for t in
                               (pillars.coords, pillars.point_pillar, pillars.point_index)), pillars.grid_shape)
                return torch.from_dlpack(decorate_device(cupy.from_dlpack(pts), cp, pc_range, pillar_size))
        return _decorate_torch(points.detach(), pillars, g)
    if type(points).__module__.startswith("cupy"):
        from fastpillars_ros.ops.pillarize_cuda import decorate_device

        return decorate_device(points, pillars, pc_range, pillar_size)

    return _decorate_numpy(_as_points_numpy(points), pillars, g)


def _decorate_numpy(pts: np.ndarray, pillars: Pillars, g: GridConstants) -> np.ndarray:
    """The compiled kernel where there is one (``ops/pillarize_cpu.py``, equal bit for bit), else
    :func:`_decorate_reference`."""
    if (lib := pillarize_cpu.kernel()) is None:
        return _decorate_reference(pts, pillars, g)
    return pillarize_cpu.decorate(lib, np.ascontiguousarray(pts), np.ascontiguousarray(pillars.point_index, np.int64),
                                  np.ascontiguousarray(pillars.point_pillar, np.int64),
                                  np.ascontiguousarray(pillars.coords, np.int32), g)


def _decorate_reference(pts: np.ndarray, pillars: Pillars, g: GridConstants) -> np.ndarray:
    """Decoration in numpy (the reference for the compiled and the CUDA kernels)."""
    pts = np.ascontiguousarray(pts)
    n_cols, n_kept = pts.shape[1], pillars.point_index.shape[0]
    out = np.empty((n_kept, n_cols + 3), np.float32)
    # Rows are moved as opaque (4 * C)-byte items and the output is addressed as a record (raw row, x, y, z):
    # ~10x faster than np.take(axis=0) and strided float column writes on (N, 4) float32.
    record = np.dtype({"names": ["raw", "x", "y", "z"],
                       "formats": [np.dtype((np.void, 4 * n_cols)), np.float32, np.float32, np.float32],
                       "offsets": [0, 4 * n_cols, 4 * n_cols + 4, 4 * n_cols + 8], "itemsize": 4 * (n_cols + 3)})
    out_rec = out.view(record).reshape(-1)
    kept_raw = pts.view(np.dtype((np.void, 4 * n_cols))).reshape(-1).take(pillars.point_index)
    out_rec["raw"] = kept_raw
    kept = kept_raw.view(np.float32).reshape(n_kept, n_cols)
    # Pillar centres once per pillar ((col + 0.5) * px in float32, as the kernel), then gathered.
    centre_x = pillars.coords[:, 1].astype(np.float32)
    centre_x += np.float32(0.5)
    centre_x *= g.px
    centre_y = pillars.coords[:, 0].astype(np.float32)
    centre_y += np.float32(0.5)
    centre_y *= g.py
    off = kept[:, 0] - g.x_min
    off -= centre_x.take(pillars.point_pillar)
    out_rec["x"] = off
    off = kept[:, 1] - g.y_min
    off -= centre_y.take(pillars.point_pillar)
    out_rec["y"] = off
    off = kept[:, 2] - g.z_min
    off -= g.z_centre
    out_rec["z"] = off
    return out
