"""GPU path (ops/nms_cuda.py + cuda/nms.cu through CuPy) against the CPU reference. Needs a CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ops_iou import adversarial_pairs, random_boxes
from test_ops_nms import detector_like, reference_groups, sorted_groups

from fastpillars_ros.ops import circle_nms, iou_3d, nms_3d, nms_bev, nms_grouped, rotated_iou_bev

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy():
    cp = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return cp


def on_gpu(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype, device="cuda")


def f64_of_f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("fn", [rotated_iou_bev, iou_3d])
def test_gpu_iou_matrix_matches_cpu(cupy, fn) -> None:
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 300, spread=5), random_boxes(rng, 200, spread=5)
    out = fn(on_gpu(a), on_gpu(b))
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (300, 200)
    np.testing.assert_allclose(out.cpu().numpy(), fn(f64_of_f32(a), f64_of_f32(b)), atol=1e-5, rtol=0)
    # CuPy in -> CuPy out
    from fastpillars_ros.ops.nms_cuda import iou_matrix_cuda

    cp_out = iou_matrix_cuda(cupy.asarray(a), cupy.asarray(b), three_d=fn is iou_3d)
    assert isinstance(cp_out, cupy.ndarray)
    np.testing.assert_allclose(cp_out.get(), out.cpu().numpy(), atol=0)


def test_gpu_iou_on_degenerate_pairs_matches_cpu(cupy) -> None:
    for a, b in adversarial_pairs(np.random.default_rng(1), 64).values():
        got = torch.diagonal(rotated_iou_bev(on_gpu(a), on_gpu(b))).cpu().numpy()
        ref = np.diag(rotated_iou_bev(f64_of_f32(a), f64_of_f32(b)))
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 3000])
def test_gpu_nms_keeps_what_cpu_nms_keeps(cupy, n: int) -> None:
    rng = np.random.default_rng(n)
    boxes, scores = detector_like(rng, n, max(n // 3, 1))
    ref_boxes = f64_of_f32(boxes)
    for threshold in (0.1, 0.5):
        keep = nms_bev(on_gpu(boxes), on_gpu(scores, torch.float64), threshold, pre_max=1000, post_max=500)
        assert keep.is_cuda and keep.dtype == torch.int64
        np.testing.assert_array_equal(keep.cpu().numpy(),
                                      nms_bev(ref_boxes, scores, threshold, pre_max=1000, post_max=500))
    np.testing.assert_array_equal(nms_3d(on_gpu(boxes), on_gpu(scores, torch.float64), 0.2).cpu().numpy(),
                                  nms_3d(ref_boxes, scores, 0.2))
    np.testing.assert_array_equal(circle_nms(on_gpu(boxes), on_gpu(scores, torch.float64), 1.0).cpu().numpy(),
                                  circle_nms(ref_boxes, scores, 1.0))


def test_gpu_grouped_nms_matches_cpu(cupy) -> None:
    rng = np.random.default_rng(5)
    boxes, scores = detector_like(rng, 600, 200)
    groups = rng.integers(0, 4, 600)
    for kind in ("bev", "3d", "circle"):
        keep = nms_grouped(on_gpu(boxes), on_gpu(scores, torch.float64), torch.as_tensor(groups, device="cuda"),
                           0.2, kind=kind, pre_max=100, post_max=40, min_radius=1.0)
        ref = nms_grouped(f64_of_f32(boxes), scores, groups, 0.2, kind=kind, pre_max=100, post_max=40,
                          min_radius=1.0)
        np.testing.assert_array_equal(keep.cpu().numpy(), ref)


def test_gpu_nan_scores_warn_and_empty_input(cupy) -> None:
    boxes = on_gpu(random_boxes(np.random.default_rng(6), 10))
    scores = torch.rand(10, device="cuda", dtype=torch.float64)
    scores[2] = float("nan")
    with pytest.warns(RuntimeWarning, match="1 box"):
        keep = nms_bev(boxes, scores, 0.5)
    assert 2 not in keep.cpu().tolist()
    empty = nms_bev(boxes[:0], scores[:0], 0.5)
    assert empty.is_cuda and empty.dtype == torch.int64 and empty.numel() == 0


@pytest.mark.parametrize("kind", ["bev", "3d", "circle"])
def test_gpu_groups_kernel_keeps_what_cpu_grouped_nms_keeps(cupy, kind: str) -> None:
    from fastpillars_ros.ops.nms_cuda import nms_groups_cuda

    # The official head's layout: 6 tasks, up to 1,000 candidates each, sorted by score on the device.
    boxes, scores, valid = sorted_groups(np.random.default_rng(21), [1000, 0, 700, 64, 65, 999], p=1000,
                                         extent=40.0)
    threshold = 1.0 if kind == "circle" else 0.2
    keep = nms_groups_cuda(on_gpu(boxes), on_gpu(valid, torch.bool), threshold, kind=kind, pre_max=900,
                           post_max=83, min_radius=threshold if kind == "circle" else None)
    assert keep.dtype == torch.bool and keep.is_cuda
    np.testing.assert_array_equal(keep.cpu().numpy(), reference_groups(boxes, scores, valid, threshold, kind,
                                                                       pre_max=900, post_max=83))


def test_detector_device_selection_equals_the_cpu_selection_on_the_same_decoder_output(cupy) -> None:
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.model.head import DenseCandidates, decode_dense

    det = Detector("nuscenes_official", device="cuda", backend="torch", precision="fp16", warmup=False)
    det.set_score_threshold(0.3)
    cfg, gen = det.config, torch.Generator("cuda").manual_seed(0)
    h, w = cfg.head_shape
    maps = [{**{n: 2 * torch.randn((1, c, h, w), device="cuda", generator=gen) for n, c in cfg.heads},
             "hm": 2 * torch.randn((1, len(task), h, w), device="cuda", generator=gen) - 3} for task in cfg.tasks]
    dense = decode_dense(maps, cfg)  # thousands of candidates in every task
    gpu = det._select_on_device(dense)
    on_cpu = DenseCandidates(*(None if t is None else t.cpu() for t in (
        dense.boxes, dense.scores, dense.labels, dense.valid, dense.velocities)))
    cpu = det._select(on_cpu.compact()[0])
    assert len(cpu) > 10
    for name in ("boxes", "scores", "labels", "task"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name

