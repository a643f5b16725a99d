"""Training on real scans labelled only in the camera's view: the unlabelled rest of the scan is masked out of the
heatmap loss (and the mask turns with the augmentation), real and simulated folders are mixed, fine-tuning
starts from given weights, and the weights carry their licence and calibrated thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from real_data import real_file
from test_train import SMALL, frames, make_frame

from fastpillars_ros.boxes import KittiCalib
from fastpillars_ros.config import load_model_config
from fastpillars_ros.detector import Detector
from fastpillars_ros.model import build_model, checkpoint_meta, save_checkpoint, update_checkpoint_meta
from fastpillars_ros.train.data import (
    LABEL_HALF_FOV,
    CameraViewFrames,
    ConcatFrames,
    TrainSet,
    camera_half_fov,
    outside_wedge,
)
from fastpillars_ros.train.engine import TrainOptions, train
from fastpillars_ros.train.targets import head_geometry

TINY360 = load_model_config("tiny360")


def test_kitti_camera_half_fov_is_about_forty_degrees():
    calib = KittiCalib.from_file(real_file("kitti/training/calib/000000.txt"))
    assert 40.0 < math.degrees(camera_half_fov(calib)) < 41.5


def test_outside_wedge_masks_cells_behind_and_beside_the_view():
    geo = head_geometry(TINY360)
    mask = outside_wedge(geo, 0.0, math.radians(40))
    def cell(x: float, y: float) -> bool:
        return bool(mask[int((y - geo.y_min) / geo.cell_y), int((x - geo.x_min) / geo.cell_x)])
    assert not cell(20.0, 0.0) and not cell(20.0, 15.0)  # ahead, 37 degrees left: labelled
    assert cell(20.0, 20.0) and cell(-20.0, 0.0) and cell(0.5, 30.0)  # 45 degrees, behind, beside
    turned = outside_wedge(geo, math.pi, math.radians(40))
    assert not turned[int((0.0 - geo.y_min) / geo.cell_y), int((-20.0 - geo.x_min) / geo.cell_x)]


def _camera_view_source(n: int) -> CameraViewFrames:
    """Synthetic frames with KITTI's calibration (camera view +-40.7 degrees) and every object well inside the
    view (within 22 degrees of the axis)."""
    rng = np.random.default_rng(5)
    calib = KittiCalib.from_file(real_file("kitti/training/calib/000000.txt"))
    out = []
    for _ in range(n):
        f = make_frame(rng, n_objects=2, x_range=(5.0, 11.3), y_half=2.0)
        f.calib = calib
        out.append(f)
    return CameraViewFrames(out)


def test_camera_view_frames_mask_the_unlabelled_view_and_the_mask_turns_with_the_scene():
    config = load_model_config(SMALL)
    src = _camera_view_source(3)
    assert LABEL_HALF_FOV in src[0].extras
    plain = TrainSet(src, config, augment=False)[0]["targets"].ignore
    geo = head_geometry(config)
    expected = outside_wedge(geo, 0.0, src[0].extras[LABEL_HALF_FOV])
    assert np.array_equal(plain | expected, plain) and plain.sum() >= expected.sum() > 0
    # With augmentation (y-flip, turn, scale) the masked wedge is the unmasked one turned by the same angle:
    # an object's cell is never masked, whatever the turn.
    aug = TrainSet(src, config, augment=True)
    for epoch in range(4):
        s = aug[(epoch, 0)]
        t = s["targets"]
        assert len(t.ind[0]) > 0
        assert not t.ignore.reshape(-1)[t.ind[0]].any()


def test_concatenated_sources_index_through_each_source_in_order():
    sim, real = frames(4, seed=1), _camera_view_source(2)
    both = ConcatFrames([sim, real])
    assert len(both) == 6
    assert both[3] is sim[3]
    assert LABEL_HALF_FOV in both[4].extras and np.array_equal(both[5].points, real.source[1].points)


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path):
    config = load_model_config(SMALL)
    torch.manual_seed(7)
    start = build_model(config)
    save_checkpoint(start, tmp_path / "start.pt")
    summary = train(TrainOptions(config=SMALL, out=str(tmp_path / "run"), epochs=1, batch_size=2, workers=0,
                                 progress=False, threads=1, max_steps=1, lr=1e-12, init=str(tmp_path / "start.pt"),
                                 licence="test licence"), train_source=frames(4))
    got = summary["model"].state_dict()
    for k, v in start.state_dict().items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.allclose(got[k], v, atol=1e-6), k
    assert checkpoint_meta(tmp_path / "run" / "last.pt").licence == "test licence"


def test_calibrated_thresholds_and_licence_travel_with_the_weights(tmp_path: Path):
    config = load_model_config(SMALL)
    path = tmp_path / "w.pt"
    save_checkpoint(build_model(config), path, licence="CC BY-NC-SA 3.0")
    update_checkpoint_meta(path, score_thresholds={config.class_names[0]: 0.42})
    det = Detector(config, path, warmup=False)
    assert det.weights_licence == "CC BY-NC-SA 3.0"
    assert det.default_score_thresholds[config.class_names[0]] == 0.42
    assert det.score_thresholds[config.class_names[0]] == np.float32(0.42)
    others = [c for c in config.class_names[1:]]
    assert all(det.score_thresholds[c] == np.float32(config.decode.score_threshold) for c in others)
    assert "CC BY-NC-SA 3.0" in det.describe()
