"""launch/detect.launch.py run for real where ROS 2's ``launch``/``launch_ros`` and an installed package exist.

Here (ROS from PyPI wheels) they do not: the static checks in test_node_params.py compare the launch file
with ``fastpillars-ros launch`` instead, and this test skips.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ros_launch():
    launch = pytest.importorskip("launch")
    if not hasattr(launch, "LaunchService"):  # PyPI's unrelated 'launch' project shadows the name
        pytest.skip("the installed 'launch' module is not ROS 2's launch")
    pytest.importorskip("launch_ros")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("fastpillars_ros")
    except PackageNotFoundError:
        pytest.skip("fastpillars_ros is not installed in an ament prefix (colcon build) here")
    return launch


#: Runs the launch file in the main thread of its own process (LaunchService refuses any other thread).
_LAUNCH_SCRIPT = """
import importlib.util, sys
import launch
from launch.actions import SetLaunchConfiguration
spec = importlib.util.spec_from_file_location("detect_launch", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
service = launch.LaunchService(argv=[])
service.include_launch_description(launch.LaunchDescription([
    SetLaunchConfiguration("input_topic", "/launch_test/points"),
    *module.generate_launch_description().entities,
]))
sys.exit(service.run())
"""


@pytest.mark.ros
def test_launch_file_starts_the_detector_with_the_remapped_input():
    _ros_launch()
    import rclpy
    from ros_processes import spawn_python, stop

    proc = spawn_python(["-c", _LAUNCH_SCRIPT, str(ROOT / "launch" / "detect.launch.py")])
    rclpy.init()
    try:
        node = rclpy.create_node("launch_file_probe")
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if node.count_publishers("/detections") and node.count_subscribers("/launch_test/points"):
                break
            time.sleep(0.2)
        else:
            _out, err = stop(proc)
            raise AssertionError(f"the launched detector offered no /detections or did not subscribe to the "
                                 f"input:\n{err[-3000:]}")
        node.destroy_node()
    finally:
        rclpy.shutdown()
        _out, err = stop(proc, timeout=30)
    assert proc.returncode == 0, err[-3000:]
