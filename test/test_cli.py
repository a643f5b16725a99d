"""fastpillars-ros command line: dispatch, profile output, deployment commands."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sysconfig
from pathlib import Path

import onnx
import pytest
import torch
from real_data import real_file

from fastpillars_ros.cli import COMMANDS
from fastpillars_ros.cli import main as cli_main


def test_help_lists_every_command(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_exits_2_and_shows_the_commands(capsys):
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_is_installed_and_runs_the_cli():
    # The script pip put beside this interpreter (setup.py console_scripts), not `python -m`.
    script = Path(sysconfig.get_path("scripts")) / "fastpillars-ros"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in COMMANDS)


def test_profile_writes_trtexec_shaped_json_and_prints_the_stage_split(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert cli_main(["profile", "--config", "tiny", "--device", "cpu", "--runs", "2", "--output", str(out),
                     "--input", str(real_file("kitti/training/velodyne/000000.bin"))]) == 0
    rows = json.loads(out.read_text())
    assert rows[0] == {"count": 2}
    layers = rows[1:]
    assert {"name", "timeMs", "averageMs", "medianMs", "percentage"} <= set(layers[0])
    assert sum(r["percentage"] for r in layers) == pytest.approx(100.0)
    assert [r["timeMs"] for r in layers] == sorted((r["timeMs"] for r in layers), reverse=True)
    assert any(r["name"].startswith("backbone.conv2") for r in layers)
    printed = capsys.readouterr().out
    for stage in ("pillarize", "encode", "dense", "decode", "nms", "total"):
        assert stage in printed


def test_export_onnx_writes_a_checked_static_graph(tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert cli_main(["export-onnx", "--config", "tiny", "--output", str(out)]) == 0
    graph = onnx.load(str(out)).graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert graph.input[0].name == "canvas" and dims[0] == 1 and all(d > 0 for d in dims)
    assert "max abs difference" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_build_engine_without_gpu_says_what_is_missing(capsys):
    assert cli_main(["build-engine", "--config", "tiny"]) == 2
    assert "needs a CUDA GPU and the TensorRT Python package" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["launch", "eval", "profile"])
def test_commands_accept_every_backend_device_and_precision_choice(command):
    # One definition (runtime/choices.py) feeds every command that takes these options.
    from fastpillars_ros.runtime.choices import BACKENDS, DEVICES, PRECISIONS

    parser = argparse.ArgumentParser()
    module = importlib.import_module(COMMANDS[command][0].split(":")[0])
    module.add_arguments(parser)
    options = {a.dest: a.choices for a in parser._actions if a.dest in ("backend", "device", "precision")}
    expected = {"backend": BACKENDS, "device": DEVICES, "precision": PRECISIONS}
    for dest, choices in options.items():
        if command == "profile" and dest == "backend":
            continue  # profile times the torch and TensorRT graphs only
        assert set(expected[dest]) <= set(choices), (command, dest)
    assert options
