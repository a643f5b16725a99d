"""``fastpillars-ros eval-real --kitti NAME=DIR``: other KITTI-layout folders (the held-out real drives) are
reported like the development set's KITTI frames, under their own name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from real_data import real_file

from fastpillars_ros.cli import main as cli_main


def _one_frame_folder(root: Path, *frames: str) -> Path:
    """A KITTI-layout folder holding development frames (links to the shared data)."""
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt")):
        (root / sub).mkdir(parents=True)
        for frame in frames:
            (root / sub / f"{frame}.{ext}").symlink_to(real_file(f"kitti/training/{sub}/{frame}.{ext}"))
    return root


def test_a_kitti_folder_is_reported_under_its_name_with_its_objects(tmp_path, capsys):
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    out = tmp_path / "report.json"
    assert cli_main(["eval-real", "--sets", "", "--kitti", f"held_out={folder}", "--out", str(out),
                     "--no-progress"]) == 0
    report = json.loads(out.read_text())["sets"]
    assert [s["name"] for s in report] == ["held_out"]
    assert report[0]["num_frames"] == 1 and report[0]["num_objects"]["car"] >= 5  # the near cars of 000010
    assert report[0]["recall"]["car"] > 0.5
    assert report[0]["turned_car_recall"] is not None
    lo, hi = report[0]["ap_interval"]["car@0.5"]  # one frame: the bootstrap can only draw it again
    assert lo == hi == report[0]["ap"]["car@0.5"]
    printed = capsys.readouterr().out
    assert "[held_out] 1 frames" in printed and "90 % interval:" in printed


def test_pooled_sets_are_reported_as_one_folder_holding_all_their_frames(tmp_path):
    first = _one_frame_folder(tmp_path / "a", "000010")
    second = _one_frame_folder(tmp_path / "b", "000007")
    both = _one_frame_folder(tmp_path / "both", "000007", "000010")
    out, out_both = tmp_path / "pooled.json", tmp_path / "both.json"
    assert cli_main(["eval-real", "--sets", "", "--kitti", f"a={first}", "--kitti", f"b={second}",
                     "--pool", "a_and_b", "--out", str(out), "--no-progress"]) == 0
    assert cli_main(["eval-real", "--sets", "", "--kitti", f"both={both}", "--out", str(out_both),
                     "--no-progress"]) == 0
    a, b, pooled = json.loads(out.read_text())["sets"]
    (together,) = json.loads(out_both.read_text())["sets"]
    assert pooled["name"] == "a_and_b" and pooled["num_frames"] == 2
    assert pooled["num_objects"]["car"] == a["num_objects"]["car"] + b["num_objects"]["car"]
    for key in ("ap", "recall", "false_per_frame", "false_by_class", "turned_car_recall"):
        assert pooled[key] == together[key], key
    assert pooled["ap"] not in (a["ap"], b["ap"])  # the union, not one set's APs


def test_pooling_fewer_than_two_sets_is_refused_naming_the_flag(tmp_path, capsys):
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    assert cli_main(["eval-real", "--sets", "", "--kitti", f"a={folder}", "--pool", "all", "--no-progress"]) == 2
    assert "--pool" in capsys.readouterr().err


def test_a_kitti_folder_without_scans_is_refused_naming_the_flag(tmp_path, capsys):
    assert cli_main(["eval-real", "--kitti", f"held_out={tmp_path}", "--no-progress"]) == 2
    assert "--kitti" in capsys.readouterr().err


def test_calibrated_thresholds_come_with_how_much_they_depend_on_the_frames():
    from fastpillars_ros.tools.eval_real import calibrate_thresholds, threshold_intervals

    budget = {"car": 0.5}
    same = [{"car": [0.6, 0.3]}] * 10  # every frame alike: any resample calibrates the same threshold
    lo, hi = threshold_intervals(same, budget, 0.1)["car"]
    point = calibrate_thresholds({"car": [s for f in same for s in f["car"]]}, 10, budget, 0.1)["car"]
    assert lo == hi == point
    rng = np.random.default_rng(0)
    varied = [{"car": rng.uniform(0.1, 0.9, rng.integers(0, 4)).tolist()} for _ in range(10)]
    lo, hi = threshold_intervals(varied, budget, 0.1)["car"]
    point = calibrate_thresholds({"car": [s for f in varied for s in f["car"]]}, 10, budget, 0.1)["car"]
    assert lo < point < hi
    lo10, hi10 = threshold_intervals(varied * 10, budget, 0.1)["car"]  # ten times the frames: a narrower interval
    assert hi10 - lo10 < hi - lo


def test_calibrate_prints_the_thresholds_with_their_interval_and_stores_them(tmp_path, capsys):
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.model import build_model, checkpoint_meta, save_checkpoint

    small = Path(__file__).parent / "data" / "train_small.yaml"
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model(load_model_config(small)), weights)
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    assert cli_main(["calibrate", "--config", str(small), "--checkpoint", str(weights), "--data", str(folder),
                     "--precision", "int8", "--write"]) == 0
    out = capsys.readouterr().out
    assert "1 frames" in out and "90 % interval over a bootstrap of the frames: car " in out
    assert "(int8 dense part" in out and "(score_thresholds)" in out
    meta = checkpoint_meta(weights)
    stored = meta.score_thresholds
    assert set(stored) == {"car", "pedestrian", "cyclist"} and all(0.1 <= t <= 1.0 for t in stored.values())
    assert meta.float_score_thresholds == {}


def test_calibrating_a_floating_point_dense_part_stores_its_own_thresholds_beside_the_int8_ones(tmp_path, capsys):
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.model import build_model, save_checkpoint, update_checkpoint_meta
    from fastpillars_ros.model.checkpoint import checkpoint_meta

    small = Path(__file__).parent / "data" / "train_small.yaml"
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model(load_model_config(small)), weights)
    update_checkpoint_meta(weights, score_thresholds={"car": 0.9, "pedestrian": 0.9, "cyclist": 0.9})
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    assert cli_main(["calibrate", "--config", str(small), "--checkpoint", str(weights), "--data", str(folder),
                     "--backend", "onnxruntime", "--precision", "fp32", "--write"]) == 0
    assert "(floating-point dense part: onnxruntime fp32)" in capsys.readouterr().out
    meta = checkpoint_meta(weights)
    assert meta.score_thresholds == {"car": 0.9, "pedestrian": 0.9, "cyclist": 0.9}  # the INT8 set is kept
    assert set(meta.float_score_thresholds) == {"car", "pedestrian", "cyclist"}
    for precision, expected in (("fp32", meta.float_score_thresholds), ("int8", meta.score_thresholds)):
        det = Detector(small, weights, device="cpu", backend="onnxruntime", precision=precision, warmup=False)
        assert det.default_score_thresholds == pytest.approx(expected)


def test_calibrating_bf16_stores_a_set_of_its_own_and_keeps_the_others(tmp_path, capsys):
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.model import build_model, save_checkpoint, update_checkpoint_meta
    from fastpillars_ros.model.checkpoint import checkpoint_meta

    small = Path(__file__).parent / "data" / "train_small.yaml"
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model(load_model_config(small)), weights)
    update_checkpoint_meta(weights, score_thresholds={"car": 0.9, "pedestrian": 0.9, "cyclist": 0.9},
                           float_score_thresholds={"car": 0.8, "pedestrian": 0.8, "cyclist": 0.8})
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    assert cli_main(["calibrate", "--config", str(small), "--checkpoint", str(weights), "--data", str(folder),
                     "--backend", "openvino", "--precision", "bf16", "--write"]) == 0
    assert "(precision_score_thresholds[bf16])" in capsys.readouterr().out
    meta = checkpoint_meta(weights)
    assert meta.score_thresholds == {"car": 0.9, "pedestrian": 0.9, "cyclist": 0.9}
    assert meta.float_score_thresholds == {"car": 0.8, "pedestrian": 0.8, "cyclist": 0.8}
    assert set(meta.precision_score_thresholds) == {"bf16"}
    det = Detector(small, weights, device="cpu", backend="openvino", precision="bf16", warmup=False)
    assert det.default_score_thresholds == pytest.approx(meta.precision_score_thresholds["bf16"])


def test_the_precision_can_be_chosen_to_compare_int8_with_fp32(tmp_path, capsys):
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    assert cli_main(["eval-real", "--sets", "", "--kitti", f"a={folder}", "--precision", "fp32", "--no-progress"]) == 0
    assert "precision fp32" in capsys.readouterr().out


def test_the_kitti_difficulty_decides_which_objects_count(tmp_path):
    # KITTI 000010 holds cars of every difficulty: two hard ones (23 and 29 m) and one of none (7 m, truncated).
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    cars = {}
    for difficulty in ("moderate", "hard", "all"):
        out = tmp_path / f"{difficulty}.json"
        assert cli_main(["eval-real", "--sets", "", "--kitti", f"d={folder}", "--difficulty", difficulty,
                         "--out", str(out), "--no-progress"]) == 0
        report = json.loads(out.read_text())
        assert report["kitti_difficulty"] == difficulty
        cars[difficulty] = report["sets"][0]["num_objects"]["car"]
    assert cars["moderate"] == cars["hard"] - 2 and cars["all"] > cars["hard"], cars


def test_calibrate_stores_that_auto_keeps_the_weights_out_of_int8(tmp_path, capsys):
    from fastpillars_ros.config import load_model_config
    from fastpillars_ros.model import build_model, checkpoint_meta, save_checkpoint

    small = Path(__file__).parent / "data" / "train_small.yaml"
    weights = tmp_path / "w.pt"
    save_checkpoint(build_model(load_model_config(small)), weights)
    folder = _one_frame_folder(tmp_path / "drive", "000010")
    args = ["calibrate", "--config", str(small), "--checkpoint", str(weights), "--data", str(folder),
            "--backend", "onnxruntime", "--precision", "int8", "--no-auto-int8"]
    assert checkpoint_meta(weights).auto_int8
    assert cli_main(args) == 2  # stored in the checkpoint: without --write it would be lost
    assert "add --write" in capsys.readouterr().err
    assert cli_main([*args, "--write"]) == 0
    assert "auto_int8 False" in capsys.readouterr().out
    meta = checkpoint_meta(weights)
    assert not meta.auto_int8 and set(meta.score_thresholds) == {"car", "pedestrian", "cyclist"}
