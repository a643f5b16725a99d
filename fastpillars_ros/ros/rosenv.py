"""Loopback-only DDS settings for every ROS process this project starts itself.

Tests, the demo, benchmarks and the replay tool must never let DDS discovery reach a real network card.
They call :func:`apply_loopback_environment` (in-process, before ``rclpy.init``) or pass
:func:`loopback_environment` to a child process. The settings are:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (Jazzy/Kilted; ``ROS_LOCALHOST_ONLY=1`` for Humble),
* ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp`` with ``FASTDDS_DEFAULT_PROFILES_FILE`` (and, for Fast DDS 2: Humble,
  Jazzy, ``FASTRTPS_DEFAULT_PROFILES_FILE``) pointing at ``config/fastdds_loopback.xml`` (UDP allow-listed to
  127.0.0.1, built-in transports off, 32 MiB SHM).

The detector node itself does not force these: on a robot it must talk to the other machines.
This module imports nothing from ROS.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PROFILE_NAME = "fastdds_loopback.xml"


def profile_path() -> Path:
    """Absolute path of the loopback Fast DDS profile (source tree first, then the installed share dir)."""
    source = Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("fastpillars_ros")) / "config" / PROFILE_NAME
    except (ImportError, LookupError) as exc:  # PackageNotFoundError is a LookupError
        raise FileNotFoundError(f"cannot find {PROFILE_NAME}: not in the source tree and {exc}") from exc
    if not installed.is_file():
        raise FileNotFoundError(f"cannot find {PROFILE_NAME} at {installed}")
    return installed


def loopback_environment(base: Mapping[str, str] | None = None, *, domain_id: int | None = None) -> dict[str, str]:
    """Return a copy of ``base`` (default: ``os.environ``) with the loopback-only DDS settings applied.

    Args:
        base: environment to start from.
        domain_id: ``ROS_DOMAIN_ID`` to use; default keeps the one in ``base`` (or 0). Tests pick their own
            so parallel runs on one machine do not see each other.
    """
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.pop("ROS_STATIC_PEERS", None)
    if env.get("ROS_DISTRO") == "humble":
        env["ROS_LOCALHOST_ONLY"] = "1"
    else:
        # Jazzy and later warn when both the old and the new variable are set.
        env.pop("ROS_LOCALHOST_ONLY", None)
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    # ament_index lookups (e.g. the installed share dir) need the venv prefix when ROS comes from wheels.
    prefix = sys.prefix
    if Path(prefix, "share", "ament_index").is_dir():
        paths = [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
        if prefix not in paths:
            env["AMENT_PREFIX_PATH"] = os.pathsep.join([prefix, *paths])
    # Fast DDS 2 (Humble, Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE: without it a Jazzy process runs on
    # the built-in transports with a 512 KiB segment, which loses almost every best-effort 2 MB cloud. Fast DDS
    # 3's rmw warns that that name is deprecated, so there only the new one is set.
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile_path())
    if fast_dds_3_in(_ros_prefixes(env)):
        env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    else:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    return env


def _ros_prefixes(env: Mapping[str, str]) -> list[str]:
    """This interpreter's prefix (ROS from wheels) and the AMENT_PREFIX_PATH ones (a sourced ROS)."""
    return [sys.prefix, *(p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p)]


def fast_dds_3_in(prefixes: Sequence[str]) -> bool:
    """Whether the ROS installed under ``prefixes`` uses Fast DDS 3 (``lib/libfastdds.so``; 2.x is libfastrtps).
    Looked up on disk: this module imports nothing from ROS."""
    return any(glob.glob(os.path.join(p, "lib", "libfastdds.so*")) for p in prefixes)


def apply_loopback_environment(*, domain_id: int | None = None) -> None:
    """Apply :func:`loopback_environment` to this process (also removing what it removes). Call it before
    ``rclpy.init``."""
    env = loopback_environment(domain_id=domain_id)
    for name in set(os.environ) - set(env):
        del os.environ[name]
    os.environ.update(env)


def is_loopback_environment(env: Mapping[str, str] | None = None) -> bool:
    """True when ``env`` (default: ``os.environ``) carries the loopback-only settings."""
    env = os.environ if env is None else env
    return (
        env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
        and env.get("RMW_IMPLEMENTATION") == "rmw_fastrtps_cpp"
        and Path(env.get("FASTDDS_DEFAULT_PROFILES_FILE", "")).name == PROFILE_NAME
        and (fast_dds_3_in(_ros_prefixes(env))
             or Path(env.get("FASTRTPS_DEFAULT_PROFILES_FILE", "")).name == PROFILE_NAME)
    )
