"""The processor feature that picks the CPU back end: AMX matrix units with bf16.

On an Intel Xeon with AMX (2 cores, 2026-12-07, BENCHMARKS.md) OpenVINO computes the dense part in bf16 on the
AMX tiles in 11.7 ms against onnxruntime INT8's 37.9 ms, and bf16 keeps fp32's accuracy (within 0.3 points on
every set) where INT8 loses up to 2. Without AMX (an AMD EPYC with AVX-512 BF16 and VNNI, session 12) the two take
the same time and onnxruntime INT8 stays the CPU default.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["amx_bf16"]

CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def amx_bf16() -> bool:
    """Whether the processor has AMX with bf16 tiles (the ``amx_bf16`` flag of ``/proc/cpuinfo``; False where
    that file cannot be read, e.g. off Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())
