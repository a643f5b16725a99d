"""``fastpillars-ros replay BAG``: play a bag's point clouds to a detector and measure its answers.

What it does:

* reads the clouds of a rosbag2 bag (directory, ``.mcap`` or ``.db3``; ``--topic`` picks the PointCloud2
  topic when there are several) and publishes the CDR bytes unchanged, so headers (stamp, frame_id) are the
  recorded ones;
* paces them like the recording (bag time scaled by ``--rate``), or with ``--max-rate`` as fast as the
  detector answers: the next cloud goes out when the answer to the previous one arrived or ``--timeout-s``
  passed (back-pressure, so every frame gets its chance);
* ``--clock``: publishes ``/clock`` (``rosgraph_msgs/Clock``, best effort like every ROS time source's
  subscription) with the bag time, for detectors started with ``use_sim_time`` (ours drops clouds older than
  ``max_input_age_ms`` against its clock: replay old bags with ``--clock`` and ``use_sim_time``, or set
  ``max_input_age_ms`` to 0);
* ``--loop`` / ``--loops N``, ``--start S`` / ``--duration D`` (seconds of bag time from the bag's start);
* subscribes the detector's ``vision_msgs/Detection3DArray`` (``--detections-topic``) and matches each answer
  to the cloud with the same header stamp (any detector that copies the input header works, not only
  ours); ``--record OUT`` writes the answers (and with ``--record-markers`` the MarkerArray) as received,
  stamped with the receive time, into a new mcap bag;
* prints frames sent / answered / dropped (no answer within ``--timeout-s``), late and unmatched answers and
  the latency percentiles (receive time of the answer minus send time of its cloud);
* publishes the first cloud again every ``FIRST_RESEND_S`` until it is answered (at most ``--timeout-s``): a
  best-effort subscriber (ours, like most lidar consumers) loses whatever arrives before it has matched the
  replay's publisher, and that moment cannot be seen from the publisher's side. Once one answer came back both
  directions are matched and every later cloud is sent once; a paced replay's recorded pace starts there.

The DDS environment is the caller's (a robot's replay must reach other machines); ``--loopback`` restricts
it to this machine (tests and the demo use it).

Layout: the ROS-free core (:class:`Pacer`, :func:`schedule`, :class:`AnswerTracker`, :class:`ReplayStats`,
:class:`Recorder`, :func:`bag_frames`) is plain Python on top of :mod:`fastpillars_ros.bags`;
:func:`replay` is the thin rclpy part.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastpillars_ros.bags import (
    DETECTION3DARRAY,
    MARKERARRAY,
    POINTCLOUD2,
    bag_time_range,
    header_from_cdr,
    iter_raw,
    open_writer,
)
from fastpillars_ros.message_codec import NS_PER_S as NS
from fastpillars_ros.message_codec import decode_detections, ns_to_stamp
from fastpillars_ros.ros.diagnostics import percentile

__all__ = [
    "AnswerTracker",
    "BagFrame",
    "Pacer",
    "Recorder",
    "ReplayOptions",
    "ReplayStats",
    "add_arguments",
    "bag_frames",
    "replay",
    "run",
    "schedule",
]

# Wait after both directions matched, before the first cloud (see replay(): discovery is not symmetric).
MATCH_SETTLE_S = 0.3
# The first cloud is published again after this long without an answer (see the module docstring): well above a
# detector's first answer once it is ready, short against the timeout.
FIRST_RESEND_S = 1.0


# ==========================================================================================================
# ROS-free core
# ==========================================================================================================

@dataclass
class BagFrame:
    """A cloud to send: its position (loop, index in the played window), bag time, header stamp, CDR bytes."""

    loop: int
    index: int
    bag_time_ns: int
    stamp_ns: int
    frame_id: str
    raw: bytes


def time_window(path: str | Path, start_s: float = 0.0, duration_s: float | None = None) -> tuple[int, int | None]:
    """Bag-time bounds ``(start, stop)`` in ns for ``--start``/``--duration`` (seconds from the bag's start)."""
    if start_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"--start must be >= 0 and --duration > 0, got {start_s} and {duration_s}")
    first, _end = bag_time_range(path)
    lo = first + round(start_s * NS)
    hi = None if duration_s is None else lo + round(duration_s * NS)
    return lo, hi


def bag_frames(path: str | Path, topic: str | None = None, *, start_s: float = 0.0, duration_s: float | None = None,
               loops: int | None = 1) -> Iterator[BagFrame]:
    """The clouds to play, read lazily: the window ``[start, start + duration)`` of bag time, ``loops``
    times (None: forever). Raises ``ValueError`` when the window holds no cloud."""
    lo, hi = time_window(path, start_s, duration_s)
    loop = 0
    while loops is None or loop < loops:
        count = 0
        for _topic, t, raw in iter_raw(path, topic, POINTCLOUD2, start_ns=lo, stop_ns=hi):
            stamp, frame_id = header_from_cdr(raw)
            yield BagFrame(loop, count, t, stamp, frame_id, raw)
            count += 1
        if count == 0:
            raise ValueError(f"no PointCloud2 message in {path} between {start_s} s and "
                             f"{'the end' if duration_s is None else f'{start_s + duration_s} s'}")
        loop += 1


class Pacer:
    """When each bag message is due on the wall clock.

    ``rate`` scales the recorded pace (2 = twice as fast); ``None`` means no pacing (``--max-rate``). Bag
    time restarts at every loop: loop ``k`` is shifted by ``k`` loop spans, where a span is the window's
    first-to-last duration plus one typical message period, so the loop seam looks like any other gap.
    """

    def __init__(self, rate: float | None = 1.0) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate}")
        self.rate = rate
        self._first: int | None = None
        self._last: dict[int, int] = {}
        self._gaps: list[int] = []
        self._span: int | None = None

    def bag_offset_ns(self, loop: int, bag_time_ns: int) -> int:
        """Elapsed bag time of a message since the first one, counting loops."""
        if self._first is None:
            self._first = bag_time_ns
        if loop == 0:
            prev = self._last.get(0)
            if prev is not None and bag_time_ns > prev:
                self._gaps.append(bag_time_ns - prev)
            self._last[0] = bag_time_ns if prev is None else max(prev, bag_time_ns)
            return bag_time_ns - self._first
        if self._span is None:
            gap = int(np.median(self._gaps)) if self._gaps else 0
            self._span = self._last.get(0, self._first) - self._first + gap
        return loop * self._span + bag_time_ns - self._first

    def due_s(self, loop: int, bag_time_ns: int) -> float:
        """Seconds after the first message's send time at which this message is due (0 without pacing)."""
        offset = self.bag_offset_ns(loop, bag_time_ns)
        return 0.0 if self.rate is None else offset / NS / self.rate


def schedule(bag_times_ns: Sequence[int], rate: float | None = 1.0, loops: int = 1) -> list[tuple[int, int, float]]:
    """``(loop, index, due seconds)`` of every message of one played window, ``loops`` times (see :class:`Pacer`)."""
    pacer = Pacer(rate)
    return [(loop, i, pacer.due_s(loop, t)) for loop in range(loops) for i, t in enumerate(bag_times_ns)]


@dataclass
class ReplayStats:
    """What a replay saw. Latencies in milliseconds, in the order the answers arrived."""

    sent: int = 0
    answered: int = 0
    dropped: int = 0
    late: int = 0
    unmatched: int = 0
    #: Copies of the first cloud published again while it had no answer, and the extra answers they drew.
    resent: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    detections: int = 0
    wall_s: float = 0.0
    send_s: float = 0.0
    bag_s: float = 0.0
    clock_published: int = 0
    recorded: dict[str, int] = field(default_factory=dict)
    #: With ``--eval``: the evaluation of the answers against the bag's ``/ground_truth`` (an EvalResult).
    evaluation: Any = None

    @property
    def answered_fps(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def sent_fps(self) -> float:
        """Send rate between the first and the last cloud (the wait for the last answers left out)."""
        if self.sent < 2 or self.send_s <= 0:
            return float("nan")
        return (self.sent - 1) / self.send_s

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | None:
            return None if not math.isfinite(v) else round(v, 3)

        return {
            "sent": self.sent, "answered": self.answered, "dropped": self.dropped, "late": self.late,
            "unmatched": self.unmatched, "resent": self.resent, "duplicates": self.duplicates,
            "detections": self.detections, "wall_s": num(self.wall_s),
            "send_s": num(self.send_s), "bag_s": num(self.bag_s), "sent_fps": num(self.sent_fps),
            "answered_fps": num(self.answered_fps),
            "latency_ms": {name: num(self.latency(q)) for name, q in (("p50", 50), ("p90", 90), ("p95", 95),
                                                                      ("p99", 99), ("max", 100))}
            | {"mean": num(float(np.mean(self.latencies_ms)) if self.latencies_ms else float("nan"))},
            "clock_published": self.clock_published, "recorded": dict(self.recorded),
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(curves=False),
        }

    def format(self) -> str:
        lines = [
            f"frames sent {self.sent}, answered {self.answered}, dropped {self.dropped} (no answer in time), "
            f"late answers {self.late}, unmatched answers {self.unmatched}",
            f"wall {self.wall_s:.2f} s for {self.bag_s:.2f} s of bag time; sent {self.sent_fps:.2f} frames/s, "
            f"answered {self.answered_fps:.2f} frames/s (over the whole run); {self.detections} detections",
        ]
        if self.resent:
            lines.append(f"first cloud published {self.resent} more time(s) before the detector answered it "
                         f"({self.duplicates} duplicate answer(s))")
        if self.latencies_ms:
            lines.append("latency ms: " + ", ".join(f"{n} {self.latency(q):.1f}" for n, q in
                                                    (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99),
                                                     ("max", 100))))
        else:
            lines.append("latency ms: no answers")
        if self.clock_published:
            lines.append(f"/clock messages published: {self.clock_published}")
        if self.recorded:
            lines.append("recorded: " + ", ".join(f"{t} {n}" for t, n in self.recorded.items()))
        if self.evaluation is not None:
            lines.append("answers vs the bag's ground truth (frames without an answer count as misses):")
            lines.append(self.evaluation.format_table())
        return "\n".join(lines)


class AnswerTracker:
    """Matches answers to sent frames by header stamp; thread-safe.

    A frame is *answered* when an answer with its stamp arrives within ``timeout_s`` of sending, *dropped*
    when the timeout passes first (an answer after that counts as *late*). Answers whose stamp was never
    sent (or was already answered) are *unmatched*, except the answers to copies published again with
    :meth:`resent` (*duplicates*). When the same stamp is in flight more than once (a looped bag), the oldest
    send takes the answer.
    """

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.stats = ReplayStats()
        self._pending: dict[int, collections.deque[float]] = {}
        self._expired: collections.Counter[int] = collections.Counter()
        self._lock = threading.Condition()
        self._last_seq_done = -1
        self._seq = -1
        self._seq_of: dict[int, collections.deque[int]] = {}
        self._copies: collections.Counter[int] = collections.Counter()
        self.sent_stamps: set[int] = set()

    def sent(self, stamp_ns: int, t: float) -> int:
        """Record a send at monotonic time ``t``; returns its sequence number."""
        with self._lock:
            self._seq += 1
            self.sent_stamps.add(stamp_ns)
            self._pending.setdefault(stamp_ns, collections.deque()).append(t)
            self._seq_of.setdefault(stamp_ns, collections.deque()).append(self._seq)
            self.stats.sent += 1
            return self._seq

    def resent(self, seq: int, t: float) -> bool:
        """Record that frame ``seq``, still waiting, was published again at monotonic time ``t``: its latency
        and timeout count from this copy, and one more answer with its stamp is a duplicate, not unmatched.
        Returns False (and records nothing) when ``seq`` is no longer waiting."""
        with self._lock:
            for stamp, seqs in self._seq_of.items():
                if seq in seqs:
                    self._pending[stamp][seqs.index(seq)] = t
                    self._copies[stamp] += 1
                    self.stats.resent += 1
                    return True
            return False

    def answered(self, stamp_ns: int, t: float, num_detections: int = 0) -> str:
        """Record an answer at monotonic time ``t``; returns "answered", "late", "duplicate" or "unmatched"."""
        with self._lock:
            self._expire_locked(t)
            queue = self._pending.get(stamp_ns)
            if queue:
                t_sent = queue.popleft()
                seq = self._seq_of[stamp_ns].popleft()
                if not queue:
                    del self._pending[stamp_ns], self._seq_of[stamp_ns]
                self.stats.answered += 1
                self.stats.detections += int(num_detections)
                self.stats.latencies_ms.append((t - t_sent) * 1e3)
                self._done_locked(seq)
                return "answered"
            if self._expired[stamp_ns] > 0:
                self._expired[stamp_ns] -= 1
                self.stats.late += 1
                return "late"
            if self._copies[stamp_ns] > 0:
                self._copies[stamp_ns] -= 1
                self.stats.duplicates += 1
                return "duplicate"
            self.stats.unmatched += 1
            return "unmatched"

    def _done_locked(self, seq: int) -> None:
        self._last_seq_done = max(self._last_seq_done, seq)
        self._lock.notify_all()

    def _expire_locked(self, now: float) -> None:
        for stamp in list(self._pending):
            queue, seqs = self._pending[stamp], self._seq_of[stamp]
            while queue and now - queue[0] > self.timeout_s:
                queue.popleft()
                self._done_locked(seqs.popleft())
                self._expired[stamp] += 1
                self.stats.dropped += 1
            if not queue:
                del self._pending[stamp], self._seq_of[stamp]

    def expire(self, now: float) -> None:
        """Declare frames older than the timeout dropped."""
        with self._lock:
            self._expire_locked(now)

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._pending.values())

    def wait_settled(self, seq: int, timeout: float, clock: Any = time.monotonic) -> bool:
        """Block until frame ``seq`` is answered or dropped, or ``timeout`` seconds pass."""
        deadline = clock() + timeout
        with self._lock:
            while True:
                self._expire_locked(clock())
                if all(seq not in s for s in self._seq_of.values()):
                    return True
                left = deadline - clock()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))

    def finish(self, now: float) -> ReplayStats:
        """Count every frame still waiting as dropped and return the stats."""
        with self._lock:
            for queue in self._pending.values():
                for _ in queue:
                    self.stats.dropped += 1
            self._pending.clear()
            self._seq_of.clear()
            self._lock.notify_all()
            return self.stats


class Recorder:
    """Writes received messages (CDR bytes) into a new mcap bag with their receive time; thread-safe.

    ``topics``: ``(topic, message type)`` pairs declared up front (building a connection's type description
    takes a few hundred ms the first time, which must not delay the first answers).
    """

    def __init__(self, path: str | Path, topics: Sequence[tuple[str, str]] = (), compress: bool = False) -> None:
        self.path = Path(path)
        self._cm = open_writer(self.path, compress=compress)
        self._bag = self._cm.__enter__()
        self._lock = threading.Lock()
        self._closed = False
        for topic, msgtype in topics:
            self._bag.connection(topic, msgtype)

    def write(self, topic: str, msgtype: str, t_ns: int, raw: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._bag.write(topic, msgtype, t_ns, raw)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._bag.counts)

    def close(self) -> dict[str, int]:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._cm.__exit__(None, None, None)
        return self.counts


def count_detections_cdr(raw: bytes) -> int:
    """Number of detections in a CDR Detection3DArray (the sequence length right after the header)."""
    import struct

    buf = memoryview(raw)
    endian = "<" if buf[1] & 1 else ">"
    (length,) = struct.unpack_from(endian + "I", buf, 12)
    offset = 16 + length  # end of frame_id (relative to the encapsulation start)
    offset = 4 + ((offset - 4 + 3) // 4) * 4  # CDR alignment of the uint32 is relative to the payload
    (count,) = struct.unpack_from(endian + "I", buf, offset)
    return int(count)


def evaluate_answers(truth: Sequence[Any], answers: dict[int, bytes], class_names: Sequence[str] | None = None,
                     max_range: float | None = None) -> Any:
    """AP of the answers (CDR Detection3DArray by header stamp) against ground-truth records
    (:class:`~fastpillars_ros.bags.DetectionRecord`, one per played frame); a frame without an answer
    has no detections. Class names default to car, pedestrian, cyclist plus any other name seen."""
    from fastpillars_ros.bags import typestore
    from fastpillars_ros.datasets.kitti import DEFAULT_CLASSES
    from fastpillars_ros.evaluation import FrameBoxes, evaluate

    decoded = {stamp: decode_detections(typestore().deserialize_cdr(raw, DETECTION3DARRAY))
               for stamp, raw in answers.items()}
    names = list(class_names) if class_names is not None else list(DEFAULT_CLASSES)
    if class_names is None:
        seen = [n for t in truth for n in t.names] + [n for _b, _s, ns in decoded.values() for n in ns]
        names += sorted({n for n in seen if n and n not in names})
    index = {n: i for i, n in enumerate(names)}

    def keep(ns: Sequence[str]) -> np.ndarray:
        return np.array([n in index for n in ns], dtype=bool)

    preds, gts = [], []
    for t in truth:
        gk = keep(t.names)
        gts.append(FrameBoxes(t.boxes[gk], np.array([index[n] for n in t.names if n in index], dtype=np.int64)))
        boxes, scores, ns = decoded.get(t.stamp_ns, (np.zeros((0, 7)), np.zeros(0), []))
        dk = keep(ns)
        preds.append(FrameBoxes(boxes[dk], np.array([index[n] for n in ns if n in index], dtype=np.int64),
                                scores[dk]))
    return evaluate(preds, gts, names, max_range=max_range)


# ==========================================================================================================
# rclpy part
# ==========================================================================================================

@dataclass
class ReplayOptions:
    """Options of :func:`replay` (the command line's, see :func:`add_arguments`)."""

    bag: Path
    topic: str | None = None
    publish_topic: str | None = None
    rate: float = 1.0
    max_rate: bool = False
    loops: int | None = 1
    start_s: float = 0.0
    duration_s: float | None = None
    clock: bool = False
    clock_hz: float = 50.0
    record: Path | None = None
    record_markers: bool = False
    detections_topic: str = "detections"
    markers_topic: str = "detection_markers"
    timeout_s: float = 5.0
    wait_s: float = 30.0
    loopback: bool = False
    best_effort: bool = False
    quiet: bool = False
    max_frames: int | None = None
    evaluate: bool = False
    #: Set it (e.g. from a signal handler) to end the replay early; the stats and the record stay valid.
    stop: threading.Event = field(default_factory=threading.Event)


def _log(opts: ReplayOptions, text: str) -> None:
    if not opts.quiet:
        print(f"[replay] {text}", file=sys.stderr, flush=True)


def replay(opts: ReplayOptions) -> ReplayStats:
    """Play ``opts.bag`` to the detector and return what came back (see the module docstring)."""
    if opts.loopback:
        from fastpillars_ros.ros.rosenv import apply_loopback_environment

        apply_loopback_environment()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection3DArray
    from visualization_msgs.msg import MarkerArray

    frames = bag_frames(opts.bag, opts.topic, start_s=opts.start_s, duration_s=opts.duration_s, loops=opts.loops)
    first = next(frames)  # validates the bag, topic and window before any ROS set-up
    tracker = AnswerTracker(opts.timeout_s)
    answers: dict[int, bytes] | None = {} if opts.evaluate else None
    truth = None
    if opts.evaluate:
        from fastpillars_ros.bags import GROUND_TRUTH_TOPIC, read_detections, topic_types

        if topic_types(opts.bag).get(GROUND_TRUTH_TOPIC) != DETECTION3DARRAY:
            raise ValueError(f"--eval needs ground truth on {GROUND_TRUTH_TOPIC} in {opts.bag} (see make-bag)")
        truth = read_detections(opts.bag, GROUND_TRUTH_TOPIC)
    recorder = None
    if opts.record:
        record_topics = [(_absolute(opts.detections_topic), DETECTION3DARRAY)]
        if opts.record_markers:
            record_topics.append((_absolute(opts.markers_topic), MARKERARRAY))
        recorder = Recorder(opts.record, record_topics)
    pacer = Pacer(None if opts.max_rate else opts.rate)
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    # Signals are the caller's business (run() sets opts.stop): a context shut down by rclpy's own handler
    # would make the next publish raise.
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = thread = None
    t0: float | None = None
    try:
        node = rclpy.create_node("fastpillars_replay", context=context)
        out_topic = opts.publish_topic or opts.topic or _bag_cloud_topic(opts.bag)
        cloud_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
        pub = node.create_publisher(PointCloud2, out_topic, cloud_qos)
        # /clock as time sources subscribe it (rclpy's TimeSource, rclcpp's ClockQoS: best effort, the latest
        # only): a reliable writer would hold every later time back behind one lost sample until its next heartbeat.
        clock_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                               durability=DurabilityPolicy.VOLATILE)
        clock_pub = node.create_publisher(Clock, "/clock", clock_qos) if opts.clock else None

        def on_answer(raw: bytes) -> None:
            t = time.monotonic()
            t_ns = time.time_ns()
            try:
                stamp, _frame = header_from_cdr(raw)
                n = count_detections_cdr(raw)
            except (ValueError, IndexError):
                return
            if tracker.answered(stamp, t, n) == "answered" and answers is not None:
                answers.setdefault(stamp, bytes(raw))
            if recorder is not None:
                recorder.write(_absolute(opts.detections_topic), DETECTION3DARRAY, t_ns, raw)

        def on_markers(raw: bytes) -> None:
            if recorder is not None:
                recorder.write(_absolute(opts.markers_topic), MARKERARRAY, time.time_ns(), raw)

        answer_qos = _answer_qos(node, opts, QoSProfile, HistoryPolicy, ReliabilityPolicy, DurabilityPolicy)
        answer_sub = node.create_subscription(Detection3DArray, opts.detections_topic, on_answer, answer_qos,
                                              raw=True)
        waited_subs = [answer_sub]
        if recorder is not None and opts.record_markers:
            waited_subs.append(node.create_subscription(MarkerArray, opts.markers_topic, on_markers, answer_qos,
                                                        raw=True))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()

        # Both directions must be matched before the first cloud, or the first answers are lost or late.
        deadline = time.monotonic() + opts.wait_s
        while ((pub.get_subscription_count() == 0 or any(s.get_publisher_count() == 0 for s in waited_subs))
               and time.monotonic() < deadline and not opts.stop.is_set()):
            time.sleep(0.05)
        if answer_sub.get_publisher_count() == 0:
            _log(opts, f"nobody publishes {node.resolve_topic_name(opts.detections_topic)} yet")
        else:
            # Our reader seeing the detector's writer does not mean that writer has seen our reader yet: each
            # side handles the other's endpoint announcement on its own, and a volatile writer sends nothing
            # to a reader it has not matched, so an early first answer would be lost.
            time.sleep(MATCH_SETTLE_S)
        if pub.get_subscription_count() == 0:
            _log(opts, f"no subscriber on {node.resolve_topic_name(out_topic)} after {opts.wait_s:g} s; "
                       "playing anyway")
        else:
            _log(opts, f"playing {opts.bag} -> {node.resolve_topic_name(out_topic)} "
                       f"({'max rate' if opts.max_rate else f'rate {opts.rate:g}'}), answers on "
                       f"{node.resolve_topic_name(opts.detections_topic)}")

        t0 = time.monotonic()
        _play(opts, first, frames, pub, clock_pub, Clock, tracker, pacer, t0)
    except KeyboardInterrupt:
        _log(opts, "interrupted")
    finally:
        now = time.monotonic()
        if t0 is not None:
            tracker.stats.wall_s = now - t0
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if thread is not None:
            thread.join(timeout=2.0)
        if node is not None:
            node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
        tracker.finish(now)
        if recorder is not None:
            tracker.stats.recorded = recorder.close()
    if truth is not None and answers is not None:
        tracker.stats.evaluation = evaluate_answers([t for t in truth if t.stamp_ns in tracker.sent_stamps],
                                                    answers)
    return tracker.stats


def _absolute(topic: str) -> str:
    """The recorded name of a topic of the replay node (which lives in the root namespace)."""
    return topic if topic.startswith("/") else "/" + topic


def _bag_cloud_topic(bag: Path) -> str:
    for _topic, _t, _raw in iter_raw(bag, None, POINTCLOUD2):
        return _topic
    raise ValueError(f"no PointCloud2 in {bag}")


def _answer_qos(node: Any, opts: ReplayOptions, QoSProfile: Any, HistoryPolicy: Any, ReliabilityPolicy: Any,
                DurabilityPolicy: Any) -> Any:
    """Reliable unless asked otherwise or the detector's publisher is best effort (found within a second)."""
    best_effort = opts.best_effort
    if not best_effort:
        deadline = time.monotonic() + min(1.0, opts.wait_s)
        while time.monotonic() < deadline:
            infos = node.get_publishers_info_by_topic(node.resolve_topic_name(opts.detections_topic))
            if infos:
                best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos)
                break
            time.sleep(0.05)
    reliability = ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def _play(opts: ReplayOptions, first: BagFrame, frames: Iterator[BagFrame], pub: Any, clock_pub: Any, Clock: Any,
          tracker: AnswerTracker, pacer: Pacer, t0: float) -> ReplayStats:
    from builtin_interfaces.msg import Time

    stats = tracker.stats
    last_clock = -math.inf
    last_clock_ns: int | None = None
    clock_period = 1.0 / opts.clock_hz if opts.clock_hz > 0 else math.inf

    def publish_clock(bag_ns: int) -> None:
        nonlocal last_clock, last_clock_ns
        sec, nanosec = ns_to_stamp(bag_ns)
        clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))
        stats.clock_published += 1
        last_clock, last_clock_ns = time.monotonic(), bag_ns

    def wait_until(due: float, frame: BagFrame) -> None:
        # Sleep until the frame is due; meanwhile /clock runs up to the frame's bag time at the scaled pace.
        while not opts.stop.is_set():
            now = time.monotonic()
            tracker.expire(now)
            if now >= due:
                return
            if clock_pub is not None and now - last_clock >= clock_period:
                publish_clock(frame.bag_time_ns - round((due - now) * opts.rate * NS))
            step = clock_period if clock_pub is not None else 0.05
            time.sleep(max(0.0, min(due - now, step, 0.05)))

    def resend_until_answered(frame: BagFrame, seq: int, t_first: float) -> None:
        # The first cloud again every FIRST_RESEND_S until it is answered (see the module docstring).
        while not opts.stop.is_set() and not tracker.wait_settled(seq, FIRST_RESEND_S):
            now = time.monotonic()
            if now - t_first >= opts.timeout_s or not tracker.resent(seq, now):
                break
            if stats.resent == 1:
                _log(opts, f"no answer to the first cloud after {FIRST_RESEND_S:g} s (the detector may not have "
                           "matched this publisher yet); publishing it again until it is answered")
            if clock_pub is not None:
                publish_clock(frame.bag_time_ns)
            pub.publish(frame.raw)

    frame: BagFrame | None = first
    prev_seq: int | None = None
    while frame is not None and not opts.stop.is_set():
        if opts.max_frames is not None and stats.sent >= opts.max_frames:
            break
        due = t0 + pacer.due_s(frame.loop, frame.bag_time_ns)
        if opts.max_rate:
            wait_end = time.monotonic() + opts.timeout_s + 1.0
            while (prev_seq is not None and not opts.stop.is_set() and time.monotonic() < wait_end
                   and not tracker.wait_settled(prev_seq, 0.1)):
                pass
        else:
            wait_until(due, frame)
        if opts.stop.is_set():
            break
        if clock_pub is not None:
            publish_clock(frame.bag_time_ns)
        t_send = time.monotonic()
        prev_seq = tracker.sent(frame.stamp_ns, t_send)
        pub.publish(frame.raw)
        if stats.sent == 1:
            resend_until_answered(frame, prev_seq, t_send)
            # The recorded pace starts once the first cloud is answered: the start-up handshake is not part of it.
            offset = due - t0
            t0 = time.monotonic() - offset
            t_send = t0 + offset
        stats.send_s = t_send - t0
        stats.bag_s = pacer.bag_offset_ns(frame.loop, frame.bag_time_ns) / NS
        frame = next(frames, None)
    # Wait for the answers still in flight (each has timeout_s from its send).
    deadline = time.monotonic() + opts.timeout_s + 0.1
    while tracker.outstanding() and time.monotonic() < deadline and not opts.stop.is_set():
        tracker.expire(time.monotonic())
        time.sleep(0.01)
    if last_clock_ns is not None:
        publish_clock(last_clock_ns)  # best effort: once more, in case the last time was lost
    return stats


# ==========================================================================================================
# command line
# ==========================================================================================================

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 bag: directory, .mcap or .db3")
    parser.add_argument("--topic", default=None, help="PointCloud2 topic in the bag (default: the only one)")
    parser.add_argument("--publish-topic", default=None, help="publish the clouds here (default: the bag's topic)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=1.0, help="pace factor of the recorded timing (default 1)")
    pace.add_argument("--max-rate", action="store_true",
                      help="send each cloud once the previous one was answered or timed out (back-pressure)")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--loop", action="store_true", help="play the window again and again until Ctrl-C")
    loop.add_argument("--loops", type=int, default=1, help="play the window N times (default 1)")
    parser.add_argument("--start", type=float, default=0.0, help="skip this many seconds of bag time")
    parser.add_argument("--duration", type=float, default=None, help="play this many seconds of bag time")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after sending N clouds")
    parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    parser.add_argument("--clock-hz", type=float, default=50.0, help="/clock rate between clouds (default 50)")
    parser.add_argument("--record", type=Path, default=None, help="write the answers into this new bag (.mcap file "
                        "or directory name)")
    parser.add_argument("--record-markers", action="store_true", help="also record the MarkerArray answers")
    parser.add_argument("--detections-topic", default="detections", help="Detection3DArray topic (default detections)")
    parser.add_argument("--markers-topic", default="detection_markers", help="MarkerArray topic")
    parser.add_argument("--timeout-s", type=float, default=5.0,
                        help="a cloud without an answer after this long counts as dropped (default 5)")
    parser.add_argument("--wait-s", type=float, default=30.0, help="wait this long for a subscriber (default 30)")
    parser.add_argument("--best-effort", action="store_true", help="subscribe the answers best effort")
    parser.add_argument("--loopback", action="store_true", help="keep DDS on this machine (tests, demo)")
    parser.add_argument("--eval", action="store_true",
                        help="AP of the answers against the bag's /ground_truth (frames without answer = misses)")
    parser.add_argument("--stats-json", type=Path, default=None, help="also write the statistics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(
        bag=args.bag, topic=args.topic, publish_topic=args.publish_topic, rate=args.rate, max_rate=args.max_rate,
        loops=None if args.loop else args.loops, start_s=args.start, duration_s=args.duration, clock=args.clock,
        clock_hz=args.clock_hz, record=args.record, record_markers=args.record_markers,
        detections_topic=args.detections_topic, markers_topic=args.markers_topic, timeout_s=args.timeout_s,
        wait_s=args.wait_s, loopback=args.loopback, best_effort=args.best_effort, quiet=args.quiet,
        max_frames=args.max_frames, evaluate=args.eval)


def run(args: argparse.Namespace) -> int:
    if args.loops < 1 or args.timeout_s <= 0 or (not args.max_rate and args.rate <= 0):
        print("replay: --loops must be >= 1, --timeout-s and --rate > 0", file=sys.stderr)
        return 2
    if args.record is not None and args.record.exists():
        print(f"replay: {args.record} exists already", file=sys.stderr)
        return 2
    opts = options_from_args(args)
    previous = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if opts.stop.is_set():  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        _log(opts, f"{signal.Signals(signum).name}: stopping (answers in flight are counted as dropped)")
        opts.stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        stats = replay(opts)
    except (FileNotFoundError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(stats.format(), flush=True)
    if args.stats_json is not None:
        args.stats_json.write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastpillars_ros.tools.replay``, the same as ``fastpillars-ros replay``."""
    from fastpillars_ros.cli import main as cli_main

    return cli_main(["replay", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
