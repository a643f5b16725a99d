"""Session-wide test set-up.

Before anything can start a ROS context, the loopback-only DDS settings are applied to this process, so
every node a test creates, and every child process it spawns with the inherited environment, keeps its
DDS traffic on 127.0.0.1. ``make test`` additionally runs pytest inside a private network namespace.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest
from cuda_harness import compiler

from fastpillars_ros.ros.rosenv import apply_loopback_environment

# A domain of our own per test session keeps parallel runs on one machine apart.
apply_loopback_environment(domain_id=10 + os.getpid() % 80)


#: Tools that ``@pytest.mark.needs_tool(name)`` tests need: name -> (finder returning a path or None, what it is).
TOOLS: dict[str, tuple[Callable[[], str | None], str]] = {
    "nvcc": (lambda: shutil.which("nvcc"), "nvcc of the CUDA toolkit"),
    "cxx": (compiler, "a C++ compiler ($CXX or g++) for the CUDA-on-CPU harness"),
}
#: Comma-separated tool names whose absence fails the tests that need them instead of skipping them
#: (``.ci/run`` sets it for the tools its machine has, so a CI machine without them cannot report green).
REQUIRE_ENV = "FASTPILLARS_REQUIRE"


def _required_tools() -> set[str]:
    names = {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip()}
    unknown = names - set(TOOLS)
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_ENV} names unknown tools {sorted(unknown)}; known: {sorted(TOOLS)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    _required_tools()  # an unknown name is a usage error before anything runs


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        for tool in mark.args:
            find, what = TOOLS[tool]
            if find() is not None:
                continue
            if tool in _required_tools():
                pytest.fail(f"{what} is missing, and {REQUIRE_ENV} requires {tool!r}")
            pytest.skip(f"{what} is missing (set {REQUIRE_ENV}={tool} to make this a failure)")


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
