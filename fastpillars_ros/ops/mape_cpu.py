"""MAPE's eval-mode forward as a small C kernel, compiled with the system C compiler at first use.

Why a compiled kernel: in torch, MAPE is two GEMMs that write ``[L, C]`` point features and logits (15 MB each on
a 118k-point scan) and then a handful of memory-bound passes over them (two scatter-max, a gather, subtract, exp,
multiply, two scatter-add). The kernel sorts the points by pillar and computes each pillar's features, logits and
reductions in a cache-resident buffer, so nothing per point goes to memory, and it splits the pillars between
threads (mape_cpu.c). torch.compile is no alternative (it needs a compiler too, and imports slowly); numba would
add a large dependency for one loop.

Built and cached by ``ops/native.py`` (no compiler or ``FASTPILLARS_NATIVE=0``: :func:`kernel` returns None and
MAPE uses its pure-torch path).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from fastpillars_ros.ops import native

if TYPE_CHECKING:
    from torch import Tensor

SOURCE = Path(__file__).with_name("mape_cpu.c")
# -ffast-math for glibc's vectorised expf (libmvec); every value in the kernel is finite.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-pthread")
MAX_POINTS = 2**31  # the kernel lists points by int32 index


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (pure-torch fallback; the reason is logged once)."""
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    return native.load(SOURCE, COMPILE_FLAGS, {
        "mape_encode": (ctypes.c_int, [p, p, i64, i64, i64, i64, p, p, p, p, ctypes.c_float, i64, p]),
    })


def mape_encode(lib: ctypes.CDLL, features: Tensor, pillar: Tensor, num_pillars: int,
                point_linear: tuple[Tensor, Tensor], score_linear: tuple[Tensor, Tensor], slope: float,
                threads: int) -> Tensor:
    """:meth:`MAPE.forward` in eval mode (see mape_cpu.c).

    Args:
        lib: :func:`kernel`'s library.
        features: ``[L, F]`` float32 CPU decorated points (finite), any order; L < :data:`MAX_POINTS`.
        pillar: ``[L]`` int64 pillar id of each point in ``[0, num_pillars)``.
        num_pillars: M.
        point_linear: weight ``[C, F]`` and bias ``[C]`` of the point Linear with the batch norm folded in.
        score_linear: weight ``[C, C]`` and bias ``[C]`` of the attention Linear.
        slope: the LeakyReLUs' negative slope.
        threads: threads to share the pillars (1 on clouds under 8,192 points).
    Returns:
        ``[M, C]`` float32; pillars without points are 0.
    Raises:
        ValueError: ``pillar`` is not int64 with one id per point, or holds an id outside ``[0, num_pillars)``.
    """
    import torch

    (w1, b1), (w2, b2) = point_linear, score_linear
    features, pillar = features.contiguous(), pillar.contiguous()
    w1t, w2t, b1, b2 = (t.detach().float().contiguous() for t in (w1.t(), w2.t(), b1, b2))
    out = features.new_empty((num_pillars, w1.shape[0]))
    if pillar.dtype != torch.int64 or pillar.shape != features.shape[:1]:
        raise ValueError(f"point_pillar must be int64 with one id per point ({features.shape[0]}), got "
                         f"{pillar.dtype} {tuple(pillar.shape)}")
    status = lib.mape_encode(features.data_ptr(), pillar.data_ptr(), features.shape[0], num_pillars,
                             features.shape[1], w1.shape[0], w1t.data_ptr(), b1.data_ptr(), w2t.data_ptr(),
                             b2.data_ptr(), slope, threads, out.data_ptr())
    if status == -2:
        raise ValueError(f"point_pillar holds an id outside [0, {num_pillars}): give MAPE the pillar ids that "
                         "pillarize made for these points")
    if status != 0:
        raise MemoryError(f"MAPE CPU kernel: no memory for the pillar lists of {features.shape[0]} points")
    return out
