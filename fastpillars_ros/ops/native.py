"""Small C kernels for the CPU path, compiled with the system C compiler at first use and loaded with ctypes.

Two kernels use this: MAPE's fused encoder (``ops/mape_cpu.c``) and pillarization with decoration
(``ops/pillarize_cpu.c``). Nothing is required: without a C compiler (``$CC``, e.g. ``ccache gcc``, else ``cc``),
with ``FASTPILLARS_NATIVE=0``, or when a build fails, :func:`load` returns None and the caller keeps its pure
numpy/torch path (the tests compare the two). A shared library is cached in the engine cache directory
(``runtime/engine_cache.py``: it must belong to the user and be writable by nobody else, since a library from there
is loaded into the process), under a name that digests the source, the flags, the compiler's version and the CPU's
feature flags (``-march=native``): a changed source, compiler or machine builds a new one. Building takes about
0.3 s per kernel, once; loading it a few ms.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastpillars_ros.runtime.cpu_features import cpu_flags
from fastpillars_ros.runtime.engine_cache import EngineCache

__all__ = ["SWITCH", "load"]

log = logging.getLogger(__name__)

SWITCH = "FASTPILLARS_NATIVE"  # "0": no compiled kernel, the pure numpy/torch paths everywhere
# Linked in a separate step without -ffast-math: linking with it adds crtfastmath.o, whose constructor turns on
# flush-to-zero / denormals-are-zero for the whole process when the library loads (pillarize then kept a point at
# x = -1e-45 as if it were at 0: test_ops_pillarize's bound tests failed after MAPE had run).
LINK_FLAGS = ("-shared", "-pthread")


def _build(compiler: list[str], source: Path, compile_flags: tuple[str, ...], directory: Path) -> Path:
    """Compile ``source`` into ``directory`` (atomically: a temporary file, then rename) unless it is there."""
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    key = "\n".join([source.read_text(), " ".join(compile_flags + LINK_FLAGS), *compiler, version, platform.machine(),
                     " ".join(sorted(cpu_flags()))])
    path = directory / f"{source.stem}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        obj = tmp + ".o"
        try:
            subprocess.run([*compiler, *compile_flags, "-c", str(source), "-o", obj], capture_output=True, text=True,
                           timeout=120, check=True)
            subprocess.run([*compiler, *LINK_FLAGS, obj, "-o", tmp, "-lm"], capture_output=True, text=True,
                           timeout=120, check=True)
            os.replace(tmp, path)
        finally:
            for leftover in (obj, tmp):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    return path


def load(source: Path, compile_flags: tuple[str, ...],
         signatures: Mapping[str, tuple[Any, Sequence[Any]]]) -> ctypes.CDLL | None:
    """The library built from ``source`` with ``compile_flags``, its functions typed by ``signatures`` (name ->
    (restype, argtypes)), or None (the reason is logged; callers cache the result)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    compiler = shlex.split(os.environ.get("CC", ""))
    if not compiler and (cc := shutil.which("cc")):
        compiler = [cc]
    if not compiler:
        log.info("no C compiler (cc, $CC): %s is not built, its pure numpy/torch path runs", source.name)
        return None
    cache = EngineCache()
    if not cache.ensure_private_directory():
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler, source, compile_flags, cache.directory)))
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, list(argtypes)
    except (OSError, AttributeError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building or loading %s failed (%s): its pure numpy/torch path runs", source.name, detail)
        return None
    return lib
