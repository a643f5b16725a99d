"""``fastpillars-ros eval-real --kitti NAME=DIR``: other KITTI-layout folders (the held-out real drives) are
reported like the development set's KITTI frames, under their own name."""

from __future__ import annotations

import json
from pathlib import Path

from real_data import real_file

from fastpillars_ros.cli import main as cli_main


def _one_frame_folder(root: Path, frame: str) -> Path:
    """A KITTI-layout folder holding one development frame (links to the shared data)."""
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt")):
        (root / sub).mkdir(parents=True)
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


def test_a_kitti_folder_without_scans_is_refused_naming_the_flag(tmp_path, capsys):
    assert cli_main(["eval-real", "--kitti", f"held_out={tmp_path}", "--no-progress"]) == 2
    assert "--kitti" in capsys.readouterr().err
