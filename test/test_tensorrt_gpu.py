"""TensorRT back end on a GPU against the torch back end (skipped without a GPU or without TensorRT).

The engine-cache logic and the rebuild decisions are tested without TensorRT in test_engine_cache.py; these
tests run the real engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_data import real_file

from fastpillars_ros.detector import Detector
from fastpillars_ros.ops import rotated_iou_bev
from fastpillars_ros.pointcloud import read_points
from fastpillars_ros.runtime.tensorrt_backend import tensorrt_version

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(tensorrt_version() is None, reason="TensorRT is not installed"),
]


@pytest.fixture(scope="module")
def kitti_points() -> np.ndarray:
    return read_points(real_file("kitti/training/velodyne/000000.bin"))


@pytest.fixture(scope="module")
def torch_result(kitti_points):
    return Detector("tiny", device="cuda", backend="torch", warmup=False).detect(kitti_points)


def test_tensorrt_fp32_gives_the_torch_boxes(kitti_points, torch_result, tmp_path):
    det = Detector("tiny", device="cuda", backend="tensorrt", precision="fp32", engine_cache_dir=tmp_path,
                   warmup=False)
    assert det.backend == "tensorrt"
    got = det.detect(kitti_points)
    # TensorRT may run fp32 convolutions as TF32: agreement to ~1e-3 relative, not bit for bit.
    assert len(got) == len(torch_result) > 0
    np.testing.assert_allclose(got.boxes, torch_result.boxes, atol=0.05)
    np.testing.assert_allclose(got.scores, torch_result.scores, atol=5e-3)


def test_tensorrt_fp16_finds_the_torch_objects(kitti_points, torch_result, tmp_path):
    got = Detector("tiny", device="cuda", backend="tensorrt", precision="fp16", engine_cache_dir=tmp_path,
                   warmup=False).detect(kitti_points)
    confident = torch_result.boxes[torch_result.scores > 0.3]
    assert len(confident) > 0
    iou = rotated_iou_bev(confident.astype(np.float64), got.boxes.astype(np.float64))
    assert (iou.max(axis=1) > 0.7).mean() >= 0.95


def test_a_second_detector_reuses_the_cached_engine(tmp_path):
    first = Detector("tiny", device="cuda", backend="tensorrt", engine_cache_dir=tmp_path, warmup=False)
    second = Detector("tiny", device="cuda", backend="tensorrt", engine_cache_dir=tmp_path, warmup=False)
    assert first._dense.built and not second._dense.built
