"""Shared helpers for the benchmarks in this folder (run by ``make bench``, never by pytest).

Every benchmark measures its anchor and the candidate side by side in one run, prints the ratio, the
absolute numbers and the hardware they were measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def hardware() -> str:
    """One line naming the CPU (and GPU when torch sees one) the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}"
    try:
        import torch

        text += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def time_ms(fn: Callable[[], object], *, repeat: int = 20, warmup: int = 2, sync: Callable[[], None] | None = None
            ) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], *, repeat: int = 20, warmup: int = 2,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds of each of ``fns``, called in turns (one call of each per round), so that a change of
    the machine's load hits all of them alike. ``clock=time.thread_time`` measures the calling thread's CPU time,
    which leaves out the time spent waiting for a core (use it with one torch thread)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def print_header(title: str) -> None:
    print(f"\n=== {title}")
    print(f"hardware: {hardware()}")


def print_ratio(name: str, anchor_name: str, anchor_ms: float, candidate_ms: float, goal_ms: float | None = None
                ) -> None:
    """Print one comparison row: candidate vs anchor (speed-up = anchor / candidate)."""
    goal = "" if goal_ms is None else f"  goal <= {goal_ms:g} ms: {'met' if candidate_ms <= goal_ms else 'NOT met'}"
    print(f"{name:<44s} {candidate_ms:9.3f} ms   {anchor_name}: {anchor_ms:9.3f} ms   "
          f"speed-up x{anchor_ms / candidate_ms:7.1f}{goal}")
