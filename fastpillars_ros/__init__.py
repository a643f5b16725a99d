"""fastpillars_ros: FastPillars LiDAR 3D object detection as a ROS 2 package.

Everything below :mod:`fastpillars_ros.ros.node` and :mod:`fastpillars_ros.ros.messages` is ROS-free, so the
detection library can be used offline (evaluation, training, replay) without a ROS graph.
"""

import os as _os

# torch's OpenMP threads keep spinning for a while after each parallel region (libgomp's default), so right after
# MAPE they hold the cores that the dense engine's own threads (OpenVINO, onnxruntime) need: on 2 cores that cost
# 4-5 ms per frame (BENCHMARKS.md). Passive waiting gives the cores back at once. libgomp reads this when torch is
# first imported, so it takes effect only if that happens after this import; a user's own setting wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"
