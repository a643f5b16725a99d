"""Helpers for tests that start ROS 2 processes: loopback-only environment, bounded waits, clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from fastpillars_ros.ros.rosenv import is_loopback_environment, loopback_environment


def spawn_python(code_or_args: str | Sequence[str], *, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -c CODE`` (a str) or ``python ARGS...`` with the loopback-only DDS environment.

    stdout/stderr are captured as text. The caller must stop it (:func:`stop`).
    """
    env = loopback_environment()
    env.update(env_extra or {})
    assert is_loopback_environment(env)
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[str, str]:
    """Interrupt (SIGINT, like Ctrl-C), then kill if needed; return (stdout, stderr)."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    return proc.communicate()
