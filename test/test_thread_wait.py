"""torch's OpenMP threads wait passively when the package is imported first (so they do not hold the cores the
dense engine needs right after MAPE), and a user's own choice is kept."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import os, fastpillars_ros; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def _imported_env(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_importing_the_package_makes_openmp_threads_wait_passively():
    assert _imported_env() == "PASSIVE None"


def test_a_users_wait_policy_is_kept():
    assert _imported_env(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"


def test_a_users_spin_count_is_kept_without_a_wait_policy_on_top():
    assert _imported_env(GOMP_SPINCOUNT="10000") == "None 10000"
