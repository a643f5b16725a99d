"""fastpillars_ros: FastPillars LiDAR 3D object detection as a ROS 2 package.

Everything below :mod:`fastpillars_ros.ros.node` and :mod:`fastpillars_ros.ros.messages` is ROS-free, so the
detection library can be used offline (evaluation, training, replay) without a ROS graph.
"""

__version__ = "0.1.0"
