"""The processor's feature flags (``/proc/cpuinfo``), read once: bf16 units pick the CPU back end, and the compiled
CPU kernels (``ops/native.py``) key their builds on them.

On an Intel Xeon with AMX (2 cores, 2026-12-07, BENCHMARKS.md) OpenVINO computes the dense part in bf16 on the
AMX tiles in 11.7 ms against onnxruntime INT8's 37.9 ms, and bf16 keeps fp32's accuracy (within 0.3 points on
every set) where INT8 loses up to 2: there OpenVINO bf16 comes first. Without AMX (AMD EPYCs with AVX-512 BF16 and
VNNI, sessions 12, 18 and 21) bf16 takes as long as onnxruntime INT8 or up to 14 % longer, so onnxruntime INT8
comes first, unless the weights rule INT8 out of ``auto`` (``CheckpointMeta.auto_int8``): then bf16 on AVX-512 BF16
is fp32's accuracy at INT8's speed, where onnxruntime fp32 would take nearly twice as long.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["amx_bf16", "bf16_units", "cpu_flags"]

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first processor in ``/proc/cpuinfo`` (empty where that file cannot be read, e.g.
    off Linux)."""
    try:
        with open(CPUINFO, errors="replace") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def amx_bf16() -> bool:
    """Whether the processor has AMX with bf16 tiles (the ``amx_bf16`` flag)."""
    return "amx_bf16" in cpu_flags()


def bf16_units() -> bool:
    """Whether the processor computes bf16 natively: AMX bf16 tiles or AVX-512 BF16 (``avx512_bf16``)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())
