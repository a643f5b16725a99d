"""CUDA graphs for the static part of a frame (dense network + decode), with a fallback when shapes change.

A frame of the official model launches hundreds of small kernels; on a fast GPU the launches, not the
arithmetic, set the time. A CUDA graph records the launches once and replays them with one call. Graphs
need fixed shapes and addresses, so :class:`GraphRunner` keeps one graph per *shape key* (shapes, dtypes
and devices of the inputs): the inputs are copied into the graph's own input tensors, the graph is
replayed, and its output tensors (the same objects on every replay) are returned. A new key is captured
on first use; a key whose capture fails runs eagerly from then on (one warning), so a model or a torch
build that cannot be captured still runs.

The capture/replay mechanism sits behind :class:`GraphBackend`, so the bookkeeping is tested on the CPU
with a stub; :class:`TorchCudaGraphs` is the real one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

__all__ = ["GraphBackend", "GraphRunner", "TorchCudaGraphs", "shape_key"]


class GraphBackend(Protocol):
    """Records ``fn`` on fixed inputs and replays the recording."""

    def capture(self, fn: Callable[..., Any], static_inputs: tuple[torch.Tensor, ...]) -> tuple[Any, Any]:
        """Record ``fn(*static_inputs)``; return (graph handle, the outputs the replays will overwrite)."""
        ...

    def replay(self, graph: Any) -> None:
        """Re-run the recorded work on the current contents of the static inputs (asynchronously)."""
        ...


class TorchCudaGraphs:
    """:class:`GraphBackend` on ``torch.cuda.CUDAGraph``.

    Before capturing, ``fn`` runs ``warmup`` times on a side stream (cuDNN/cuBLAS pick algorithms and
    allocate workspaces lazily, which must not happen during a capture). The graphs share one memory pool:
    the caller runs them one at a time.
    """

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup
        self._pool: Any = None

    def capture(self, fn: Callable[..., Any], static_inputs: tuple[torch.Tensor, ...]) -> tuple[Any, Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work of other threads (a ROS callback moving a cloud) does not break the capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = fn(*static_inputs)
        self._pool = graph.pool()
        return graph, outputs

    def replay(self, graph: Any) -> None:
        graph.replay()


def shape_key(inputs: tuple[torch.Tensor, ...]) -> Hashable:
    """What a graph is specific to: shape, dtype and device of every input."""
    return tuple((tuple(x.shape), x.dtype, str(x.device)) for x in inputs)


class GraphRunner:
    """Calls ``fn(*inputs)`` through graphs captured once per :func:`shape_key`, with an eager fallback.

    Args:
        fn: tensors in, any structure of tensors out; must be capturable (no host synchronisation, no
            host-to-device copies, no data-dependent shapes) and free of side effects.
        backend: capture/replay implementation (default :class:`TorchCudaGraphs`).
        max_graphs: graphs kept; the least recently used one is dropped beyond that.

    The returned outputs are the graph's own tensors: consume (or copy) them before the next call.
    """

    def __init__(self, fn: Callable[..., Any], backend: GraphBackend | None = None, max_graphs: int = 4) -> None:
        self.fn = fn
        self.backend = backend if backend is not None else TorchCudaGraphs()
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, tuple[Any, tuple[torch.Tensor, ...], Any]] = OrderedDict()
        self._eager: set[Hashable] = set()
        self.captures = 0

    def __call__(self, *inputs: torch.Tensor) -> Any:
        key = shape_key(inputs)
        if key in self._eager:
            return self.fn(*inputs)
        entry = self._graphs.get(key)
        if entry is None:
            static = tuple(x.clone() for x in inputs)
            try:
                graph, outputs = self.backend.capture(self.fn, static)
            except Exception as exc:  # any capture failure: this shape runs eagerly from now on
                log.warning("CUDA graph capture failed for inputs %s (%s): running them without a graph",
                            key, exc)
                self._eager.add(key)
                return self.fn(*inputs)
            self.captures += 1
            entry = self._graphs[key] = (graph, static, outputs)
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static, outputs = entry
        for dst, src in zip(static, inputs, strict=True):
            dst.copy_(src)
        self.backend.replay(graph)
        return outputs
