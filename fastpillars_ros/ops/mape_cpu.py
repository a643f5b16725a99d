"""MAPE's eval-mode forward as a small C kernel, compiled with the system C compiler at first use.

Why a compiled kernel: in torch, MAPE is two GEMMs that write ``[L, C]`` point features and logits (15 MB each on
a 118k-point scan) and then a handful of memory-bound passes over them (two scatter-max, a gather, subtract, exp,
multiply, two scatter-add). The kernel sorts the points by pillar and computes each pillar's features, logits and
reductions in a cache-resident buffer, so nothing per point goes to memory, and it splits the pillars between
threads (mape_cpu.c). torch.compile is no alternative (it needs a compiler too, and imports slowly); numba would
add a large dependency for one loop.

Nothing is required: without a C compiler (``$CC``, e.g. ``ccache gcc``, else ``cc``), with
``FASTPILLARS_NATIVE_MAPE=0``, or when the build fails, :func:`kernel` returns None and MAPE uses its pure-torch path
(the tests compare the two). The shared
library is cached in the engine cache directory (``runtime/engine_cache.py``: it must belong to the user and be
writable by nobody else, since a library from there is loaded into the process), under a name that digests the
source, the flags, the compiler's version and the CPU's feature flags (``-march=native``): a changed source, compiler
or machine builds a new one. Building takes 0.3 s, once; loading it 4 ms.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fastpillars_ros.runtime.cpu_features import cpu_flags
from fastpillars_ros.runtime.engine_cache import EngineCache

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mape_cpu.c")
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-pthread")
# Linked in a separate step without -ffast-math: linking with it adds crtfastmath.o, whose constructor turns on
# flush-to-zero / denormals-are-zero for the whole process when the library loads (pillarize then kept a point at
# x = -1e-45 as if it were at 0: test_ops_pillarize's bound tests failed after MAPE had run).
LINK_FLAGS = ("-shared", "-pthread")


def _build(compiler: list[str], directory: Path) -> Path:
    """Compile the kernel into ``directory`` (atomically: a temporary file, then rename) unless it is there."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    key = "\n".join([SOURCE.read_text(), " ".join(COMPILE_FLAGS + LINK_FLAGS), *compiler, version, platform.machine(),
                     " ".join(sorted(cpu_flags()))])
    path = directory / f"mape_cpu_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        obj = tmp + ".o"
        try:
            subprocess.run([*compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", obj], capture_output=True, text=True,
                           timeout=120, check=True)
            subprocess.run([*compiler, *LINK_FLAGS, obj, "-o", tmp, "-lm"], capture_output=True, text=True,
                           timeout=120, check=True)
            os.replace(tmp, path)
        finally:
            for leftover in (obj, tmp):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    return path


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (pure-torch fallback; the reason is logged once)."""
    if os.environ.get("FASTPILLARS_NATIVE_MAPE", "1") == "0":
        return None
    compiler = shlex.split(os.environ.get("CC", ""))
    if not compiler and (cc := shutil.which("cc")):
        compiler = [cc]
    if not compiler:
        log.info("no C compiler (cc, $CC): MAPE uses its pure-torch path")
        return None
    cache = EngineCache()
    if not cache.ensure_private_directory():
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler, cache.directory)))
        lib.mape_encode.restype = ctypes.c_int
    except (OSError, AttributeError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building or loading the MAPE CPU kernel failed (%s): MAPE uses its pure-torch path", detail)
        return None
    lib.mape_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 4, *[ctypes.c_void_p] * 4,
                                ctypes.c_float, ctypes.c_int64, ctypes.c_void_p]
    return lib


def mape_encode(lib: ctypes.CDLL, features: Tensor, pillar: Tensor, num_pillars: int,
                point_linear: tuple[Tensor, Tensor], score_linear: tuple[Tensor, Tensor], slope: float,
                threads: int) -> Tensor:
    """:meth:`MAPE.forward` in eval mode (see mape_cpu.c).

    Args:
        lib: :func:`kernel`'s library.
        features: ``[L, F]`` float32 CPU decorated points (finite), any order.
        pillar: ``[L]`` int64 pillar id of each point in ``[0, num_pillars)``.
        num_pillars: M.
        point_linear: weight ``[C, F]`` and bias ``[C]`` of the point Linear with the batch norm folded in.
        score_linear: weight ``[C, C]`` and bias ``[C]`` of the attention Linear.
        slope: the LeakyReLUs' negative slope.
        threads: threads to share the pillars (1 on clouds under 8,192 points).
    Returns:
        ``[M, C]`` float32; pillars without points are 0.
    """
    (w1, b1), (w2, b2) = point_linear, score_linear
    features, pillar = features.contiguous(), pillar.contiguous()
    w1t, w2t, b1, b2 = (t.detach().float().contiguous() for t in (w1.t(), w2.t(), b1, b2))
    out = features.new_empty((num_pillars, w1.shape[0]))
    if lib.mape_encode(features.data_ptr(), pillar.data_ptr(), features.shape[0], num_pillars, features.shape[1],
                       w1.shape[0], w1t.data_ptr(), b1.data_ptr(), w2t.data_ptr(), b2.data_ptr(), slope, threads,
                       out.data_ptr()) != 0:
        raise MemoryError(f"MAPE CPU kernel: no memory for the pillar lists of {features.shape[0]} points")
    return out
