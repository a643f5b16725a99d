"""Multi-sweep accumulation with ego-motion compensation (ROS-free).

The official FastPillars nuScenes model reads 10 lidar sweeps at once: the current sweep plus 9 past
ones, each past sweep moved into the *current* sensor frame (ego-motion compensated) and tagged with a
``dt`` column = ``t_current - t_sweep`` in seconds (0 for the current sweep). Past sweeps also lose
their own-vehicle returns: a past-sweep point with ``x_min < x < x_max`` and ``y_min < y < y_max``
(nuScenes: ``|x| < 1 m and |y| < 1 m``) in *its own* sensor frame is dropped; the current sweep is never
filtered that way. :class:`SweepBuffer` does exactly this for a stream of clouds with known sensor
poses in a fixed frame (e.g. ``odom``); :class:`SweepInput` glues it to a pose source for the node.

Geometry. ``pose`` is the 4x4 sensor-to-fixed-frame transform (maps sensor coordinates into the fixed
frame). A past sweep goes into the current sensor frame with ``inv(T_now) @ T_past``, composed in
float64 (rigid inverse, no general matrix inverse), then applied in float32 to the past sweep's points,
which the buffer keeps in their own sensor frame (so large fixed-frame coordinates never meet float32).

Output. ``push`` returns the accumulated cloud, newest sweep first (the current sweep's rows first, in
input order, then the past sweeps from newest to oldest), with the ``dt`` column appended (or written
into an existing column, ``dt_column``). The same array type comes back as went in: numpy in, numpy
out; torch tensors in, a tensor on their device out (past sweeps stay on that device and are
transformed there); ``device="cuda"`` moves numpy input onto the GPU once, at push time.

Point cap (``max_points``), deterministic: sweeps are taken newest first, each whole while the total
stays within the cap; the first sweep that does not fit whole is subsampled evenly to the points left
(indices ``floor(k * n / m)``, k = 0..m-1, so its first point is always kept); every older sweep is
dropped. So the oldest sweeps lose points first and the current sweep is cut only when it alone
exceeds the cap. The number of points dropped is reported (:attr:`PushInfo.capped`).

Resets (frames are never silently mixed): the buffer is cleared, the reason recorded
(:attr:`SweepBuffer.last_reset_reason`, a counter per kind, :data:`RESET_KINDS`) and a warning logged
when the stamp does not advance (a bag loop, a clock jump), the stamp advances by more than
``max_time_gap_s``, the sensor moves by more than ``max_jump_m`` or turns by more than ``max_jump_rad``
between two consecutive sweeps (a relocalisation), the input changes type/device/column count, or
:meth:`SweepBuffer.reset` is called. The frame that triggered the reset is then used alone (dt 0) and
starts the new history.

History. Up to ``num_sweeps - 1`` past sweeps are kept (``max_span_s`` can also leave out sweeps with a
larger dt). After a start or a reset the output simply has fewer sweeps until the history refills
(nuScenes' info builder instead repeats the oldest available sweep; repeating points adds nothing).
:meth:`SweepBuffer.add` keeps a frame the detector will not run on, so past sweeps stay evenly spaced.

A frame without a pose follows ``on_missing_pose``: ``"skip"`` returns ``None`` (the reason is in
:attr:`SweepBuffer.last_info`; the history is kept, a long outage then resets on the time gap) or
``"single"`` resets the history and returns the cloud alone with dt 0 (it is not kept, having no pose).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastpillars_ros.message_codec import stamp_to_ns, stamp_to_seconds
from fastpillars_ros.pointcloud import even_indices

log = logging.getLogger(__name__)

#: Why the history was cleared (counter names in :meth:`SweepBuffer.status`).
RESET_KINDS = ("explicit", "time_backwards", "time_gap", "pose_jump", "no_pose", "input_changed")
#: What to do with a frame that has no pose.
POSE_FAILURE_POLICIES = ("skip", "single")
#: nuScenes' own-vehicle box of past sweeps: (x_min, x_max, y_min, y_max) in metres.
NUSCENES_EGO_BOX = (-1.0, 1.0, -1.0, 1.0)
#: Largest deviation of a pose's rotation block from orthonormal that is accepted.
_ORTHO_TOL = 1e-3


# --------------------------------------------------------------------------------------------------------
# Rigid transforms (float64)
# --------------------------------------------------------------------------------------------------------

def rigid_inverse(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform ``[R t; 0 1]``: ``[R^T, -R^T t; 0 1]`` (float64)."""
    t = np.asarray(transform, dtype=np.float64)
    out = np.eye(4)
    rt = t[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ t[:3, 3]
    return out


def rotation_angle(rotation: np.ndarray) -> float:
    """Angle (radians, 0..pi) of a 3x3 rotation, accurate for small and large angles alike."""
    r = np.asarray(rotation, dtype=np.float64)
    s = 0.5 * math.sqrt((r[2, 1] - r[1, 2]) ** 2 + (r[0, 2] - r[2, 0]) ** 2 + (r[1, 0] - r[0, 1]) ** 2)
    c = 0.5 * (r[0, 0] + r[1, 1] + r[2, 2] - 1.0)
    return math.atan2(s, c)


def check_pose(pose: Any) -> tuple[np.ndarray | None, str]:
    """``(pose as float64 (4, 4), "")`` for a usable rigid transform, else ``(None, why not)``."""
    try:
        t = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"pose is not a numeric array ({type(pose).__name__})"
    if t.shape != (4, 4):
        return None, f"pose has shape {t.shape}, expected (4, 4)"
    if not np.isfinite(t).all():
        return None, "pose has non-finite values"
    if np.abs(t[3] - (0.0, 0.0, 0.0, 1.0)).max() > 1e-9:
        return None, f"pose's last row is {t[3].tolist()}, expected [0, 0, 0, 1]"
    r = t[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > _ORTHO_TOL or np.linalg.det(r) < 0:
        return None, f"pose's rotation block is not a rotation (orthonormality error {err:.2g})"
    return t, ""


def cap_counts(counts: Sequence[int], max_points: int | None) -> list[int]:
    """Points kept per sweep (newest first) under the cap rule of the module docstring."""
    if max_points is None:
        return list(counts)
    left = int(max_points)
    kept = []
    for n in counts:
        take = min(int(n), left)
        kept.append(take)
        left -= take
    return kept


# --------------------------------------------------------------------------------------------------------
# Buffer
# --------------------------------------------------------------------------------------------------------

@dataclass
class _Sweep:
    points: Any          # in its own sensor frame, ego box removed: numpy (C, n) column-major, torch (n, C)
    count: int           # n
    stamp: float         # seconds
    pose: np.ndarray     # (4, 4) float64 sensor -> fixed frame
    ego_removed: int     # points the ego box removed from it


@dataclass
class PushInfo:
    """What one :meth:`SweepBuffer.push` did."""

    stamp: float = math.nan
    num_sweeps: int = 0                   # sweeps in the output, the current one included
    num_points: int = 0                   # rows of the output
    points_per_sweep: list[int] = field(default_factory=list)   # rows per sweep in the output, newest first
    dt_per_sweep: list[float] = field(default_factory=list)     # dt of each sweep in the output, newest first
    capped: int = 0                       # points dropped by max_points in this output
    ego_removed: int = 0                  # own-vehicle points removed from the past sweeps in this output
    expired: int = 0                      # past sweeps dropped because they are older than max_span_s
    reset: str = ""                       # reason of a reset this push caused ("" = none)
    skipped: str = ""                     # why the frame gave no output ("" = it did)


class SweepBuffer:
    """Accumulates ego-motion-compensated sweeps; see the module docstring for every rule.

    Args:
        num_sweeps: sweeps per output, the current one included (1 = pass-through with dt 0).
        max_points: cap on output rows (None = no cap).
        ego_box: ``(x_min, x_max, y_min, y_max)``: past-sweep points strictly inside, in their own
            sensor frame, are dropped (None = keep all).
        max_time_gap_s: larger stamp steps between consecutive sweeps reset the history.
        max_jump_m, max_jump_rad: larger sensor motion between consecutive sweeps resets the history.
        max_span_s: past sweeps with dt above this are left out (None = only ``num_sweeps`` limits).
        on_missing_pose: ``"skip"`` or ``"single"`` (see the module docstring).
        device: ``"cpu"`` keeps numpy input in numpy and tensors on their own device; a torch device
            (``"cuda"``, ``"cuda:1"``) makes every input a tensor on that device.
        dt_column: None appends dt as a new last column; an index writes dt into that existing column.
    """

    def __init__(self, num_sweeps: int, max_points: int | None = None,
                 ego_box: Sequence[float] | None = NUSCENES_EGO_BOX, max_time_gap_s: float = 0.5,
                 max_jump_m: float = 5.0, max_jump_rad: float = 0.5, device: Any = "cpu",
                 on_missing_pose: str = "skip", max_span_s: float | None = None, dt_column: int | None = None):
        if int(num_sweeps) < 1:
            raise ValueError(f"num_sweeps must be >= 1, got {num_sweeps}")
        if max_points is not None and int(max_points) < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        if ego_box is not None:
            ego_box = tuple(float(v) for v in ego_box)
            if len(ego_box) != 4 or not (ego_box[0] < ego_box[1] and ego_box[2] < ego_box[3]):
                raise ValueError(f"ego_box must be (x_min, x_max, y_min, y_max) with min < max, got {ego_box}")
        for name, value in (("max_time_gap_s", max_time_gap_s), ("max_jump_m", max_jump_m),
                            ("max_jump_rad", max_jump_rad)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if max_span_s is not None and not max_span_s > 0:
            raise ValueError(f"max_span_s must be > 0 or None, got {max_span_s}")
        if on_missing_pose not in POSE_FAILURE_POLICIES:
            raise ValueError(f"on_missing_pose must be one of {POSE_FAILURE_POLICIES}, got {on_missing_pose!r}")
        self.num_sweeps = int(num_sweeps)
        self.max_points = None if max_points is None else int(max_points)
        self.ego_box = ego_box
        self.max_time_gap_s = float(max_time_gap_s)
        self.max_jump_m = float(max_jump_m)
        self.max_jump_rad = float(max_jump_rad)
        self.max_span_s = None if max_span_s is None else float(max_span_s)
        self.on_missing_pose = on_missing_pose
        self.device = str(device)
        self.dt_column = dt_column
        self._lock = threading.RLock()
        self._past: deque[_Sweep] = deque(maxlen=self.num_sweeps - 1)  # newest first
        self._last: tuple[float, np.ndarray] | None = None  # (stamp, pose) of the newest kept sweep
        self._signature: tuple | None = None
        self.last_info = PushInfo()
        self.last_reset_reason = ""
        self.reset_counts = dict.fromkeys(RESET_KINDS, 0)
        self.skipped = 0
        self.last_skip_reason = ""
        self.capped_total = 0
        self.frames = 0

    # --- public -------------------------------------------------------------------------------------
    @property
    def resets(self) -> int:
        return sum(self.reset_counts.values())

    def reset(self, reason: str = "explicit reset", kind: str = "explicit") -> None:
        """Clear the history; ``reason`` is recorded (``last_reset_reason``) and logged."""
        assert kind in RESET_KINDS, kind
        with self._lock:
            held = len(self._past)
            self._past.clear()
            self._last = None
            self.reset_counts[kind] += 1
            self.last_reset_reason = f"{kind}: {reason}"
        log.warning("sweep history reset (%s; %d past sweep(s) dropped): %s", kind, held, reason)

    def push(self, points: Any, stamp_s: float, pose: Any, pose_reason: str = "") -> Any:
        """Add the current sweep; return the accumulated ``(M, C + 1)`` cloud (or ``(M, C)`` with
        ``dt_column``) in the current sensor frame, or None when a frame without a pose is skipped.

        ``points``: ``(N, C)`` with x, y, z first (numpy or torch; converted to float32).
        ``stamp_s``: the sweep's time in seconds. ``pose``: its 4x4 sensor-to-fixed-frame transform, or
        None when unknown (``pose_reason`` then says why; it is recorded).
        """
        return self._ingest(points, stamp_s, pose, pose_reason, assemble=True)

    def add(self, points: Any, stamp_s: float, pose: Any, pose_reason: str = "") -> bool:
        """Keep a sweep for later outputs without building one (same checks and resets as :meth:`push`).

        For frames the detector will not run on (superseded by a newer cloud, skipped while nobody
        listens): adding them keeps the past sweeps evenly spaced, as in training, instead of leaving
        holes. Returns whether the sweep was kept.
        """
        self._ingest(points, stamp_s, pose, pose_reason, assemble=False)
        return not self.last_info.skipped and self._last is not None and self._last[0] == float(stamp_s)

    def _ingest(self, points: Any, stamp_s: float, pose: Any, pose_reason: str, assemble: bool) -> Any:
        stamp_s = float(stamp_s)
        if not math.isfinite(stamp_s):
            raise ValueError(f"stamp_s must be finite, got {stamp_s}")
        pts, backend, dev = self._prepare(points)
        signature = (backend, dev, int(pts.shape[1]))
        with self._lock:
            self.frames += 1
            info = PushInfo(stamp=stamp_s)
            self.last_info = info
            if self._signature is not None and signature != self._signature and self._past:
                info.reset = self._reset_locked("input_changed", f"input changed from {self._signature} to "
                                                                 f"{signature} (backend, device, columns)")
            self._signature = signature
            checked = None
            if pose is not None:
                checked, why = check_pose(pose)
                if checked is None:
                    pose_reason = f"invalid pose: {why}"
            if checked is None:
                reason = pose_reason or "no pose available for this stamp"
                if self.on_missing_pose == "skip":
                    info.skipped = reason
                    self.skipped += 1
                    self.last_skip_reason = reason
                    return None
                if self._past:
                    info.reset = self._reset_locked("no_pose", f"frame at {stamp_s:.3f} s used alone: {reason}")
                self._last = None
                return self._assemble(pts, backend, dev, [], info) if assemble else None
            info.reset = self._check_continuity(stamp_s, checked) or info.reset
            info.expired = self._expire(stamp_s)
            out = None
            if assemble:
                to_now = rigid_inverse(checked)
                past = [(s, to_now @ s.pose, stamp_s - s.stamp) for s in self._past]
                out = self._assemble(pts, backend, dev, past, info)
            if self._past.maxlen:
                kept, removed = self._ego_filter(pts, backend)
                self._past.appendleft(_Sweep(kept, int(pts.shape[0]) - removed, stamp_s, checked, removed))
            self._last = (stamp_s, checked)
            return out

    def status(self) -> dict[str, Any]:
        """Numbers for diagnostics (flat, JSON-friendly)."""
        with self._lock:
            stamps = [s.stamp for s in self._past]
            info = self.last_info
            return {
                "num_sweeps": self.num_sweeps,
                "sweeps_held": len(self._past),
                "span_s": (max(stamps) - min(stamps)) if stamps else 0.0,
                "points_held": sum(s.count for s in self._past),
                "last_output_points": info.num_points,
                "last_output_sweeps": info.num_sweeps,
                "frames": self.frames,
                "resets": self.resets,
                **{f"resets_{k}": v for k, v in self.reset_counts.items()},
                "last_reset_reason": self.last_reset_reason,
                "skipped": self.skipped,
                "last_skip_reason": self.last_skip_reason,
                "capped_points_total": self.capped_total,
            }

    # --- internals ----------------------------------------------------------------------------------
    def _reset_locked(self, kind: str, reason: str) -> str:
        self.reset(reason, kind)
        return self.last_reset_reason

    def _check_continuity(self, stamp_s: float, pose: np.ndarray) -> str:
        if self._last is None or not self._past:
            return ""
        last_stamp, last_pose = self._last
        if stamp_s <= last_stamp:
            return self._reset_locked("time_backwards", f"stamp {stamp_s:.6f} s is not after the previous sweep's "
                                                        f"{last_stamp:.6f} s (bag loop or clock jump?)")
        if stamp_s - last_stamp > self.max_time_gap_s:
            return self._reset_locked("time_gap", f"{stamp_s - last_stamp:.3f} s since the previous sweep "
                                                  f"(max_time_gap_s {self.max_time_gap_s:g})")
        rel = rigid_inverse(last_pose) @ pose
        moved = float(np.linalg.norm(rel[:3, 3]))
        turned = rotation_angle(rel[:3, :3])
        if moved > self.max_jump_m or turned > self.max_jump_rad:
            return self._reset_locked(
                "pose_jump", f"sensor moved {moved:.3f} m and turned {math.degrees(turned):.2f} deg since the "
                             f"previous sweep (max_jump_m {self.max_jump_m:g}, max_jump_rad {self.max_jump_rad:g}; "
                             f"relocalisation?)")
        return ""

    def _expire(self, stamp_s: float) -> int:
        if self.max_span_s is None:
            return 0
        n = 0
        while self._past and stamp_s - self._past[-1].stamp > self.max_span_s:
            self._past.pop()
            n += 1
        return n

    def _prepare(self, points: Any) -> tuple[Any, str, str]:
        """Input as float32 ``(N, C)``: ``(array, "numpy" | "torch", device)``."""
        if isinstance(points, np.ndarray) and self.device == "cpu":
            pts = points if points.dtype == np.float32 else points.astype(np.float32)
            backend, dev = "numpy", "cpu"
        else:
            import torch

            if isinstance(points, np.ndarray):
                pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(self.device)
            elif isinstance(points, torch.Tensor):
                pts = points if self.device == "cpu" else points.to(self.device)
                pts = pts.float()
            else:
                raise TypeError(f"points must be a numpy array or a torch tensor, got {type(points).__name__}")
            backend, dev = "torch", str(pts.device)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must be (N, C) with x, y, z first (C >= 3), got shape {tuple(pts.shape)}")
        if self.dt_column is not None and not 3 <= self.dt_column < pts.shape[1]:
            raise ValueError(f"dt_column {self.dt_column} is not a feature column of {pts.shape[1]}-column points")
        return pts, backend, dev

    def _ego_filter(self, pts: Any, backend: str) -> tuple[Any, int]:
        """What a past sweep keeps: a copy of ``pts`` without the points inside the ego box; numpy
        sweeps are kept column-major ``(C, n)`` (contiguous x, y, z rows make the transform cheap)."""
        n = int(pts.shape[0])
        if backend == "numpy":
            cols = pts.T.copy()  # always a copy (a Fortran-ordered input's .T would alias the caller's data)
            if self.ego_box is None:
                return cols, 0
            x0, x1, y0, y1 = self.ego_box
            x, y = cols[0], cols[1]
            outside = (x <= x0) | (x >= x1) | (y <= y0) | (y >= y1)
            if outside.all():
                return cols, 0
            kept = cols[:, outside]
            return kept, n - kept.shape[1]
        if self.ego_box is None:
            return pts.clone(), 0
        x0, x1, y0, y1 = self.ego_box
        x, y = pts[:, 0], pts[:, 1]
        kept = pts[(x <= x0) | (x >= x1) | (y <= y0) | (y >= y1)]
        return kept, n - int(kept.shape[0])

    def _assemble(self, cur: Any, backend: str, dev: str,
                  past: list[tuple[_Sweep, np.ndarray, float]], info: PushInfo) -> Any:
        """Output rows: the current sweep, then the past ones (newest first), capped and transformed."""
        counts = [int(cur.shape[0])] + [s.count for s, _, _ in past]
        kept = cap_counts(counts, self.max_points)
        ncol = int(cur.shape[1])
        width = ncol + 1 if self.dt_column is None else ncol
        dtc = ncol if self.dt_column is None else self.dt_column
        total = sum(kept)
        info.capped = sum(counts) - total
        self.capped_total += info.capped
        used = [(s, dt, k) for (s, _, dt), k in zip(past, kept[1:], strict=True) if k > 0]
        # The current sweep always counts (even when empty); past sweeps only when they contribute rows.
        info.points_per_sweep = [kept[0]] + [k for _, _, k in used]
        info.dt_per_sweep = [0.0] + [float(dt) for _, dt, _ in used]
        info.num_sweeps = len(info.points_per_sweep)
        info.num_points = total
        info.ego_removed = sum(s.ego_removed for s, _, _ in used)
        if backend == "numpy":
            return _assemble_numpy(cur, past, counts, kept, width, dtc)
        return _assemble_torch(cur, past, counts, kept, width, dtc, dev)


def _rows(n: int, k: int) -> np.ndarray | None:
    return None if k == n else even_indices(n, k)


def _assemble_numpy(cur: np.ndarray, past: list, counts: list[int], kept: list[int], width: int, dtc: int
                    ) -> np.ndarray:
    ncol = cur.shape[1]
    out = np.empty((sum(kept), width), dtype=np.float32)
    idx = _rows(counts[0], kept[0])
    n0 = kept[0]
    out[:n0, :ncol] = cur if idx is None else cur[idx]
    out[:n0, dtc] = 0.0
    row = n0
    big = max(kept[1:], default=0)
    acc, term = np.empty(big, np.float32), np.empty(big, np.float32)
    for (sweep, rel, dt), n, k in zip(past, counts[1:], kept[1:], strict=True):
        if k == 0:
            continue
        idx = _rows(n, k)
        src = sweep.points if idx is None else sweep.points[:, idx]    # (C, k) column-major
        block = out[row:row + k]
        rot, shift = rel[:3, :3].astype(np.float32), rel[:3, 3].astype(np.float32)
        a, b = acc[:k], term[:k]
        # x'_c = r_c0 x + r_c1 y + r_c2 z + t_c on contiguous rows, one output column at a time: ~3x
        # faster than a (k, 3) @ (3, 3) matmul, which BLAS handles poorly at this shape.
        for c in range(3):
            np.multiply(src[0], rot[c, 0], out=a)
            np.multiply(src[1], rot[c, 1], out=b)
            a += b
            np.multiply(src[2], rot[c, 2], out=b)
            a += b
            a += shift[c]
            block[:, c] = a
        if ncol > 3:
            block[:, 3:ncol] = src[3:].T
        block[:, dtc] = dt
        row += k
    return out


def _assemble_torch(cur: Any, past: list, counts: list[int], kept: list[int], width: int, dtc: int, dev: str
                    ) -> Any:
    import torch

    ncol = int(cur.shape[1])
    out = torch.empty((sum(kept), width), dtype=torch.float32, device=dev)
    n0 = kept[0]
    idx = _rows(counts[0], n0)
    out[:n0, :ncol] = cur if idx is None else cur[torch.from_numpy(idx).to(dev)]
    out[:n0, dtc] = 0.0
    used = [(p, n, k) for p, n, k in zip(past, counts[1:], kept[1:], strict=True) if k > 0]
    if not used:
        return out
    # One host-to-device copy for all transforms: (S, 3, 4) float32.
    mats = torch.from_numpy(np.stack([rel[:3, :4] for (_, rel, _), _, _ in used]).astype(np.float32)).to(dev)
    row = n0
    for i, ((sweep, _, dt), n, k) in enumerate(used):
        idx = _rows(n, k)
        src = sweep.points if idx is None else sweep.points[torch.from_numpy(idx).to(dev)]
        block = out[row:row + k]
        block[:, :3] = torch.addmm(mats[i, :, 3], src[:, :3], mats[i, :, :3].T)
        if ncol > 3:
            block[:, 3:ncol] = src[:, 3:]
        block[:, dtc] = float(dt)
        row += k
    return out


# --------------------------------------------------------------------------------------------------------
# Glue for the node: header -> stamp, pose lookup, push
# --------------------------------------------------------------------------------------------------------

class SweepInput:
    """Per-frame glue the node calls: look the cloud's pose up, push, return the model input.

    ``pose_source`` is any object with ``query(stamp_s, frame_id, stamp_ns) -> (pose | None, reason)``
    (:mod:`fastpillars_ros.ros.pose_sources`). A change of the cloud's ``frame_id`` resets the history.
    """

    def __init__(self, buffer: SweepBuffer, pose_source: Any):
        self.buffer = buffer
        self.pose_source = pose_source
        self._frame_id: str | None = None

    def process(self, points: Any, header: Any) -> Any:
        """Accumulated cloud for the frame with this ``header``, or None (see ``buffer.last_info.skipped``)."""
        stamp_s, pose, reason = self._pose(header)
        return self.buffer.push(points, stamp_s, pose, pose_reason=reason)

    def add(self, points: Any, header: Any) -> bool:
        """Keep a frame the detector will not run on as a past sweep (see :meth:`SweepBuffer.add`)."""
        stamp_s, pose, reason = self._pose(header)
        return self.buffer.add(points, stamp_s, pose, pose_reason=reason)

    def _pose(self, header: Any) -> tuple[float, Any, str]:
        frame_id = str(header.frame_id)
        if self._frame_id is not None and frame_id != self._frame_id:
            self.buffer.reset(f"cloud frame changed from {self._frame_id!r} to {frame_id!r}", "input_changed")
        self._frame_id = frame_id
        stamp_s = stamp_to_seconds(header.stamp)
        stamp_ns = stamp_to_ns(header.stamp)
        pose, reason = self.pose_source.query(stamp_s, frame_id, stamp_ns)
        return stamp_s, pose, reason

    def status(self) -> dict[str, Any]:
        out = self.buffer.status()
        describe = getattr(self.pose_source, "describe", None)
        if describe is not None:
            out["pose_source"] = describe()
        return out
