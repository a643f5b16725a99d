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

from fastpillars_ros.launcher import node_overrides, rviz_config_text
from launch import LaunchDescription

PACKAGE = "fastpillars_ros"


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _setup(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

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
    if arg("rviz").strip().lower() in ("true", "1", "yes", "on"):
        text = rviz_config_text(arg("input_topic"), arg("rviz_fixed_frame"), _share("config", "fastpillars.rviz"))
        with tempfile.NamedTemporaryFile("w", suffix=".rviz", prefix="fastpillars_", delete=False) as f:
            f.write(text)
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", f.name],
                parameters=[{"use_sim_time": overrides["use_sim_time"]}],
                output="log",
            )
        )
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=_share("config", "fastpillars.yaml"),
                              description="Node parameter file (default: the package's config/fastpillars.yaml)."),
        DeclareLaunchArgument("input_topic", default_value="points",
                              description="PointCloud2 topic the detector subscribes to."),
        DeclareLaunchArgument("model", default_value="",
                              description="Model config name or path; empty = the parameter file's 'model'."),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Weights file; empty = the parameter file's 'checkpoint'."),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto, torch or tensorrt; empty = the parameter file's 'backend'."),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use the /clock topic as time (bag replay, simulation)."),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start RViz 2 with config/fastpillars.rviz."),
        DeclareLaunchArgument("rviz_fixed_frame", default_value="base_link",
                              description="RViz fixed frame (use the cloud's frame_id when no TF tree is published)."),
        OpaqueFunction(function=_setup),
    ])
