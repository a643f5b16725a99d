"""Per-stage timing of a detector frame (the library's clock; the ``profile`` command lives in tools/profile.py)."""

from __future__ import annotations

import time
from typing import Any

import torch


class StageClock:
    """Milliseconds per pipeline stage, without stopping the device to read them.

    On the CPU each :meth:`lap` reads the wall clock. On CUDA it records an event on the current stream, and
    :meth:`timings` reads the events once, after the frame's results were copied to the host (that copy
    waits for the stream anyway), so timing adds no host synchronisation inside the frame. A CUDA stage's
    time is the stream's time from the previous event to its own, idle gaps waiting for the host included.
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._t0 = self._last = time.perf_counter()
        self._times: dict[str, float] = {}
        self._events: list[tuple[str, Any]] = []
        self._start = torch.cuda.Event(enable_timing=True) if cuda else None
        if self._start is not None:
            self._start.record()

    def lap(self, stage: str) -> None:
        """End ``stage`` now (in stream order on CUDA)."""
        if self._start is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events.append((stage, event))
            return
        now = time.perf_counter()
        self._times[stage] = (now - self._last) * 1e3
        self._last = now

    def timings(self) -> dict[str, float]:
        """Stage times in ms, and ``total``: wall clock since the clock was made (waits for the last event)."""
        times = dict(self._times)
        previous = self._start
        for stage, event in self._events:
            event.synchronize()
            times[stage] = previous.elapsed_time(event)
            previous = event
        times["total"] = (time.perf_counter() - self._t0) * 1e3
        return times
