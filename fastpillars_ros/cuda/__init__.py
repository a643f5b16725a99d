"""CUDA kernel sources (``*.cu``, package data) and their CuPy loader; see :mod:`.loader`."""

from fastpillars_ros.cuda.loader import CUDA_DIR, CudaUnavailableError, cuda_available, load_module, source_path

__all__ = ["CUDA_DIR", "CudaUnavailableError", "cuda_available", "load_module", "source_path"]
