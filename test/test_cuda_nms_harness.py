"""The kernels of ``fastpillars_ros/cuda/nms.cu``, executed on the CPU through ``test/cuda_harness``,
against the CPU reference (ops/iou.py, ops/nms.py) on random and degenerate boxes.

Inputs are float32 (what the GPU path gets); kernels and reference both compute the geometry in float64
on the same float32 values, so the device function agrees to ~1e-12 (checked at 1e-9) and the float32
IoU matrix to 1e-5 (its output precision); NMS keep lists are identical.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import cuda_harness
import numpy as np
import pytest
from test_ops_iou import adversarial_pairs, random_boxes
from test_ops_nms import detector_like, reference_groups, sorted_groups

from fastpillars_ros.ops import circle_nms, iou_3d, nms_3d, nms_bev, nms_grouped, rotated_iou_bev
from fastpillars_ros.ops.iou import iou_3d_pairs, rotated_iou_bev_pairs

pytestmark = pytest.mark.needs_tool("cxx")

CU_FILE = Path(__file__).resolve().parents[1] / "fastpillars_ros" / "cuda" / "nms.cu"
MODES = {"bev": 0, "3d": 1, "circle": 2}

# Launch sequence of ops/nms_cuda.py, with plain pointers. pair_iou calls the __device__ function
# directly (no launch) so that many row-aligned pairs are cheap to check.
WRAPPER = r"""
extern "C" int pair_iou(const float* a, const float* b, int n, int mode, double* out) {
    for (int i = 0; i < n; ++i) out[i] = box_iou(a + i * BOX_DIM, b + i * BOX_DIM, mode);
    return 0;
}

extern "C" int iou_matrix(const float* a, int n, const float* b, int m, int mode, float* out) {
    if (n == 0 || m == 0) return 0;
    launch(iou_matrix_kernel, dim3((m + IOU_TILE - 1) / IOU_TILE, (n + IOU_TILE - 1) / IOU_TILE),
           dim3(IOU_TILE, IOU_TILE), a, n, b, m, mode, out);
    return 0;
}

// Launchers with the CuPy calling convention (grid, block, kernel args) for the fake CuPy below.
extern "C" int launch_iou_matrix(unsigned gx, unsigned gy, unsigned bx, unsigned by, const float* a, int n,
                                 const float* b, int m, int mode, float* out) {
    launch(iou_matrix_kernel, dim3(gx, gy), dim3(bx, by), a, n, b, m, mode, out);
    return 0;
}

extern "C" int launch_nms_mask(unsigned gx, unsigned gy, unsigned bx, const float* boxes, int n, double threshold,
                               int mode, unsigned long long* mask) {
    launch(nms_mask_kernel, dim3(gx, gy), dim3(bx), boxes, n, threshold, mode, mask);
    return 0;
}

extern "C" int launch_nms_reduce(unsigned bx, const unsigned long long* mask, int n, unsigned long long* removed,
                                 long long* keep, int* num_keep, int max_keep) {
    launch(nms_reduce_kernel, dim3(1), dim3(bx), mask, n, removed, keep, num_keep, max_keep);
    return 0;
}

extern "C" int launch_nms_groups(unsigned gx, unsigned bx, const float* boxes, const int* count, int p,
                                 double threshold, int mode, int max_keep, unsigned long long* mask,
                                 unsigned long long* removed, unsigned char* keep) {
    launch(nms_groups_kernel, dim3(gx), dim3(bx), boxes, count, p, threshold, mode, max_keep, mask, removed, keep);
    return 0;
}

extern "C" int nms_sorted(const float* boxes, int n, double threshold, int mode, int max_keep,
                          unsigned long long* mask, unsigned long long* removed, long long* keep,
                          int* num_keep) {
    const int col_blocks = (n + NMS_BLOCK - 1) / NMS_BLOCK;
    launch(nms_mask_kernel, dim3(col_blocks, col_blocks), dim3(NMS_BLOCK), boxes, n, threshold, mode, mask);
    launch(nms_reduce_kernel, dim3(1), dim3(32), mask, n, removed, keep, num_keep, max_keep);
    return 0;
}
"""

P = ctypes.c_void_p
INT = ctypes.c_int


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    lib = cuda_harness.build(CU_FILE, WRAPPER)
    lib.pair_iou.argtypes = [P, P, INT, INT, P]
    lib.iou_matrix.argtypes = [P, INT, P, INT, INT, P]
    lib.nms_sorted.argtypes = [P, INT, ctypes.c_double, INT, INT, P, P, P, P]
    u = ctypes.c_uint
    lib.launch_iou_matrix.argtypes = [u, u, u, u, P, INT, P, INT, INT, P]
    lib.launch_nms_mask.argtypes = [u, u, u, P, INT, ctypes.c_double, INT, P]
    lib.launch_nms_reduce.argtypes = [u, P, INT, P, P, P, INT]
    lib.launch_nms_groups.argtypes = [u, u, P, P, INT, ctypes.c_double, INT, INT, P, P, P]
    return lib


def f32(boxes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(boxes[:, :7], dtype=np.float32)


def kernel_pair_iou(lib: ctypes.CDLL, a: np.ndarray, b: np.ndarray, mode: str) -> np.ndarray:
    a32, b32 = f32(a), f32(b)
    out = np.empty(len(a32), dtype=np.float64)
    assert lib.pair_iou(cuda_harness.ptr(a32), cuda_harness.ptr(b32), len(a32), MODES[mode],
                        cuda_harness.ptr(out)) == 0
    return out


def kernel_nms(lib: ctypes.CDLL, boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str,
               post_max: int | None = None) -> np.ndarray:
    """Host side as in ops/nms_cuda.py: stable sort by descending score, kernels, map ranks back."""
    order = np.argsort(-scores, kind="stable")
    b32 = f32(boxes[order])
    n = len(b32)
    col_blocks = (n + 63) // 64
    mask = np.zeros(n * col_blocks, dtype=np.uint64)
    removed = np.zeros(col_blocks, dtype=np.uint64)
    keep = np.full(n, -1, dtype=np.int64)
    num = np.zeros(1, dtype=np.int32)
    max_keep = n if post_max is None else post_max
    assert lib.nms_sorted(cuda_harness.ptr(b32), n, threshold, MODES[mode], max_keep, cuda_harness.ptr(mask),
                          cuda_harness.ptr(removed), cuda_harness.ptr(keep), cuda_harness.ptr(num)) == 0
    return order[keep[:num[0]]]


def as_f64(boxes: np.ndarray) -> np.ndarray:
    return f32(boxes).astype(np.float64)


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_device_iou_matches_cpu_reference_on_random_and_degenerate_pairs(lib: ctypes.CDLL, mode: str) -> None:
    rng = np.random.default_rng(0)
    fam = adversarial_pairs(rng, 300)
    a = np.concatenate([random_boxes(rng, 6000)] + [p[0] for p in fam.values()])
    b = np.concatenate([random_boxes(rng, 6000)] + [p[1] for p in fam.values()])
    ref = (rotated_iou_bev_pairs if mode == "bev" else iou_3d_pairs)(as_f64(a), as_f64(b))
    got = kernel_pair_iou(lib, a, b, mode)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)


def test_device_iou_of_exact_degenerate_cases(lib: ctypes.CDLL) -> None:
    fam = adversarial_pairs(np.random.default_rng(1), 200)
    np.testing.assert_allclose(kernel_pair_iou(lib, *fam["identical"], "bev"), 1.0, atol=1e-6)
    for touching in ("touching_side", "touching_end", "touching_perpendicular"):
        np.testing.assert_allclose(kernel_pair_iou(lib, *fam[touching], "bev"), 0.0, atol=1e-5)
    assert (kernel_pair_iou(lib, *fam["zero_size"], "bev") == 0).all()
    assert (kernel_pair_iou(lib, *fam["both_zero_size"], "3d") == 0).all()


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_iou_matrix_kernel_matches_cpu_reference(lib: ctypes.CDLL, mode: str) -> None:
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 37, spread=4), random_boxes(rng, 21, spread=4)  # partial tiles both ways
    a[:5] = b[:5]
    out = np.full((37, 21), np.nan, dtype=np.float32)
    assert lib.iou_matrix(cuda_harness.ptr(f32(a)), 37, cuda_harness.ptr(f32(b)), 21, MODES[mode],
                          cuda_harness.ptr(out)) == 0
    ref = (rotated_iou_bev if mode == "bev" else iou_3d)(as_f64(a), as_f64(b))
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 200])
def test_nms_kernels_keep_what_cpu_nms_keeps_across_block_boundaries(lib: ctypes.CDLL, n: int) -> None:
    rng = np.random.default_rng(n)
    boxes, scores = detector_like(rng, n, max(n // 3, 1), extent=15.0)
    for threshold in (0.1, 0.5):
        np.testing.assert_array_equal(kernel_nms(lib, boxes, scores, threshold, "bev"),
                                      nms_bev(as_f64(boxes), scores, threshold))


def test_nms_kernels_3d_circle_ties_and_post_max(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(7)
    boxes, scores = detector_like(rng, 150, 40, extent=15.0)
    boxes[:, 2] += rng.choice([0.0, 1.0, 4.0], 150)
    scores[::7] = 0.5  # ties: lower index first
    b64 = as_f64(boxes)
    np.testing.assert_array_equal(kernel_nms(lib, boxes, scores, 0.2, "3d"), nms_3d(b64, scores, 0.2))
    np.testing.assert_array_equal(kernel_nms(lib, boxes, scores, 1.5, "circle"), circle_nms(b64, scores, 1.5))
    np.testing.assert_array_equal(kernel_nms(lib, boxes, scores, 0.2, "bev", post_max=9),
                                  nms_bev(b64, scores, 0.2, post_max=9))
    twins = np.concatenate([boxes[:10], boxes[:10]])  # identical boxes: only the first of each pair stays
    np.testing.assert_array_equal(kernel_nms(lib, twins, np.ones(20), 0.9, "bev"), np.arange(10))


class _FakeKernel:
    """Stands in for a ``cupy.RawKernel``: ``kernel(grid, block, args)`` runs it through the harness."""

    def __init__(self, lib: ctypes.CDLL, name: str) -> None:
        self.lib, self.name = lib, name

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        conv = [cuda_harness.ptr(a) if isinstance(a, np.ndarray) else a.item() for a in args]
        if self.name == "iou_matrix_kernel":
            rc = self.lib.launch_iou_matrix(grid[0], grid[1], block[0], block[1], *conv)
        elif self.name == "nms_mask_kernel":
            rc = self.lib.launch_nms_mask(grid[0], grid[1], block[0], *conv)
        elif self.name == "nms_groups_kernel":
            rc = self.lib.launch_nms_groups(grid[0], block[0], *conv)
        else:
            assert grid == (1,)
            rc = self.lib.launch_nms_reduce(block[0], *conv)
        assert rc == 0


@pytest.fixture()
def fake_cupy(lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch):
    """numpy posing as CuPy, with RawModule kernels run by the harness: exercises ops/nms_cuda.py's host
    code (sorting, NaN handling, pre/post max, groups, launch configuration) without a GPU."""
    import types

    from fastpillars_ros.ops import nms_cuda

    fake = types.SimpleNamespace(**{k: getattr(np, k) for k in (
        "float32", "float64", "int32", "int64", "uint64", "empty", "zeros", "ascontiguousarray", "asarray",
        "isnan", "flatnonzero", "lexsort", "stack", "concatenate", "unique", "ndarray", "uint8", "minimum")})
    fake.asnumpy = np.asarray
    module = types.SimpleNamespace(get_function=lambda name: _FakeKernel(lib, name))
    monkeypatch.setattr(nms_cuda, "_module", lambda: (fake, module))
    return nms_cuda


def test_gpu_host_code_with_harness_kernels_matches_cpu_reference(fake_cupy) -> None:
    rng = np.random.default_rng(9)
    boxes, scores = detector_like(rng, 130, 40, extent=12.0)
    scores[::9] = 0.25  # ties
    b64 = as_f64(boxes)
    np.testing.assert_allclose(fake_cupy.iou_matrix_cuda(boxes[:20], boxes[:33]),
                               rotated_iou_bev(b64[:20], b64[:33]), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(fake_cupy.nms_cuda(boxes, scores, 0.2, pre_max=100, post_max=30),
                                  nms_bev(b64, scores, 0.2, pre_max=100, post_max=30))
    np.testing.assert_array_equal(fake_cupy.nms_cuda(boxes, scores, 0.2, kind="3d"), nms_3d(b64, scores, 0.2))
    np.testing.assert_array_equal(fake_cupy.nms_cuda(boxes, scores, 0.0, kind="circle", min_radius=1.2),
                                  circle_nms(b64, scores, 1.2))
    groups = rng.integers(0, 3, 130)
    np.testing.assert_array_equal(
        fake_cupy.nms_grouped_cuda(boxes, scores, groups, 0.2, pre_max=30, post_max=10),
        nms_grouped(b64, scores, groups, 0.2, pre_max=30, post_max=10))
    scores[[1, 5]] = np.nan
    with pytest.warns(RuntimeWarning, match="2 box"):
        keep = fake_cupy.nms_cuda(boxes, scores, 0.2)
    finite = np.flatnonzero(~np.isnan(scores))
    np.testing.assert_array_equal(keep, finite[nms_bev(b64[finite], scores[finite], 0.2)])
    assert fake_cupy.nms_cuda(boxes[:0], scores[:0], 0.2).shape == (0,)


def kernel_groups(lib: ctypes.CDLL, boxes: np.ndarray, valid: np.ndarray, threshold: float, mode: str,
                  max_keep: int, threads: int = 64) -> np.ndarray:
    groups, p = valid.shape
    stride = (p + 63) // 64
    count = valid.sum(axis=1, dtype=np.int32)
    mask = np.full(groups * p * stride, 0xDEADBEEF, dtype=np.uint64)  # stale contents must not matter
    removed = np.full(groups * stride, 0xFFFF, dtype=np.uint64)
    keep = np.full((groups, p), 7, dtype=np.uint8)
    assert lib.launch_nms_groups(groups, threads, cuda_harness.ptr(np.ascontiguousarray(boxes)),
                                 cuda_harness.ptr(count), p, threshold, MODES[mode], max_keep,
                                 cuda_harness.ptr(mask), cuda_harness.ptr(removed), cuda_harness.ptr(keep)) == 0
    return keep.astype(bool)


@pytest.mark.parametrize("mode", ["bev", "3d", "circle"])
def test_groups_kernel_keeps_what_cpu_grouped_nms_keeps_in_one_launch(lib: ctypes.CDLL, mode: str) -> None:
    # Row lengths across the 64-box word boundaries, an empty task and a full row (no padding).
    rng = np.random.default_rng(11)
    boxes, scores, valid = sorted_groups(rng, [1, 0, 63, 65, 130, 200], p=200)
    if mode == "3d":
        boxes[..., 2] += rng.choice([0.0, 1.0, 4.0], boxes.shape[:2]).astype(np.float32)
    threshold = 1.5 if mode == "circle" else 0.2
    got = kernel_groups(lib, boxes, valid, threshold, mode, max_keep=200)
    np.testing.assert_array_equal(got, reference_groups(boxes, scores, valid, threshold, mode))
    assert got.sum() > len(valid) and not (got & ~valid).any()  # some suppression happened, none on padding


def test_groups_kernel_stops_at_post_max_per_group(lib: ctypes.CDLL) -> None:
    boxes, scores, valid = sorted_groups(np.random.default_rng(12), [90, 150], p=160)
    got = kernel_groups(lib, boxes, valid, 0.1, "bev", max_keep=7, threads=32)
    np.testing.assert_array_equal(got, reference_groups(boxes, scores, valid, 0.1, "bev", post_max=7))
    assert got.sum(axis=1).tolist() == [7, 7]


def test_groups_host_code_with_harness_kernel_matches_cpu_reference(fake_cupy) -> None:
    boxes, scores, valid = sorted_groups(np.random.default_rng(13), [40, 0, 120], p=128)
    got = fake_cupy.nms_groups_cuda(boxes, valid, 0.2, pre_max=100, post_max=30)
    assert got.dtype == bool and got.shape == valid.shape
    np.testing.assert_array_equal(got, reference_groups(boxes, scores, valid, 0.2, "bev", pre_max=100,
                                                        post_max=30))
    circle = fake_cupy.nms_groups_cuda(boxes, valid, 0.0, kind="circle", min_radius=1.0)
    np.testing.assert_array_equal(circle, reference_groups(boxes, scores, valid, 1.0, "circle"))
    with pytest.raises(ValueError, match="G, P"):
        fake_cupy.nms_groups_cuda(boxes[0], valid, 0.2)


def test_detector_device_selection_with_harness_kernel_equals_the_cpu_selection(fake_cupy, monkeypatch) -> None:
    """Detector._select_on_device (the GPU frame's NMS, thresholds and ordering) with the kernel run by the
    harness on CPU tensors, against Detector._select (the CPU path) on the same decoder output."""
    import dataclasses

    import torch

    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.model.head import decode_dense

    monkeypatch.setattr(fake_cupy, "_to_cupy", lambda x, cupy, like=None: (
        x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)))
    monkeypatch.setattr(fake_cupy, "_back", lambda arr, like: (
        torch.from_numpy(np.asarray(arr)) if isinstance(like, torch.Tensor) else arr))
    # The small tiny360 network with its classes split into two tasks, as the official head splits its ten.
    # (Renamed: the shipped tiny360 weights are for one task and must not be looked up for it.)
    config = dataclasses.replace(load_model_config("tiny360"), name="tiny360_two_tasks",
                                 tasks=(("car",), ("pedestrian", "cyclist")))
    det = Detector(config, device="cpu", backend="torch", warmup=False, nms_pre_max=150)
    det.set_score_threshold({"car": 0.5, "pedestrian": 0.2})
    cfg, gen = det.config, torch.Generator().manual_seed(0)
    h, w = cfg.head_shape
    maps = [{**{n: 2 * torch.randn((1, c, h, w), generator=gen) for n, c in cfg.heads},
             "hm": 2 * torch.randn((1, len(task), h, w), generator=gen) - 3} for task in cfg.tasks]
    dense = decode_dense(maps, cfg)
    for kind in ("rotate", "circle", "none"):
        det.nms_kind = {"rotate": "bev", "circle": "circle", "none": None}[kind]
        device, cpu = det._select_on_device(dense), det._select(dense.compact()[0])
        assert len(cpu) > 100 and len(set(cpu.task.tolist())) == len(cfg.tasks)
        for name in ("boxes", "scores", "labels", "task"):
            assert torch.equal(getattr(device, name), getattr(cpu, name)), (kind, name)
