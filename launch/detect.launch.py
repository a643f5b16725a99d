"""Start the FastPillars detector node (and optionally RViz 2).

    ros2 launch fastpillars_ros detect.launch.py input_topic:=/lidar/points rviz:=true

Arguments (the same names and defaults as ``fastpillars-ros launch``, which starts the same node where
``launch`` is not installed; a test keeps the two equal):
params_file, input_topic, model, checkpoint, backend, use_sim_time, rviz, rviz_fixed_frame.
Empty model/checkpoint/backend keep the parameter file's values.
"""

import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from fastpillars_ros.tools.launch import (
    LAUNCH_ARGUMENTS,
    file_use_sim_time,
    node_overrides,
    params_file_problem,
    rviz_config_text,
    rviz_problem,
)
from launch import LaunchDescription

PACKAGE = "fastpillars_ros"


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _setup(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    # Every check before anything starts: a failed launch must leave no process behind.
    want_rviz = arg("rviz").strip().lower() in ("true", "1", "yes", "on")
    problem = params_file_problem(arg("params_file")) or (rviz_problem() if want_rviz else None)
    if problem:
        raise RuntimeError(problem)
    overrides = node_overrides(arg("model"), arg("checkpoint"), arg("backend"), arg("use_sim_time"))
    actions = [
        Node(
            package=PACKAGE,
            executable="detector_node",
            name="fastpillars_detector",
            output="screen",
            emulate_tty=True,
            parameters=[arg("params_file"), overrides],
            remappings=[("points", arg("input_topic"))],
        )
    ]
    if want_rviz:
        text = rviz_config_text(arg("input_topic"), arg("rviz_fixed_frame"), _share("config", "fastpillars.rviz"))
        with tempfile.NamedTemporaryFile("w", suffix=".rviz", prefix="fastpillars_", delete=False) as f:
            f.write(text)
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", f.name],
                parameters=[{"use_sim_time": overrides.get("use_sim_time", file_use_sim_time(arg("params_file")))}],
                output="log",
            )
        )
    return actions


def generate_launch_description():
    # The arguments of fastpillars-ros launch (fastpillars_ros.tools.launch), so the two cannot drift apart.
    default = {"params_file": _share("config", "fastpillars.yaml")}
    return LaunchDescription([
        *(DeclareLaunchArgument(a.name, default_value=default.get(a.name, a.default), description=a.description)
          for a in LAUNCH_ARGUMENTS),
        OpaqueFunction(function=_setup),
    ])
