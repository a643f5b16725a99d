"""Terrain following: heights measured from the local ground (fastpillars_ros.terrain, model config ``terrain``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from real_data import real_data_dir, real_file

from fastpillars_ros.config import ConfigError, TerrainConfig, config_from_dict, load_model_config
from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.detector import Detector, default_checkpoint
from fastpillars_ros.pointcloud import read_points
from fastpillars_ros.terrain import follow_terrain, local_ground

GROUND_Z = -1.73
EXTENT = (-40.8, -40.8, 52.0, 40.8)
SETTINGS = TerrainConfig()


def ground(x: np.ndarray, y: np.ndarray, height: np.ndarray | float = 0.0) -> np.ndarray:
    """(N, 4) ground returns at ``height`` m above the plane z = GROUND_Z."""
    z = GROUND_Z + np.broadcast_to(height, x.shape)
    return np.stack([x, y, z, np.full_like(x, 0.2)], axis=1).astype(np.float32)


def grid(x0: float, x1: float, y0: float, y1: float, step: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step), indexing="ij")
    return xs.ravel(), ys.ravel()


def block(x: float, y: float, length: float, w: float, z0: float, z1: float, step: float = 0.1) -> np.ndarray:
    """Points filling the box ``[x +- length/2, y +- w/2, z0..z1]`` (z above the plane): an object."""
    xs, ys, zs = np.meshgrid(np.arange(x - length / 2, x + length / 2, step), np.arange(y - w / 2, y + w / 2, step),
                             np.arange(z0, z1, step), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel(), GROUND_Z + zs.ravel(), np.full(xs.size, 0.2)], 1).astype(np.float32)


def offsets_at(points: np.ndarray, xy: list[tuple[float, float]]) -> np.ndarray:
    tmap = local_ground(torch.from_numpy(points), GROUND_Z, EXTENT, SETTINGS)
    return tmap.at(torch.tensor(xy, dtype=torch.float32)).numpy()


def test_flat_ground_leaves_heights_unchanged():
    pts = ground(*grid(-30, 30, -20, 20))
    tmap = local_ground(torch.from_numpy(pts), GROUND_Z, EXTENT, SETTINGS)
    assert np.abs(tmap.offsets.numpy()).max() < 1e-6
    assert torch.equal(tmap.flatten_points(torch.from_numpy(pts)), torch.from_numpy(pts))


def test_ramp_ground_is_found_under_an_object_standing_on_it():
    x, y = grid(0, 30, -10, 10)
    rise = np.clip((x - 5.0) * 0.07, 0.0, None)  # 7 % up from 5 m ahead: 0.7 m higher at 15 m
    pedestrian = block(15.0, 0.0, 0.5, 0.6, 0.7, 2.45)  # feet on the ramp
    pts = np.concatenate([ground(x, y, rise), pedestrian])
    dz = offsets_at(pts, [(15.0, 0.0), (2.0, 0.0)])
    assert dz[0] == pytest.approx(0.7, abs=0.1)
    assert dz[1] == pytest.approx(0.0, abs=0.05)


def test_flattened_object_stands_on_the_plane_and_its_box_goes_back_up():
    x, y = grid(0, 30, -10, 10)
    pts = np.concatenate([ground(x, y, 0.6), block(15.0, 0.0, 0.5, 0.6, 0.6, 2.35)])
    tmap = local_ground(torch.from_numpy(pts), GROUND_Z, EXTENT, SETTINGS)
    flat = tmap.flatten_points(torch.from_numpy(pts)).numpy()
    feet = flat[(np.abs(flat[:, 0] - 15.0) < 0.25) & (np.abs(flat[:, 1]) < 0.3)][:, 2].min()
    assert feet == pytest.approx(GROUND_Z, abs=0.1)
    box = np.array([[15.0, 0.0, GROUND_Z + 0.6 + 0.875, 0.5, 0.6, 1.75, 0.0]])
    np.testing.assert_allclose(tmap.raise_boxes(tmap.flatten_boxes(box)), box, atol=1e-6)
    assert tmap.flatten_boxes(box)[0, 2] == pytest.approx(GROUND_Z + 0.875, abs=0.1)


def test_a_car_does_not_lift_the_ground_under_it():
    x, y = grid(0, 30, -10, 10)
    road = ground(x, y)
    seen = ~((np.abs(x - 12.0) < 2.3) & (np.abs(y) < 1.0))  # the car hides the road under it
    car = block(12.0, 0.0, 4.4, 1.8, 0.3, 1.5)  # sills 0.3 m above the road
    dz = offsets_at(np.concatenate([road[seen], car]), [(12.0, 0.0)])
    assert abs(dz[0]) < 0.1


def test_a_single_low_return_does_not_pull_the_ground_down():
    pts = ground(*grid(0, 30, -10, 10))
    reflection = np.array([[12.2, 0.2, GROUND_Z - 0.8, 0.1]], np.float32)
    dz = offsets_at(np.concatenate([pts, reflection]), [(12.2, 0.2)])
    assert abs(dz[0]) < 0.05


def test_ground_beyond_max_offset_is_not_followed():
    x, y = grid(0, 30, -10, 10)
    pts = ground(x, y, np.where(x > 10.0, 1.6, 0.0))  # a 1.6 m step: a wall or a loading dock, not a slope
    dz = offsets_at(pts, [(20.0, 0.0)])
    assert abs(dz[0]) < 0.05


def test_terrain_off_returns_the_points_unchanged():
    cfg = load_model_config("tiny360")
    pts = torch.from_numpy(ground(*grid(0, 5, 0, 5), 0.5))
    out, tmap = follow_terrain(pts, replace(cfg, terrain=None))
    assert out is pts and tmap is None


def test_terrain_on_flattens_in_the_configs_range():
    cfg = replace(load_model_config("tiny360"), terrain=TerrainConfig())
    pts = torch.from_numpy(ground(*grid(0, 20, -5, 5), 0.5))
    out, tmap = follow_terrain(pts, cfg)
    assert tmap is not None
    assert out[:, 2].numpy() == pytest.approx(GROUND_Z, abs=1e-5)


@pytest.mark.parametrize("key,value,message", [("window", 4, "terrain.window"), ("cell", 0.0, "terrain.cell"),
                                               ("max_offset", -1.0, "terrain.max_offset"),
                                               ("min_points", 0, "terrain.min_points")])
def test_bad_terrain_settings_are_refused_naming_the_key(key, value, message):
    data = load_model_config("tiny360").to_dict()
    data["terrain"] = {key: value}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_unknown_terrain_key_is_refused():
    data = load_model_config("tiny360").to_dict()
    data["terrain"] = {"cells": 1.0}
    with pytest.raises(ConfigError, match=r"unknown key.*'terrain'"):
        config_from_dict(data)


def test_terrain_setting_survives_the_checkpoint_config_round_trip():
    cfg = replace(load_model_config("tiny360"), terrain=TerrainConfig(cell=2.0, window=5))
    assert config_from_dict(cfg.to_dict()) == cfg


def test_on_real_kitti_scans_the_local_ground_is_where_the_labelled_boxes_stand():
    """Real development frames (7 KITTI scans, 30 labelled objects): distant cars stand 0.2-0.7 m above the
    plane of the sensor's ground; the local ground found at each box centre is its bottom to within ~0.1 m."""
    ds = KittiDataset(real_data_dir() / "kitti" / "training", classes=("car", "pedestrian", "cyclist"))
    errors, plane = [], []
    for i in range(len(ds)):
        frame = ds[i]
        pts = torch.from_numpy(np.ascontiguousarray(frame.points[:, :4], np.float32))
        tmap = local_ground(pts, GROUND_Z, EXTENT, SETTINGS)
        bottom = frame.boxes[:, 2] - frame.boxes[:, 5] / 2 - GROUND_Z
        found = tmap.at(torch.from_numpy(frame.boxes[:, :2].astype(np.float32))).numpy()
        errors += list(np.abs(found - bottom))
        plane += list(np.abs(bottom))
    assert len(errors) >= 25
    assert np.median(errors) < 0.08
    assert np.median(errors) < np.median(plane) / 3


def test_detector_following_the_terrain_reports_boxes_on_the_real_ground():
    """The same real scan with the road bent into a 3 % ramp from 10 m ahead (at most 0.5 m): with terrain
    following the detector finds the cars it finds on the level scan, at the same place, raised with the road."""
    cfg = replace(load_model_config("tiny360"), terrain=TerrainConfig())
    det = Detector(cfg, default_checkpoint("tiny360"), precision="fp32", device="cpu")
    level = read_points(real_file("kitti/training/velodyne/000010.bin"))
    rise = lambda x: np.clip((x - 10.0) * 0.03, 0.0, 0.5)  # noqa: E731
    ramp = level.copy()
    ramp[:, 2] += rise(ramp[:, 0])
    a, b = det.detect(level), det.detect(ramp)
    # cars on the ramp, within 40 m (farther ones sit near the score threshold either way)
    cars_a = a.boxes[(a.labels == 0) & (a.boxes[:, 0] > 12.0) & (np.hypot(a.boxes[:, 0], a.boxes[:, 1]) < 40.0)]
    assert len(cars_a) >= 5
    for box in cars_a:
        d = np.hypot(*(b.boxes[:, :2] - box[:2]).T)
        j = int(np.argmin(d))
        assert d[j] < 0.3 and b.labels[j] == 0
        assert b.boxes[j, 2] - box[2] == pytest.approx(rise(box[0]), abs=0.15)
