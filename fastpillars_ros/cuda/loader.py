"""Load the CUDA kernel sources shipped in this package directory as CuPy ``RawModule`` objects.

The ``.cu`` files are package data (see ``setup.py``) compiled at run time by NVRTC through CuPy, so the
package has no build step and no CUDA dependency unless a GPU path is used. CuPy is imported lazily.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

CUDA_DIR = Path(__file__).resolve().parent
# No fused multiply-add contraction: each float operation rounds like numpy's, so the GPU kernels give the
# CPU reference's results bit for bit (extraction scales, decoration offsets, IoU areas). The kernels are
# memory-bound; the separate multiply and add cost nothing measurable.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")

__all__ = ["CUDA_DIR", "CudaUnavailableError", "cuda_available", "load_module", "source_path"]


class CudaUnavailableError(RuntimeError):
    """CuPy is not installed or no CUDA device is visible; use the CPU (numpy) or torch path instead."""


def source_path(name: str) -> Path:
    """Path of ``<name>.cu`` in the package's cuda directory (``name`` without the suffix)."""
    path = CUDA_DIR / f"{name.removesuffix('.cu')}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"no CUDA source {path.name} in {CUDA_DIR}")
    return path


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise CudaUnavailableError(
            "the CUDA path needs CuPy (e.g. `pip install cupy-cuda12x`); it is not installed") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when there is no driver or no device
        raise CudaUnavailableError(f"CuPy is installed but no CUDA device is usable: {e}") from e
    if count < 1:
        raise CudaUnavailableError("CuPy is installed but no CUDA device is visible")
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _import_cupy()
    except CudaUnavailableError:
        return False
    return True


@functools.cache
def _load(name: str, device_id: int) -> Any:
    cupy = _import_cupy()
    code = source_path(name).read_text()
    module = cupy.RawModule(code=code, options=NVRTC_OPTIONS)
    module.compile()  # compile now so that source errors surface at load time, not at first launch
    return module


def load_module(name: str) -> Any:
    """The ``cupy.RawModule`` for ``fastpillars_ros/cuda/<name>.cu`` on the current device (cached).

    Raises :class:`CudaUnavailableError` when CuPy or a GPU is missing, ``FileNotFoundError`` for an
    unknown name. Kernels are looked up with ``module.get_function("<extern C name>")``.
    """
    cupy = _import_cupy()
    return _load(name.removesuffix(".cu"), cupy.cuda.runtime.getDevice())
