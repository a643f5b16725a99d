"""The one detections file format: JSON ``fastpillars_ros.detections/1``, read and written by ``eval
--save-detections`` / ``eval --detections``, ``viz --detections``, ``golden`` and ``regression-check``.

::

    {"format": "fastpillars_ros.detections/1", "class_names": [...], "meta": {...},
     "frames": [{"index": 0, "stamp_ns": 1700000000000000000, "frame_id": "velodyne", "sample": "",
                 "boxes": [[x, y, z, l, w, h, yaw], ...], "scores": [...], "names": [...]}, ...]}

Boxes are in the package convention (:mod:`fastpillars_ros.boxes`: LiDAR/sensor frame ``frame_id``, metres,
yaw in radians). A frame is identified by its header stamp ``stamp_ns`` (frames from a bag or a node) or by
``sample``, the name of a dataset sample (a KITTI frame id such as ``"000042"``; frames of a dataset have
``stamp_ns`` 0). ``index`` is the frame's position in its source. ``sample`` is optional when reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "FrameDetections", "find_frame", "load_detections", "save_detections"]

FORMAT = "fastpillars_ros.detections/1"


@dataclass
class FrameDetections:
    """Detections of one frame: boxes (K, 7) ``[x, y, z, l, w, h, yaw]``, scores (K,), class names."""

    index: int
    stamp_ns: int
    boxes: np.ndarray
    scores: np.ndarray
    names: list[str]
    frame_id: str = ""
    sample: str = ""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.names = [str(n) for n in self.names]
        if not (len(self.boxes) == len(self.scores) == len(self.names)):
            raise ValueError(f"frame {self.index}: {len(self.boxes)} boxes, {len(self.scores)} scores and "
                             f"{len(self.names)} names differ in length")

    @property
    def key(self) -> tuple[str, int]:
        """What identifies the frame across files: (sample name, header stamp in ns)."""
        return self.sample, int(self.stamp_ns)

    def describe(self) -> str:
        """``frame 3 (stamp 1700000000100000000)`` or ``frame 3 (sample 000042)``, for reports."""
        return f"frame {self.index} ({f'sample {self.sample}' if self.sample else f'stamp {self.stamp_ns}'})"


def save_detections(frames: Sequence[FrameDetections], path: str | os.PathLike, *,
                    class_names: Sequence[str] = (), meta: Mapping[str, Any] | None = None) -> Path:
    """Write detections as JSON (see the module docstring); floats keep full precision."""
    doc = {
        "format": FORMAT,
        "class_names": list(class_names),
        "meta": dict(meta or {}),
        "frames": [{"index": int(f.index), "stamp_ns": int(f.stamp_ns), "frame_id": f.frame_id,
                    **({"sample": f.sample} if f.sample else {}),
                    "boxes": f.boxes.tolist(), "scores": f.scores.tolist(), "names": list(f.names)}
                   for f in frames],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_detections(path: str | os.PathLike) -> list[FrameDetections]:
    """Read a JSON detections file written by :func:`save_detections`."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"{path}: not a {FORMAT} file (format {found!r})")
    return [FrameDetections(int(f["index"]), int(f["stamp_ns"]), np.asarray(f["boxes"], dtype=np.float64),
                            np.asarray(f["scores"], dtype=np.float64), list(f["names"]), f.get("frame_id", ""),
                            str(f.get("sample", "")))
            for f in doc["frames"]]


def find_frame(frames: Sequence[FrameDetections], *, stamp_ns: int | None = None, sample: str | None = None,
               index: int | None = None) -> FrameDetections | None:
    """The frame with header stamp ``stamp_ns``, else the one named ``sample``, else the ``index``-th; None
    when nothing matches."""
    for f in frames:
        if stamp_ns is not None and f.stamp_ns == stamp_ns:
            return f
    for f in frames:
        if sample and f.sample == sample:
            return f
    if index is not None and 0 <= index < len(frames):
        return frames[index]
    return None
