"""Run every ``bench_*.py`` in this folder, one after another, each in its own process (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastpillars_ros.ros.rosenv import loopback_environment


def main() -> int:
    here = Path(__file__).resolve().parent
    names = sys.argv[1:]
    scripts = sorted(here.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    failed = []
    for script in scripts:
        print(f"\n##### {script.name}", flush=True)
        # Benchmarks that start ROS processes inherit the loopback-only DDS settings from here.
        if subprocess.call([sys.executable, str(script)], env=loopback_environment(), cwd=here.parents[1]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
