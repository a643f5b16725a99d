"""The ROS node and its helpers (the only modules besides tools/ that import ROS)."""
