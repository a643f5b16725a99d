"""Counters, latency windows and status summaries of the detector node, without ROS.

:class:`NodeStats` is fed by the node's threads (thread-safe) and turned into two diagnostic statuses
("input" and "inference") by :meth:`NodeStats.statuses`: plain ``(level, name, message, [(key, value)])``
tuples, which the node wraps into ``diagnostic_msgs/DiagnosticStatus``. :class:`Throttle` limits how
often one kind of warning reaches the log.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

OK, WARN, ERROR = 0, 1, 2
#: Latency samples kept per stage (the last N frames).
WINDOW = 200


@dataclass
class Status:
    level: int
    name: str
    message: str
    values: list[tuple[str, str]]


class Throttle:
    """At most one pass per ``period`` seconds per key; counts what it held back."""

    def __init__(self, period: float, clock=time.monotonic):
        self.period = float(period)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def ready(self, key: str) -> tuple[bool, int]:
        """``(True, n_held_back_since_last)`` when ``key`` may be logged now, else ``(False, 0)``."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._held[key] += 1
                return False, 0
            self._last[key] = now
            held = self._held.pop(key, 0)
            return True, held


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of ``values``, NaN for no values."""
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


class NodeStats:
    """Everything the node reports about its frames; all methods may be called from any thread."""

    def __init__(self, window: int = WINDOW, clock=time.monotonic, hold_s: float = 5.0):
        self._lock = threading.Lock()
        #: A problem keeps its status at WARN for at least this long, so a slow monitor still sees it.
        self.hold_s = hold_s
        self._last_event: dict[str, float] = {}
        self._clock = clock
        self.window = window
        self.counts: Counter[str] = Counter()      # received, processed, published, dropped_*, skipped_*, errors
        self.rejected: Counter[str] = Counter()    # by FrameRejected.kind
        self.notes: Counter[str] = Counter()       # by note kind
        self._latency: dict[str, deque[float]] = {}
        self._period_marks: Counter[str] = Counter()  # counts at the last statuses() call
        self.last_reject: str = ""
        self.last_note: str = ""
        self.last_error: str = ""
        self._last_error_time: float | None = None
        self.intensity: str = ""
        self.intensity_warning: str = ""
        self.mapping: str = ""
        self.frame_id: str = ""
        self.points: dict[str, int] = {}
        self.num_pillars: int | None = None

    # --- feeding --------------------------------------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n
            self._last_event[key] = self._clock()

    def reject(self, kind: str, message: str) -> None:
        with self._lock:
            self.rejected[kind] += 1
            self.counts["rejected"] += 1
            self._last_event["rejected"] = self._clock()
            self.last_reject = f"{kind}: {message}"

    def note(self, kind: str, message: str) -> None:
        with self._lock:
            self.notes[kind] += 1
            self._last_event[f"note:{kind}"] = self._clock()
            self.last_note = f"{kind}: {message}"

    def error(self, message: str) -> None:
        with self._lock:
            self.counts["errors"] += 1
            self.last_error = message
            self._last_error_time = self._clock()

    def latency(self, timings: Mapping[str, float]) -> None:
        with self._lock:
            for stage, ms in timings.items():
                q = self._latency.get(stage)
                if q is None:
                    q = self._latency[stage] = deque(maxlen=self.window)
                q.append(float(ms))

    def frame(self, *, frame_id: str, mapping: str, points: Mapping[str, int], intensity: str = "",
              intensity_warning: str = "", num_pillars: int | None = None) -> None:
        with self._lock:
            self.frame_id, self.mapping = frame_id, mapping
            self.points = dict(points)
            self.intensity, self.intensity_warning = intensity, intensity_warning
            if num_pillars is not None:
                self.num_pillars = num_pillars

    # --- reading --------------------------------------------------------------------------------------
    def latency_summary(self) -> dict[str, tuple[float, float, int]]:
        """stage -> (p50 ms, p95 ms, samples) over the window."""
        with self._lock:
            items = [(k, list(v)) for k, v in self._latency.items()]
        return {k: (percentile(v, 50), percentile(v, 95), len(v)) for k, v in items}

    def statuses(self, node_name: str, static: Mapping[str, Any], *, pillar_cap: int | None = None,
                 error_recent_s: float = 10.0, extra_input: Mapping[str, Any] | None = None) -> list[Status]:
        """The two statuses of one diagnostics message; levels reflect what happened since the last call."""
        with self._lock:
            counts, rejected, notes = Counter(self.counts), Counter(self.rejected), Counter(self.notes)
            marks = Counter(self._period_marks)
            self._period_marks = Counter(counts) + Counter({f"note:{k}": v for k, v in notes.items()})
            now = self._clock()
            recent_error = (self._last_error_time is not None
                            and now - self._last_error_time <= error_recent_s)
            last_event = dict(self._last_event)
            last_reject, last_note, last_error = self.last_reject, self.last_note, self.last_error
            intensity, intensity_warning, mapping = self.intensity, self.intensity_warning, self.mapping
            frame_id, points, num_pillars = self.frame_id, dict(self.points), self.num_pillars

        def new(key: str) -> int:
            return counts[key] - marks[key]

        def recent(key: str) -> bool:
            return key in last_event and now - last_event[key] <= self.hold_s

        def problem(key: str, what: str) -> str | None:
            if new(key):
                return f"{new(key)} {what}"
            if recent(key):
                return f"{what} within the last {self.hold_s:g} s"
            return None

        new_notes = {k: v - marks[f"note:{k}"] for k, v in notes.items() if v - marks[f"note:{k}"] > 0}
        dropped = counts["dropped_superseded"] + counts["dropped_stale"]

        # input status
        level, problems = OK, []
        text = problem("rejected", "frame(s) rejected")
        if text:
            level = WARN
            problems.append(f"{text} (last: {last_reject})")
        text = problem("dropped_stale", "stale frame(s) dropped")
        if text:
            level = WARN
            problems.append(text)
        if intensity_warning:
            level = WARN
            problems.append(intensity_warning)
        for kind in ("capped", "nonfinite_features"):
            if new_notes.get(kind) or recent(f"note:{kind}"):
                level = WARN
                problems.append(f"{kind.replace('_', ' ')} in recent frames")
        if not counts["received"]:
            problems.append("no cloud received yet")
        message = "; ".join(problems) if problems else "ok"
        values = [
            ("frames_received", counts["received"]),
            ("frames_processed", counts["processed"]),
            ("frames_published", counts["published"]),
            ("dropped_frames", dropped),
            ("dropped_superseded", counts["dropped_superseded"]),
            ("dropped_stale", counts["dropped_stale"]),
            ("skipped_unsubscribed", counts["skipped_unsubscribed"]),
            ("rejected_frames", counts["rejected"]),
            *[(f"rejected.{k}", v) for k, v in sorted(rejected.items())],
            *[(f"notes.{k}", v) for k, v in sorted(notes.items())],
            ("last_rejected", last_reject),
            ("last_note", last_note),
            ("frame_id", frame_id),
            ("field_mapping", mapping),
            ("intensity", intensity),
            *[(f"points.{k}", v) for k, v in points.items()],
            *(extra_input or {}).items(),
        ]
        input_status = Status(level, f"{node_name}: input", message, [(k, str(v)) for k, v in values])

        # inference status
        lat = self.latency_summary()
        ilevel, iproblems = OK, []
        if recent_error:
            ilevel = ERROR
            iproblems.append(f"inference failed: {last_error}")
        text = problem("dropped_superseded", "frame(s) superseded while busy (input faster than inference)")
        if text:
            ilevel = max(ilevel, WARN)
            iproblems.append(text)
        if pillar_cap and num_pillars is not None and num_pillars >= pillar_cap:
            ilevel = max(ilevel, WARN)
            iproblems.append(f"pillar cap reached ({num_pillars}/{pillar_cap}): points were dropped")
        imessage = "; ".join(iproblems) if iproblems else "ok"
        ivalues: list[tuple[str, Any]] = list(static.items())
        ivalues += [("pillars", "" if num_pillars is None else num_pillars),
                    ("pillar_cap", pillar_cap or "none"),
                    ("errors", counts["errors"]), ("last_error", last_error)]
        for stage, (p50, p95, _n) in sorted(lat.items()):
            ivalues += [(f"latency_ms.{stage}.p50", f"{p50:.1f}"), (f"latency_ms.{stage}.p95", f"{p95:.1f}")]
        if lat:
            ivalues.append(("latency_samples", max(n for _a, _b, n in lat.values())))
        inference_status = Status(ilevel, f"{node_name}: inference", imessage, [(k, str(v)) for k, v in ivalues])
        return [input_status, inference_status]
