"""GPU pillarization with the CuPy kernels of ``fastpillars_ros/cuda/pillarize.cu``.

Entry points:

* :func:`pillarize_cloud_buffer` — straight from a ``sensor_msgs/PointCloud2`` data buffer on the host:
  one host-to-device copy of the raw bytes, then field extraction, pillarization and decoration on the
  GPU (the field descriptors are cached on the device per layout).
* :func:`pillarize_device` / :func:`decorate_device` — for (N, C) float32 CuPy arrays (torch CUDA
  tensors go through ``fastpillars_ros.ops.pillarize``, which converts them without copies).

Every result equals the CPU reference (``ops/pillarize.py`` and :func:`extract_fields_reference`)
element for element. The host sequence lives in :func:`run_pillarize` and is written against a small
backend interface (``xp``, ``launch``, ``to_host``) so that the CPU test harness can drive the very same
sequence with the kernels compiled as C++ (see ``test/test_cuda_pillarize_harness.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fastpillars_ros.ops.grid import GridConstants, Pillars, grid_constants

__all__ = ["BLOCK", "SCAN_ITEMS_PER_THREAD", "CloudLayout", "CloudPillars", "CupyBackend", "decorate_device",
           "extract_fields_reference", "pillarize_cloud_buffer", "pillarize_device", "run_pillarize"]

BLOCK = 256  # threads per block of every kernel launch on the GPU
SCAN_ITEMS_PER_THREAD = 8  # one scan block covers BLOCK * 8 items
MAX_GRID = 1 << 16  # element-wise kernels use grid-stride loops; more blocks than this buy nothing

# sensor_msgs/PointField datatype code -> (numpy type char, size in bytes)
_DATATYPES = {1: ("i1", 1), 2: ("u1", 1), 3: ("i2", 2), 4: ("u2", 2), 5: ("i4", 4), 6: ("u4", 4),
              7: ("f4", 4), 8: ("f8", 8)}


@dataclass(frozen=True)
class CloudLayout:
    """Where the output columns are in a PointCloud2 data buffer.

    Attributes:
        offsets: byte offset inside a point of each output column; columns 0, 1, 2 must be x, y, z [m].
        datatypes: sensor_msgs/PointField datatype code of each column (INT8=1 ... FLOAT64=8).
        point_step: bytes per point.
        width, height: points per row and rows (height 1 for unorganized clouds); N = width * height.
        row_step: bytes per row (default ``width * point_step``).
        is_bigendian: byte order of every field.
        scales: factor applied (in float32, after conversion) to each column, e.g. 1/255 for intensity;
            default 1.
    """

    offsets: tuple[int, ...]
    datatypes: tuple[int, ...]
    point_step: int
    width: int
    height: int = 1
    row_step: int | None = None
    is_bigendian: bool = False
    scales: tuple[float, ...] | None = None

    @property
    def n_points(self) -> int:
        return self.width * self.height

    @property
    def n_cols(self) -> int:
        return len(self.offsets)

    @property
    def row_bytes(self) -> int:
        return self.width * self.point_step if self.row_step is None else self.row_step

    def column_scales(self) -> tuple[float, ...]:
        return (1.0,) * self.n_cols if self.scales is None else tuple(self.scales)

    def validate(self, nbytes: int) -> None:
        """Raise ``ValueError`` when the layout is inconsistent or does not fit in ``nbytes`` bytes."""
        if self.n_cols < 3 or len(self.datatypes) != self.n_cols or len(self.column_scales()) != self.n_cols:
            raise ValueError("layout needs >= 3 columns (x, y, z first) and one datatype/scale per column")
        for off, dt in zip(self.offsets, self.datatypes, strict=True):
            if dt not in _DATATYPES:
                raise ValueError(f"unsupported PointField datatype {dt}")
            if off < 0 or off + _DATATYPES[dt][1] > self.point_step:
                raise ValueError(f"field at offset {off} (datatype {dt}) does not fit in point_step {self.point_step}")
        if self.width < 0 or self.height < 0 or self.row_bytes < self.width * self.point_step:
            raise ValueError(f"row_step {self.row_bytes} < width * point_step")
        if self.n_points and (self.height - 1) * self.row_bytes + self.width * self.point_step > nbytes:
            raise ValueError(f"buffer of {nbytes} bytes is too small for {self.height} x {self.width} points")


@dataclass(frozen=True)
class CloudPillars:
    """Result of :func:`pillarize_cloud_buffer` (CuPy arrays on the GPU).

    points: (N, C) float32 extracted columns; valid: (N,) uint8, 1 where x, y, z are finite;
    pillars: :class:`Pillars` with CuPy arrays; features: (L, C + 3) float32 decorated kept points (or None).
    """

    points: Any
    valid: Any
    pillars: Pillars
    features: Any


def _as_bytes(buffer: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(buffer, np.ndarray):
        return np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    return np.frombuffer(buffer, np.uint8)


def extract_fields_reference(buffer: bytes | bytearray | memoryview | np.ndarray, layout: CloudLayout
                             ) -> tuple[np.ndarray, np.ndarray]:
    """CPU reference of the ``extract_fields`` kernel: (N, C) float32 columns and (N,) uint8 validity.

    Each field is converted to float32 with round-to-nearest (``astype``) and multiplied by its scale in
    float32; valid = x, y and z finite. Points are numbered row by row (i = row * width + column).
    """
    raw = _as_bytes(buffer)
    layout.validate(raw.nbytes)
    n = layout.n_points
    points = np.empty((n, layout.n_cols), np.float32)
    order = ">" if layout.is_bigendian else "<"
    for c, (off, dt, scale) in enumerate(zip(layout.offsets, layout.datatypes, layout.column_scales(), strict=True)):
        if n == 0:
            break
        # A strided (possibly unaligned) view of one field over all rows and columns of the cloud.
        view = np.ndarray((layout.height, layout.width), np.dtype(order + _DATATYPES[dt][0]), raw, off,
                          (layout.row_bytes, layout.point_step))
        col = view.reshape(-1).astype(np.float32)
        points[:, c] = col * np.float32(scale)
    valid = np.isfinite(points[:, :3]).all(axis=1).astype(np.uint8)
    return points, valid


class Backend(Protocol):
    """What :func:`run_pillarize` needs: an array module, kernel launches and device-to-host reads."""

    xp: Any
    max_grid: int  # most blocks of an element-wise (grid-stride) launch
    block: int  # threads per block
    scan_items: int  # items per thread of scan_blocks

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None: ...

    def to_host(self, array: Any) -> np.ndarray: ...


def _grid(n: int, be: Backend) -> int:
    return max(1, min(-(-n // be.block), be.max_grid))


def _inclusive_scan(be: Backend, data: Any, out: Any) -> None:
    """out = inclusive prefix sum of the 1-D uint32 ``data`` (may alias ``out``): per-block scans, then the
    block totals are scanned recursively and added back."""
    n = int(data.shape[0])
    per_block = be.block * be.scan_items
    n_blocks = -(-n // per_block)
    sums = be.xp.empty(n_blocks, be.xp.uint32)
    be.launch("scan_blocks", n_blocks, be.block, (data, out, sums, np.int64(n), np.int32(be.scan_items)))
    if n_blocks > 1:
        _inclusive_scan(be, sums, sums)
        be.launch("add_block_offsets", n_blocks, be.block, (out, sums, np.int64(n), np.int64(per_block)))


def run_pillarize(be: Backend, points: Any, valid: Any | None, g: GridConstants, *, with_features: bool
                  ) -> tuple[Pillars, Any]:
    """The kernel sequence: pillar_cells, two scans, one read-back of (L, M), pillar_coords, compact_points
    and optionally decorate_points. ``points`` (N, C) float32 C-contiguous on the backend's device."""
    xp = be.xp
    n, n_cols = int(points.shape[0]), int(points.shape[1])
    n_cells = g.nx * g.ny
    if n == 0:
        empty = Pillars(xp.empty((0, 2), xp.int32), xp.empty(0, xp.int64), xp.empty(0, xp.int64), (g.ny, g.nx))
        return empty, (xp.empty((0, n_cols + 3), xp.float32) if with_features else None)
    cell = xp.empty(n, xp.int64)
    keep_scan = xp.empty(n, xp.uint32)
    occupancy = xp.zeros(n_cells, xp.uint32)
    be.launch("pillar_cells", _grid(n, be), be.block,
              (points, np.int32(n_cols), np.int64(n), points if valid is None else valid,
               np.int32(valid is not None), g.x_min, g.y_min, g.px, g.py, np.int32(g.nx), np.int32(g.ny),
               cell, keep_scan, occupancy))
    _inclusive_scan(be, keep_scan, keep_scan)  # keep flags -> output slot + 1
    occ_scan = xp.empty(n_cells, xp.uint32)
    _inclusive_scan(be, occupancy, occ_scan)  # occupancy -> pillar id + 1
    n_kept, n_pillars = (int(v) for v in be.to_host(xp.stack([keep_scan[-1], occ_scan[-1]])))

    coords = xp.empty((n_pillars, 2), xp.int32)
    point_index = xp.empty(n_kept, xp.int64)
    point_pillar = xp.empty(n_kept, xp.int64)
    if n_pillars:
        be.launch("pillar_coords", _grid(n_cells, be), be.block,
                  (occupancy, occ_scan, np.int64(n_cells), np.int32(g.nx), coords))
        be.launch("compact_points", _grid(n, be), be.block,
                  (cell, keep_scan, occ_scan, np.int64(n), point_index, point_pillar))
    pillars = Pillars(coords, point_pillar, point_index, (g.ny, g.nx))
    features = decorate_with(be, points, pillars, g) if with_features else None
    return pillars, features


def decorate_with(be: Backend, points: Any, pillars: Pillars, g: GridConstants) -> Any:
    """(L, C + 3) float32 features via the ``decorate_points`` kernel."""
    n_cols = int(points.shape[1])
    n_kept = int(pillars.point_index.shape[0])
    out = be.xp.empty((n_kept, n_cols + 3), be.xp.float32)
    if n_kept:
        be.launch("decorate_points", _grid(n_kept, be), be.block,
                  (points, np.int32(n_cols), pillars.point_index, pillars.point_pillar, pillars.coords,
                   np.int64(n_kept), g.x_min, g.y_min, g.z_min, g.px, g.py, g.z_centre, out))
    return out


def run_extract(be: Backend, raw: Any, layout: CloudLayout, descriptors: tuple[Any, Any, Any]) -> tuple[Any, Any]:
    """Launch ``extract_fields`` on the device copy ``raw`` (uint8) of a PointCloud2 buffer."""
    n = layout.n_points
    points = be.xp.empty((n, layout.n_cols), be.xp.float32)
    valid = be.xp.empty(n, be.xp.uint8)
    if n:
        offsets, datatypes, scales = descriptors
        be.launch("extract_fields", _grid(n, be), be.block,
                  (raw, np.int64(n), np.int64(layout.width), np.int64(layout.row_bytes), np.int64(layout.point_step),
                   offsets, datatypes, scales, np.int32(layout.n_cols), np.int32(layout.is_bigendian), points, valid))
    return points, valid


def layout_descriptors(xp: Any, layout: CloudLayout) -> tuple[Any, Any, Any]:
    """Per-column offsets (int32), datatypes (int32) and scales (float32) as arrays of module ``xp``."""
    return (xp.asarray(np.asarray(layout.offsets, np.int32)), xp.asarray(np.asarray(layout.datatypes, np.int32)),
            xp.asarray(np.asarray(layout.column_scales(), np.float32)))


class CupyBackend:
    """Launches the kernels of ``pillarize.cu`` with CuPy on the current device and stream."""

    block = BLOCK
    max_grid = MAX_GRID
    scan_items = SCAN_ITEMS_PER_THREAD

    def __init__(self) -> None:
        import cupy

        from fastpillars_ros.cuda import load_module

        self.xp = cupy
        self.module = load_module("pillarize")
        self._kernels: dict[str, Any] = {}
        self._descriptors: dict[tuple, tuple[Any, Any, Any]] = {}

    def launch(self, kernel: str, grid: int, block: int, args: tuple) -> None:
        fn = self._kernels.get(kernel)
        if fn is None:
            fn = self._kernels[kernel] = self.module.get_function(kernel)
        fn((grid,), (block,), args)

    def to_host(self, array: Any) -> np.ndarray:
        return array.get()

    def descriptors(self, layout: CloudLayout) -> tuple[Any, Any, Any]:
        key = (layout.offsets, layout.datatypes, layout.column_scales())
        if key not in self._descriptors:
            if len(self._descriptors) > 16:
                self._descriptors.clear()
            self._descriptors[key] = layout_descriptors(self.xp, layout)
        return self._descriptors[key]


_backends = threading.local()


def _cupy_backend() -> CupyBackend:
    import cupy

    device = cupy.cuda.runtime.getDevice()
    cache = getattr(_backends, "by_device", None)
    if cache is None:
        cache = _backends.by_device = {}
    if device not in cache:
        cache[device] = CupyBackend()
    return cache[device]


def pillarize_cloud_buffer(buffer: bytes | bytearray | memoryview | np.ndarray, layout: CloudLayout,
                           pc_range: Sequence[float], pillar_size: Sequence[float], *, with_features: bool = True
                           ) -> CloudPillars:
    """Pillarize a PointCloud2 data buffer (host memory) on the GPU.

    Args:
        buffer: the message's ``data`` bytes (host).
        layout: where x, y, z (and further columns) are, see :class:`CloudLayout`.
        pc_range, pillar_size: as for :func:`fastpillars_ros.ops.pillarize`.
        with_features: also run the decoration kernel.

    Returns:
        :class:`CloudPillars` of CuPy arrays on the current device. Points whose x, y or z is not finite
        are dropped. Raises :class:`fastpillars_ros.cuda.CudaUnavailableError` without CuPy or a GPU.
    """
    be = _cupy_backend()
    raw_host = _as_bytes(buffer)
    layout.validate(raw_host.nbytes)
    g = grid_constants(pc_range, pillar_size)
    raw = be.xp.asarray(raw_host)  # the one host-to-device copy
    points, valid = run_extract(be, raw, layout, be.descriptors(layout))
    pillars, features = run_pillarize(be, points, valid, g, with_features=with_features)
    return CloudPillars(points, valid, pillars, features)


def pillarize_device(points: Any, pc_range: Sequence[float], pillar_size: Sequence[float]) -> Pillars:
    """Pillarize (N, C>=3) float32 points already on the GPU (CuPy array) with the CUDA kernels."""
    be = _cupy_backend()
    pts = be.xp.ascontiguousarray(points, dtype=be.xp.float32)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, C>=3), got shape {pts.shape}")
    pillars, _ = run_pillarize(be, pts, None, grid_constants(pc_range, pillar_size), with_features=False)
    return pillars


def decorate_device(points: Any, pillars: Pillars, pc_range: Sequence[float], pillar_size: Sequence[float]) -> Any:
    """(L, C + 3) float32 decorated features of CuPy points/pillars with the ``decorate_points`` kernel."""
    be = _cupy_backend()
    pts = be.xp.ascontiguousarray(points, dtype=be.xp.float32)
    return decorate_with(be, pts, pillars, grid_constants(pc_range, pillar_size))
