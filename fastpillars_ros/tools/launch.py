"""``fastpillars-ros launch``: start the detector node like ``launch/detect.launch.py`` does, without ``launch``.

Where ROS 2's ``launch``/``launch_ros`` are installed, use ``ros2 launch fastpillars_ros detect.launch.py``.
Where they are not (a pip-installed ROS), this command starts the same node with the same parameter
file and arguments: ``python -m fastpillars_ros.ros.node --ros-args --params-file F -r points:=T -p ...``.
Both read their arguments from :data:`LAUNCH_ARGUMENTS` semantics (a test checks the launch file
declares the same names and defaults).

The node talks DDS with whatever the environment says (on a robot it must reach other machines);
``--loopback`` restricts it to this machine (tests and the demo use it).

Also used by the launch file: :func:`node_overrides` (which launch arguments become node parameters) and
:func:`rviz_config_text` (the RViz config with the actual input topic and fixed frame).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fastpillars_ros.ros.node_params import file_values
from fastpillars_ros.runtime.choices import BACKENDS

PACKAGE = "fastpillars_ros"
PARAMS_FILE = "fastpillars.yaml"
RVIZ_FILE = "fastpillars.rviz"


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument: name, default (as the launch file's string), help text."""

    name: str
    default: str
    description: str


#: The launch arguments, in the launch file's order. ``params_file``'s default is the installed
#: ``config/fastpillars.yaml`` (resolved by :func:`share_file`); empty model/checkpoint/backend keep the
#: parameter file's values.
LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("params_file", f"<share>/config/{PARAMS_FILE}",
                   "Node parameter file (default: the package's config/fastpillars.yaml)."),
    LaunchArgument("input_topic", "points", "PointCloud2 topic the detector subscribes to."),
    LaunchArgument("model", "", "Model config name or path; empty = the parameter file's 'model'."),
    LaunchArgument("checkpoint", "", "Weights file; empty = the parameter file's 'checkpoint'."),
    LaunchArgument("backend", "", f"{', '.join(BACKENDS)}; empty = the parameter file's 'backend'."),
    LaunchArgument("use_sim_time", "", "Use the /clock topic as time (bag replay, simulation): true or false; "
                   "empty = the parameter file's 'use_sim_time' (false when it has none)."),
    LaunchArgument("rviz", "false", "Also start RViz 2 with config/fastpillars.rviz."),
    LaunchArgument("rviz_fixed_frame", "base_link",
                   "RViz fixed frame (use the cloud's frame_id when no TF tree is published)."),
)


def share_file(relative: str) -> Path:
    """A file of the package's share directory: the source tree first, then the installed share dir."""
    source = Path(__file__).resolve().parents[2] / relative
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE)) / relative
    except (ImportError, LookupError):
        return source


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def node_overrides(model: str = "", checkpoint: str = "", backend: str = "", use_sim_time: Any = ""
                   ) -> dict[str, Any]:
    """Node parameters set by launch arguments (on top of the parameter file): only non-empty ones, so that
    the file's values (``use_sim_time: true`` included) hold unless an argument is given."""
    out: dict[str, Any] = {}
    for name, value in (("model", model), ("checkpoint", checkpoint), ("backend", backend)):
        if str(value).strip():
            out[name] = str(value).strip()
    if str(use_sim_time).strip():
        out["use_sim_time"] = _truthy(use_sim_time)
    return out


def file_use_sim_time(params_file: str | os.PathLike) -> bool:
    """``use_sim_time`` of a ROS parameter file for any node (``/**``) or ours; False when absent."""
    return _truthy(file_values(yaml.safe_load(Path(params_file).read_text()) or {}).get("use_sim_time", False))


def params_file_problem(params_file: str | os.PathLike) -> str | None:
    """Why a ``params_file`` cannot be used (a sentence), or None: a mistyped path must stop the launch,
    not start the node on code defaults."""
    if not Path(params_file).is_file():
        return f"parameter file {params_file} does not exist (params_file)"
    return None


def rviz_problem() -> str | None:
    """Why RViz cannot start (rviz2 or the vision_msgs RViz plugin not installed), or None. Checked before
    anything starts, so that a missing RViz never leaves the detector running on its own."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return "rviz:=true but ament_index_python is missing: no ROS 2 installation to start rviz2 from"
    missing = []
    for package in ("rviz2", "vision_msgs_rviz_plugins"):
        try:
            get_package_prefix(package)
        except PackageNotFoundError:
            missing.append(package)
    if missing:
        return (f"rviz:=true but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                f"(apt install ros-$ROS_DISTRO-rviz2 ros-$ROS_DISTRO-vision-msgs-rviz-plugins), or launch "
                f"without rviz:=true")
    return None


def rviz_config_text(input_topic: str = "/points", fixed_frame: str = "base_link",
                     template: str | os.PathLike | None = None) -> str:
    """config/fastpillars.rviz with the cloud display's topic and the fixed frame filled in. Topics stay as given
    (relative ones resolve in RViz's namespace, which a namespaced launch shares with the detector)."""
    path = Path(template) if template is not None else share_file(f"config/{RVIZ_FILE}")
    data = yaml.safe_load(Path(path).read_text())
    manager = data["Visualization Manager"]
    manager["Global Options"]["Fixed Frame"] = fixed_frame
    for display in manager["Displays"]:
        if display.get("Class") == "rviz_default_plugins/PointCloud2":
            display["Topic"]["Value"] = input_topic
    return yaml.safe_dump(data, sort_keys=False)


def _ros_value(value: Any) -> str:
    """A ``-p name:=value`` value that rcl's YAML parser reads back as the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, str) or parsed != text:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def node_command(args: argparse.Namespace) -> list[str]:
    """The detector node's command line for parsed ``launch`` arguments."""
    cmd = [sys.executable, "-m", "fastpillars_ros.ros.node", "--ros-args", "--params-file", str(args.params_file),
           "-r", f"points:={args.input_topic}"]
    for name, value in node_overrides(args.model, args.checkpoint, args.backend, args.use_sim_time).items():
        cmd += ["-p", f"{name}:={_ros_value(value)}"]
    for item in args.param or []:
        cmd += ["-p", item]
    return cmd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = {a.name: a for a in LAUNCH_ARGUMENTS}
    parser.add_argument("--params-file", type=Path, default=share_file(f"config/{PARAMS_FILE}"),
                        help=defaults["params_file"].description)
    parser.add_argument("--input-topic", default=defaults["input_topic"].default,
                        help=defaults["input_topic"].description)
    parser.add_argument("--model", default=defaults["model"].default, help=defaults["model"].description)
    parser.add_argument("--checkpoint", default=defaults["checkpoint"].default,
                        help=defaults["checkpoint"].description)
    parser.add_argument("--backend", default=defaults["backend"].default, choices=["", *BACKENDS],
                        help=defaults["backend"].description)
    parser.add_argument("--use-sim-time", default=defaults["use_sim_time"].default, nargs="?", const="true",
                        choices=["", "true", "false"], help=defaults["use_sim_time"].description)
    parser.add_argument("--rviz", action="store_true", help=defaults["rviz"].description)
    parser.add_argument("--rviz-fixed-frame", default=defaults["rviz_fixed_frame"].default,
                        help=defaults["rviz_fixed_frame"].description)
    parser.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                        help="Extra node parameter, as after --ros-args -p (repeatable).")
    parser.add_argument("--loopback", action="store_true",
                        help="Keep DDS on this machine (loopback-only discovery and transport); for tests and "
                             "demos. Without it the node uses the environment's DDS settings.")
    parser.add_argument("--dry-run", action="store_true", help="Print the node's command line and exit.")


def _environment(loopback: bool) -> dict[str, str]:
    if loopback:
        from fastpillars_ros.ros.rosenv import loopback_environment

        return loopback_environment()
    return dict(os.environ)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a child like Ctrl-C would (SIGINT), killing it if it has not ended after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    problem = params_file_problem(args.params_file)
    if problem:
        print(f"fastpillars-ros launch: {problem}", file=sys.stderr)
        return 2
    cmd = node_command(args)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    env = _environment(args.loopback)
    procs: list[subprocess.Popen] = [subprocess.Popen(cmd, env=env)]
    if args.rviz:
        rviz = shutil.which("rviz2")
        if rviz is None:
            print("fastpillars-ros launch: rviz2 is not installed here; starting the detector without it",
                  file=sys.stderr)
        else:
            with tempfile.NamedTemporaryFile("w", suffix=".rviz", prefix="fastpillars_", delete=False) as f:
                f.write(rviz_config_text(args.input_topic, args.rviz_fixed_frame))
            sim = node_overrides(use_sim_time=args.use_sim_time).get("use_sim_time",
                                                                     file_use_sim_time(args.params_file))
            rviz_cmd = [rviz, "-d", f.name, "--ros-args", "-p", f"use_sim_time:={'true' if sim else 'false'}"]
            procs.append(subprocess.Popen(rviz_cmd, env=env))

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, forward)
    try:
        rc = procs[0].wait()
    finally:
        for p in procs[1:]:
            stop_process(p, timeout=5.0)
        # The launcher is a process's whole job and ends here. A group-wide Ctrl-C comes more than once (the
        # terminal or supervisor, then again): a late one must not end this process by the signal while Python
        # shuts down (CPython puts SIG_DFL back for Python-level handlers then, but leaves SIG_IGN alone).
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    # A node ended by Ctrl-C reports -SIGINT; report that as a normal stop.
    return 0 if rc in (-signal.SIGINT, 130) else rc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastpillars_ros.tools.launch``, the same as ``fastpillars-ros launch``."""
    from fastpillars_ros.cli import main as cli_main

    return cli_main(["launch", *(sys.argv[1:] if argv is None else argv)])


def launch_defaults() -> Mapping[str, str]:
    """Launch argument name -> default, as the launcher applies them (params_file resolved)."""
    return {a.name: (str(share_file(f"config/{PARAMS_FILE}")) if a.name == "params_file" else a.default)
            for a in LAUNCH_ARGUMENTS}


if __name__ == "__main__":
    sys.exit(main())
