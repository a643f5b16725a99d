"""GPU pillarization (CuPy kernels and the pure-torch CUDA path) equals the CPU reference exactly.

Runs only where a CUDA GPU is present; unlike the harness tests, these also catch nvcc/NVRTC code
generation differences such as FMA contraction (the harness compiles with -ffp-contract=off).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pillar_bounds import BOUNDS_PILLAR, BOUNDS_RANGE, bound_points, cells_of, expected_cells
from test_cuda_pillarize_harness import (
    _CODES,
    KITTI_BINS,
    KITTI_PILLAR,
    KITTI_RANGE,
    LAYOUTS,
    _cloud_values,
    _pack,
    adversarial_points,
    random_points,
)

from fastpillars_ros.cuda import cuda_available
from fastpillars_ros.ops import Pillars, decorate, pillarize
from fastpillars_ros.ops.pillarize import _decorate_torch, _pillarize_torch, grid_constants
from fastpillars_ros.ops.pillarize_cuda import CloudLayout, extract_fields_reference

pytestmark = pytest.mark.gpu

needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")
needs_cupy = pytest.mark.skipif(not cuda_available(), reason="CuPy is not installed or sees no CUDA GPU")


def _host(a: object) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def assert_same(got: Pillars, ref: Pillars) -> None:
    assert got.grid_shape == ref.grid_shape
    for name in ("coords", "point_pillar", "point_index"):
        a, b = _host(getattr(got, name)), getattr(ref, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def assert_same_bits(got: np.ndarray, ref: np.ndarray) -> None:
    """float32 arrays equal bit for bit, except that a NaN may carry any payload: arithmetic on a NaN
    gives the canonical 0x7fffffff on the GPU but keeps the input's payload on x86."""
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.where(nan, 0, got.view(np.uint32)), np.where(nan, 0, ref.view(np.uint32)))


def inputs() -> list[tuple[str, np.ndarray]]:
    cases = [("random", random_points(50_000, 0)), ("adversarial", adversarial_points(1))]
    return cases + [(p.name, np.fromfile(p, np.float32).reshape(-1, 4)) for p in KITTI_BINS]


@needs_torch_cuda
@pytest.mark.parametrize("backend", ["torch", "cupy"])
def test_torch_cuda_tensors_give_cpu_reference_results(backend: str) -> None:
    if backend == "cupy" and not cuda_available():
        pytest.skip("CuPy is not installed or sees no CUDA GPU")
    for name, pts in inputs():
        ref = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
        dev = torch.from_numpy(pts).cuda()
        got = pillarize(dev, KITTI_RANGE, KITTI_PILLAR, gpu_backend=backend)
        assert got.coords.device == dev.device, name
        assert_same(got, ref)
        feats = decorate(dev, got, KITTI_RANGE, KITTI_PILLAR, gpu_backend=backend)
        np.testing.assert_array_equal(_host(feats).view(np.uint32),
                                      decorate(pts, ref, KITTI_RANGE, KITTI_PILLAR).view(np.uint32), err_msg=name)


@needs_torch_cuda
def test_pure_torch_functions_on_cuda_equal_cpu_reference() -> None:
    g = grid_constants(KITTI_RANGE, KITTI_PILLAR)
    pts = random_points(20_000, 3)
    ref = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
    got = _pillarize_torch(torch.from_numpy(pts).cuda(), g)
    assert_same(got, ref)
    np.testing.assert_array_equal(_host(_decorate_torch(torch.from_numpy(pts).cuda(), got, g)),
                                  decorate(pts, ref, KITTI_RANGE, KITTI_PILLAR))


@needs_torch_cuda
@pytest.mark.parametrize("backend", ["torch", "cupy"])
def test_each_bound_keeps_points_on_and_inside_it_and_drops_points_outside(backend: str) -> None:
    if backend == "cupy" and not cuda_available():
        pytest.skip("CuPy is not installed or sees no CUDA GPU")
    p = pillarize(torch.from_numpy(bound_points()).cuda(), BOUNDS_RANGE, BOUNDS_PILLAR, gpu_backend=backend)
    assert cells_of(_host(p.point_index), _host(p.point_pillar), _host(p.coords)) == expected_cells()


@needs_cupy
def test_cupy_arrays_give_cpu_reference_results() -> None:
    import cupy

    for name, pts in inputs():
        ref = pillarize(pts, KITTI_RANGE, KITTI_PILLAR)
        got = pillarize(cupy.asarray(pts), KITTI_RANGE, KITTI_PILLAR)
        assert isinstance(got.coords, cupy.ndarray), name
        assert_same(got, ref)


@needs_cupy
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_cloud_buffer_path_equals_reference_extraction_and_pillarization(name: str) -> None:
    from fastpillars_ros.ops.pillarize_cuda import pillarize_cloud_buffer

    fields, step, columns, scales, big, width = LAYOUTS[name]
    n = 40_000
    values = _cloud_values(n, seed=7)
    buf, width, row_step = _pack(fields, step, values, big=big, row_pad=6 if width else 0, width=width)
    by_name = {f[0]: f for f in fields}
    layout = CloudLayout(offsets=tuple(by_name[c][1] for c in columns),
                         datatypes=tuple(_CODES[by_name[c][2]] for c in columns), point_step=step, width=width,
                         height=n // width, row_step=row_step, is_bigendian=big, scales=scales)
    out = pillarize_cloud_buffer(buf, layout, KITTI_RANGE, KITTI_PILLAR)
    ref_points, ref_valid = extract_fields_reference(buf, layout)
    assert_same_bits(_host(out.points), ref_points)
    np.testing.assert_array_equal(_host(out.valid), ref_valid)
    masked = np.where(ref_valid[:, None] != 0, ref_points, np.nan)
    ref = pillarize(masked, KITTI_RANGE, KITTI_PILLAR)
    assert_same(out.pillars, ref)
    np.testing.assert_array_equal(_host(out.features).view(np.uint32),
                                  decorate(ref_points, ref, KITTI_RANGE, KITTI_PILLAR).view(np.uint32))


@needs_cupy
def test_real_kitti_bytes_through_the_cloud_buffer_path() -> None:
    from fastpillars_ros.ops.pillarize_cuda import pillarize_cloud_buffer

    raw = Path(KITTI_BINS[0]).read_bytes()
    layout = CloudLayout(offsets=(0, 4, 8, 12), datatypes=(7, 7, 7, 7), point_step=16, width=len(raw) // 16)
    out = pillarize_cloud_buffer(raw, layout, KITTI_RANGE, KITTI_PILLAR)
    pts = np.frombuffer(raw, np.float32).reshape(-1, 4)
    assert_same(out.pillars, pillarize(pts, KITTI_RANGE, KITTI_PILLAR))
