"""Run CUDA kernel source on the CPU: compile a ``.cu`` file as C++ with ``cuda_on_cpu.h`` (tests only).

``build(cu_file, wrapper_cpp_source)`` compiles one translation unit made of

1. ``cuda_on_cpu.h`` (CUDA qualifiers, ``threadIdx``/``blockIdx``, ``__syncthreads``, atomics, warp
   shuffles, intrinsics and ``launch(kernel, grid, block, args...)``; see the header's comment for the
   execution model and what is not bit-faithful),
2. the ``.cu`` file itself (``#include``-d unchanged; it must not include CUDA headers),
3. your wrapper: ``extern "C"`` functions that take plain pointers/integers, ``launch`` the kernels in the
   same order as the CuPy host code, and return an ``int`` status,

into a shared library with ``g++ -std=c++20 -O2 -pthread -ffp-contract=off`` and loads it with ctypes.
Libraries are cached in ``$CUDA_HARNESS_CACHE`` (default: ``<tmp>/fastpillars_cuda_harness``) under a
hash of the sources and flags, so a test session compiles each wrapper once.

Example::

    import ctypes
    import numpy as np
    from cuda_harness import build, c_arg, ptr

    WRAPPER = r'''
    extern "C" int run_scale(float* data, int n, float s) {
        launch(scale_kernel, dim3((n + 63) / 64), dim3(64), data, n, s);
        return 0;
    }
    '''
    lib = build("fastpillars_ros/cuda/example.cu", WRAPPER)
    lib.run_scale.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_float]
    x = np.arange(100, dtype=np.float32)
    lib.run_scale(ptr(x), x.size, 2.0)
    # or, without argtypes, with exact C types taken from numpy scalars:
    lib.run_scale(*map(c_arg, (x, np.int32(x.size), np.float32(2.0))))

Keep blocks modest (64-256 threads): every CUDA thread is an OS thread and CI has 2 cores.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_on_cpu.h")
CXX_FLAGS = ("-std=c++20", "-O2", "-pthread", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wextra",
             "-Wno-unused-parameter")

__all__ = ["HEADER", "HarnessBuildError", "build", "c_arg", "compiler", "ptr"]


class HarnessBuildError(RuntimeError):
    """The kernel file plus wrapper did not compile as C++; the message holds the compiler output."""


def compiler() -> str | None:
    """Path of the C++ compiler the harness uses (``$CXX`` or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    d = Path(os.environ.get("CUDA_HARNESS_CACHE", Path(tempfile.gettempdir()) / "fastpillars_cuda_harness"))
    d.mkdir(parents=True, exist_ok=True)
    return d


_loaded: dict[Path, ctypes.CDLL] = {}


def build(cu_file: str | os.PathLike[str], wrapper_cpp_source: str, *, extra_flags: tuple[str, ...] = ()
          ) -> ctypes.CDLL:
    """Compile ``cu_file`` + ``wrapper_cpp_source`` against ``cuda_on_cpu.h`` and load the result.

    ``cu_file`` is read from disk (relative paths are taken from the current directory); the wrapper
    sees every kernel and ``__device__`` function of the file. Raises ``HarnessBuildError`` with the
    full command and compiler output when compilation fails, ``FileNotFoundError`` when there is no
    C++ compiler. The returned CDLL has no ``argtypes`` set: set them before calling.
    """
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("cuda_harness.build: no C++ compiler (set $CXX or install g++)")
    cu_path = Path(cu_file).resolve()
    cu_src = cu_path.read_text()
    header_src = HEADER.read_text()
    flags = (*CXX_FLAGS, *extra_flags)
    key = hashlib.sha256("\0".join([cxx, *flags, header_src, str(cu_path), cu_src, wrapper_cpp_source]).encode())
    digest = key.hexdigest()[:20]
    out_dir = _cache_dir()
    lib_path = out_dir / f"{cu_path.stem}_{digest}.so"
    if lib_path in _loaded:
        return _loaded[lib_path]
    if not lib_path.exists():
        # The .cu file is inlined (not #include-d by path) so the hash covers exactly what is compiled;
        # #line keeps compiler messages pointing at the real file and line.
        unit = (f'#include "{HEADER}"\n#line 1 "{cu_path}"\n{cu_src}\n'
                f'#line 1 "<wrapper>"\n{wrapper_cpp_source}\n')
        src_path = out_dir / f"{cu_path.stem}_{digest}.cpp"
        src_path.write_text(unit)
        tmp_lib = out_dir / f"{cu_path.stem}_{digest}.{os.getpid()}.so.tmp"
        cmd = [cxx, *flags, str(src_path), "-o", str(tmp_lib)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise HarnessBuildError(
                f"compiling {cu_path.name} with the CUDA-on-CPU harness failed (exit {proc.returncode})\n"
                f"command: {' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
        os.replace(tmp_lib, lib_path)  # atomic: parallel test workers never load a half-written file
    lib = ctypes.CDLL(str(lib_path))
    _loaded[lib_path] = lib
    return lib


def ptr(array: np.ndarray) -> int:
    """Address of a C-contiguous numpy array's data, for a ``ctypes.c_void_p`` argument."""
    if not array.flags.c_contiguous:
        raise ValueError("cuda_harness.ptr: array must be C-contiguous")
    return array.ctypes.data


def c_arg(value: object) -> object:
    """ctypes value for one argument of a wrapper function, without setting ``argtypes``.

    numpy arrays (C-contiguous) become ``c_void_p``; numpy scalars keep their exact C type
    (``np.int32`` -> ``c_int``, ``np.int64`` -> ``c_longlong``, ``np.uint32`` -> ``c_uint``,
    ``np.uint64`` -> ``c_ulonglong``, ``np.float32`` -> ``c_float``, ``np.float64`` -> ``c_double``).
    Plain Python numbers are rejected: their C type would be a guess.
    """
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(ptr(value))
    for np_type, c_type in ((np.int32, ctypes.c_int), (np.int64, ctypes.c_longlong), (np.uint32, ctypes.c_uint),
                            (np.uint64, ctypes.c_ulonglong), (np.float32, ctypes.c_float),
                            (np.float64, ctypes.c_double)):
        if isinstance(value, np_type):
            return c_type(value.item())
    raise TypeError(f"c_arg: pass a numpy array or a sized numpy scalar, not {type(value).__name__}")
