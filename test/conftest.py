"""Session-wide test set-up.

Before anything can start a ROS context, the loopback-only DDS settings are applied to this process, so
every node a test creates, and every child process it spawns with the inherited environment, keeps its
DDS traffic on 127.0.0.1. ``make test`` additionally runs pytest inside a private network namespace.
"""

from __future__ import annotations

import os

import pytest

from fastpillars_ros.rosenv import apply_loopback_environment

# A domain of our own per test session keeps parallel runs on one machine apart.
apply_loopback_environment(domain_id=10 + os.getpid() % 80)


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
