"""The Makefile's training recipes expand to complete shell commands (``make -n``: nothing runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> str:
    return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("target, checkpoint", [("model", "out/train/tiny360_vru_mean.pt"),
                                                ("model-terrain", "out/train/tiny360_terrain_mean.pt"),
                                                ("model-sensor", "out/train/tiny360_pandar64/last.pt"),
                                                ("model-lite", "out/train/tiny360_lite/last.pt")])
def test_training_recipes_calibrate_every_arithmetic_on_the_whole_command_line(target, checkpoint):
    # A '#' in a make variable starts a comment: unescaped, it cut the calibration loop off mid-word.
    out = _dry_run(target)
    loop = next(line for line in out.splitlines() if "calibrate" in line)
    assert f"--checkpoint {checkpoint}" in loop
    assert "--precision ${p##*:} --write" in loop and "|| exit 1; done" in loop


def test_only_the_default_keeps_auto_off_int8():
    assert "--write --no-auto-int8 || exit 1; done" in _dry_run("model")
    for target in ("model-terrain", "model-sensor", "model-lite"):
        assert "--write || exit 1; done" in _dry_run(target)


def test_model_sensor_simulates_the_chosen_lidar_and_trains_from_the_shipped_weights():
    out = " ".join(_dry_run("model-sensor", "SENSOR=os1-64").replace("\\\n", " ").split())
    assert "simulate --out out/sim/train_os1-64_kl --scenes 1000 --seed 5000 --sensor os1-64" in out
    assert "--init fastpillars_ros/weights/tiny360.pt" in out and "--data out/sim/train_os1-64_kl --seed 1" in out


def test_model_ends_with_three_fine_tunes_of_the_stage_2_mean_on_near_pedestrians_and_cyclists_averaged():
    out = " ".join(_dry_run("model").replace("\\\n", " ").split())
    assert "--ramps 0.5 --label-style kitti --vru-ranges kitti" in out
    assert "--init out/train/tiny360_mean.pt --data out/sim/train_ramps_kl_vru --seed $seed" in out
    assert "average " + " ".join(f"out/train/tiny360_vru_seed{s}/last.pt" for s in (1, 2, 3)) in out
    assert out.index("--out out/train/tiny360_mean.pt") < out.index("--init out/train/tiny360_mean.pt")
    # make -n under make (CI) adds "Entering directory" lines: order the steps rather than pin the last word.
    shipped = out.index("cp out/train/tiny360_vru_mean.pt fastpillars_ros/weights/tiny360.pt")
    assert out.index("--out out/train/tiny360_vru_mean.pt") < out.index("--no-auto-int8") < shipped


def test_eval_targets_take_a_checkpoint():
    out = " ".join(_dry_run("eval-other-sensors", "CHECKPOINT=out/train/tiny360_pandar64/last.pt").split())
    assert "eval-real --checkpoint out/train/tiny360_pandar64/last.pt" in out


def test_model_lite_slims_the_shipped_default_and_distils_it_into_the_narrow_network():
    out = " ".join(_dry_run("model-lite").replace("\\\n", " ").split())  # continuation lines joined
    assert "slim --checkpoint fastpillars_ros/weights/tiny360.pt --config config/training/tiny360_lite.yaml" in out
    assert "--init out/train/tiny360_lite/slim.pt" in out
    assert "--teacher tiny360:fastpillars_ros/weights/tiny360.pt --distill-weight 4 0.25" in out
