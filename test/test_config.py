"""Model config loading and validation."""

from pathlib import Path

import pytest
import yaml

from fastpillars_ros.config import ConfigError, available_models, config_from_dict, load_model_config

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_configs_load_by_name():
    assert {"nuscenes_official", "kitti", "tiny"} <= set(available_models())
    for name in ("nuscenes_official", "kitti", "tiny"):
        assert load_model_config(name).name == name


def test_nuscenes_official_values_match_released_config():
    cfg = load_model_config("nuscenes_official")
    assert cfg.grid_size == (720, 720) and cfg.head_shape == (180, 180)
    assert cfg.canvas_shape == (64, 720, 720)
    assert cfg.num_decorated_features == 8
    assert cfg.point_features == ("x", "y", "z", "intensity", "dt")
    assert cfg.intensity_scale == 255.0 and cfg.num_sweeps == 10 and cfg.vel
    assert [len(t) for t in cfg.tasks] == [1, 2, 2, 1, 2, 2]
    assert cfg.class_names[8] == "pedestrian" and cfg.class_names[9] == "traffic_cone"
    d = cfg.decode
    assert (d.score_threshold, d.nms_iou_threshold, d.pre_max, d.post_max, d.rectifier) == (0.1, 0.2, 1000, 83, 0.5)
    assert cfg.out_size_factor == 4


def test_kitti_and_tiny_geometry():
    kitti = load_model_config("kitti")
    assert kitti.grid_size == (432, 496) and kitti.num_decorated_features == 7
    assert kitti.intensity_scale == 1.0 and not kitti.vel
    tiny = load_model_config("tiny")
    assert set(tiny.class_names) == {"car", "pedestrian", "cyclist"}
    assert tiny.num_decorated_features == 7


def test_load_by_path_and_passthrough(tmp_path):
    cfg = load_model_config(ROOT / "config" / "models" / "tiny.yaml")
    assert load_model_config(cfg) is cfg
    p = tmp_path / "mine.yaml"
    p.write_text((ROOT / "config" / "models" / "tiny.yaml").read_text().replace("name: tiny", "name: mine"))
    assert load_model_config(str(p)).name == "mine"


def test_to_dict_roundtrip():
    cfg = load_model_config("nuscenes_official")
    assert config_from_dict(cfg.to_dict()) == cfg


def _tiny_dict():
    return yaml.safe_load((ROOT / "config" / "models" / "tiny.yaml").read_text())


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("pc_range"), "pc_range"),
    (lambda d: d.update(pillar_size=[0.33, 0.32]), "pillar_size"),
    (lambda d: d.update(point_features=["x", "y", "z", "rgb"]), "point_features"),
    (lambda d: d["backbone"].update(strides=[1, 2, 2]), "backbone.strides"),
    (lambda d: d.update(out_size_factor=8), "out_size_factor"),
    (lambda d: d["decode"].update(nms_kind="fast"), "decode.nms_kind"),
    (lambda d: d["decode"].update(rectifier=2.0), "decode.rectifier"),
    (lambda d: d["head"].update(colour=1), "head"),
    (lambda d: d["head"].update(axis="yes"), "head.axis"),
    (lambda d: d.update(num_sweeps=3), "num_sweeps"),
    (lambda d: d.update(bogus=1), "bogus"),
    (lambda d: d.update(pc_range=[0.0, -25.6, -3.0, 51.2, 25.9, 1.0]), "pc_range"),
])
def test_invalid_values_name_the_key(change, key):
    d = _tiny_dict()
    change(d)
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        config_from_dict(d)


def test_unknown_name_lists_available():
    with pytest.raises(ConfigError, match="tiny"):
        load_model_config("no_such_model")
