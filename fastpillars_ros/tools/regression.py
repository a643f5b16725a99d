"""Replay regression: compare the detections a detector sent during a replay with golden detections.

Golden detections come from the offline path (:func:`golden_from_bag`: the bag's clouds through the node's
own input conversion, :class:`~fastpillars_ros.ros.frame_input.FrameInput`, and a
:class:`~fastpillars_ros.detector.Detector` built from the same node parameters), stored as JSON
(:func:`save_detections`). :func:`compare` then checks, frame by frame (matched by header stamp):

* every golden box at or above the score threshold has a received box of the same class with BEV IoU
  >= ``iou_threshold`` (0.9), one received box per golden box (greedy, highest golden score first);
* a golden box whose only overlapping received box has another class is reported as a *class change*;
* no received box at or above the score threshold is left over (*extra*);
* every golden frame was received.

The result (:class:`RegressionReport`) is truthy when everything passed and prints as a readable report
naming frame, class, box and score of every problem.

Files: the detections format of :mod:`fastpillars_ros.detections_file` (its names are re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastpillars_ros.detections_file import FORMAT, FrameDetections, load_detections, save_detections
from fastpillars_ros.message_codec import stamp_to_ns

__all__ = [
    "FORMAT",
    "FrameDetections",
    "RegressionReport",
    "compare",
    "detections_from_bag",
    "golden_from_bag",
    "load_detections",
    "offline_path",
    "save_detections",
]

def detections_from_bag(path: str | os.PathLike, topic: str | None = None) -> list[FrameDetections]:
    """The Detection3DArray messages of a bag (e.g. one recorded by ``replay --record``) as frames, in
    stamp order; ``topic`` None picks the only Detection3DArray topic other than ``/ground_truth``."""
    from fastpillars_ros import bags

    if topic is None:
        types = bags.topic_types(path)
        topics = [t for t, m in types.items() if m == bags.DETECTION3DARRAY and t != bags.GROUND_TRUTH_TOPIC]
        if len(topics) != 1:
            raise ValueError(f"{path}: expected one Detection3DArray topic besides /ground_truth, found {topics}")
        topic = topics[0]
    records = sorted(bags.read_detections(path, topic), key=lambda r: r.stamp_ns)
    return [FrameDetections(i, r.stamp_ns, r.boxes, r.scores, r.names, r.frame_id) for i, r in enumerate(records)]


# ---- golden detections from the offline path ---------------------------------------------------------------

def _node_params(params_file: str | os.PathLike | None, overrides: Mapping[str, Any] | None) -> Any:
    import yaml

    from fastpillars_ros.ros import node_params
    from fastpillars_ros.tools.launch import share_file

    path = Path(params_file) if params_file is not None else share_file("config/fastpillars.yaml")
    tree = yaml.safe_load(Path(path).read_text()) or {}
    values = node_params.file_values(tree)
    values.update(overrides or {})
    params, _warnings = node_params.parse(values)
    return params


def offline_path(*, params_file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                 detector: Any = None) -> tuple[Any, Any, Any]:
    """What the node does with a cloud, without ROS: returns (detector, frame input, node parameters).

    The node parameters come from ``params_file`` (default: the package's ``config/fastpillars.yaml``)
    plus ``overrides`` (flat ROS names, e.g. ``{"device": "cpu"}``). ``detector`` replaces the Detector
    built from them (it needs ``detect``, ``class_names``, ``point_features`` and ``intensity_scale``).
    The :class:`~fastpillars_ros.ros.frame_input.FrameInput` carries state between frames like the node's (the
    automatic intensity scale only widens), so feed it the frames the node saw, in the same order.
    """
    from fastpillars_ros.ros.frame_input import FrameInput

    params = _node_params(params_file, overrides)
    if detector is None:
        from fastpillars_ros.config import load_model_config
        from fastpillars_ros.detector import Detector

        cfg = load_model_config(params.model)
        kwargs = params.detector_kwargs(cfg.class_names)
        detector = Detector(cfg, **{**kwargs, "warmup": False})
    return detector, FrameInput(detector.point_features, detector.intensity_scale, params), params


def golden_from_bag(bag: str | os.PathLike, *, topic: str | None = None, params_file: str | os.PathLike | None = None,
                    overrides: Mapping[str, Any] | None = None, detector: Any = None,
                    max_frames: int | None = None) -> tuple[list[FrameDetections], list[str]]:
    """Run the offline detector over every cloud of a bag, as the node would; returns (frames, class names).

    ``params_file``, ``overrides`` and ``detector`` as for :func:`offline_path`. One frame input sees all
    frames in order, like the node with ``replay --max-rate``.
    """
    from fastpillars_ros import bags
    from fastpillars_ros.ros.frame_input import FrameRejected

    detector, converter, _ = offline_path(params_file=params_file, overrides=overrides, detector=detector)
    names = list(detector.class_names)
    frames: list[FrameDetections] = []
    for i, (_topic, _t, raw) in enumerate(bags.iter_raw(bag, topic, bags.POINTCLOUD2)):
        if max_frames is not None and i >= max_frames:
            break
        msg = bags.typestore().deserialize_cdr(raw, bags.POINTCLOUD2)
        stamp = stamp_to_ns(msg.header.stamp)
        frame_id = msg.header.frame_id  # offline there is no tf: detections stay in the cloud frame
        try:
            points = converter.convert(msg).points
        except FrameRejected:
            frames.append(FrameDetections(i, stamp, np.zeros((0, 7)), np.zeros(0), [], frame_id))
            continue
        det = detector.detect(points)
        frames.append(FrameDetections(i, stamp, det.boxes, det.scores, [names[k] for k in det.labels], frame_id))
    return frames, names


# ---- comparison ------------------------------------------------------------------------------------------

@dataclass
class RegressionReport:
    """Outcome of :func:`compare`; truthy when nothing failed."""

    frames_compared: int = 0
    boxes_matched: int = 0
    golden_boxes: int = 0
    missing_frames: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    class_changes: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    extra_frames: list[str] = field(default_factory=list)
    min_iou: float = 1.0
    max_score_diff: float = 0.0
    iou_threshold: float = 0.9
    score_threshold: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing_frames or self.missing or self.class_changes or self.extra)

    def __bool__(self) -> bool:
        return self.ok

    def format(self, limit: int = 20) -> str:
        head = (f"replay regression {'PASSED' if self.ok else 'FAILED'}: {self.frames_compared} frames, "
                f"{self.boxes_matched}/{self.golden_boxes} golden boxes matched (BEV IoU >= {self.iou_threshold:g}, "
                f"same class, score >= {self.score_threshold:g})")
        lines = [head]
        if self.boxes_matched:
            lines.append(f"  matched boxes: lowest IoU {self.min_iou:.4f}, largest score difference "
                         f"{self.max_score_diff:.4f}")
        for title, items in (("frames without an answer", self.missing_frames), ("missing boxes", self.missing),
                             ("class changes", self.class_changes), ("extra boxes", self.extra),
                             ("frames not in the golden file (not a failure)", self.extra_frames)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines += [f"    {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)

    __str__ = format


def _box_text(box: np.ndarray) -> str:
    x, y, z, length, width, height, yaw = (float(v) for v in box[:7])
    return f"at ({x:.2f}, {y:.2f}, {z:.2f}) size {length:.2f}x{width:.2f}x{height:.2f} yaw {yaw:.2f}"


def compare(received: Sequence[FrameDetections], golden: Sequence[FrameDetections], *,
            iou_threshold: float = 0.9, score_threshold: float = 0.0) -> RegressionReport:
    """Compare received detections with golden ones (see the module docstring); frames match by
    :attr:`FrameDetections.key` (header stamp, or dataset sample name)."""
    from fastpillars_ros.ops.iou import rotated_iou_bev

    report = RegressionReport(iou_threshold=iou_threshold, score_threshold=score_threshold)
    by_key: dict[tuple[str, int], FrameDetections] = {}
    for f in received:
        by_key.setdefault(f.key, f)
    golden_keys = {g.key for g in golden}
    report.extra_frames = [f.describe() for f in received if f.key not in golden_keys]
    for g in golden:
        where = g.describe()
        gk = np.flatnonzero(g.scores >= score_threshold)
        gk = gk[np.argsort(-g.scores[gk], kind="stable")]
        report.golden_boxes += len(gk)
        r = by_key.get(g.key)
        if r is None:
            report.missing_frames.append(f"{where}: no detections received ({len(gk)} golden boxes)")
            continue
        report.frames_compared += 1
        rk = np.flatnonzero(r.scores >= score_threshold)
        # Received boxes just below the threshold may still match a golden box (score noise), but are never extra.
        candidates = np.arange(len(r.scores))
        iou = (np.asarray(rotated_iou_bev(g.boxes[gk], r.boxes[candidates]), dtype=np.float64)
               if len(gk) and len(candidates) else np.zeros((len(gk), len(candidates))))
        used = np.zeros(len(r.scores), dtype=bool)
        for row, gi in enumerate(gk):
            same = np.array([r.names[c] == g.names[gi] for c in candidates], dtype=bool)
            ok = (iou[row] >= iou_threshold) & same & ~used[candidates]
            if ok.any():
                col = int(np.argmax(np.where(ok, iou[row], -1.0)))
                c = candidates[col]
                used[c] = True
                report.boxes_matched += 1
                report.min_iou = min(report.min_iou, float(iou[row, col]))
                report.max_score_diff = max(report.max_score_diff, abs(float(r.scores[c] - g.scores[gi])))
                continue
            other = (iou[row] >= iou_threshold) & ~same & ~used[candidates]
            golden_text = f"{g.names[gi]} {g.scores[gi]:.3f} {_box_text(g.boxes[gi])}"
            if other.any():
                col = int(np.argmax(np.where(other, iou[row], -1.0)))
                c = candidates[col]
                used[c] = True
                report.class_changes.append(f"{where}: golden {golden_text} was received as {r.names[c]} "
                                            f"{r.scores[c]:.3f} (IoU {iou[row, col]:.3f})")
            else:
                best = float(np.where(same, iou[row], 0.0).max()) if iou.shape[1] else 0.0
                report.missing.append(f"{where}: golden {golden_text} not received (best same-class "
                                      f"IoU {best:.3f})" if best > 0 else f"{where}: golden {golden_text} not received")
        for c in rk:
            if not used[c]:
                report.extra.append(f"{where}: received {r.names[c]} {r.scores[c]:.3f} {_box_text(r.boxes[c])} "
                                    f"is not in the golden detections")
    if report.boxes_matched == 0:
        report.min_iou = float("nan")
    return report


# ---- commands ------------------------------------------------------------------------------------------

def _parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"expected NAME:=VALUE, got {item!r}")
        out[name.strip()] = yaml.safe_load(value)
    return out


class Golden:
    """``fastpillars-ros golden BAG --out FILE.json``: golden detections from the offline detector path."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("bag", type=Path, help="bag with the clouds (e.g. fastpillars_ros/data/sample.mcap)")
        parser.add_argument("--out", type=Path, required=True, help="golden detections JSON to write")
        parser.add_argument("--topic", default=None, help="PointCloud2 topic (default: the only one)")
        parser.add_argument("--params-file", type=Path, default=None,
                            help="node parameter file (default: the package's config/fastpillars.yaml)")
        parser.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE",
                            help="node parameter override, e.g. -p device:=cpu (repeatable)")
        parser.add_argument("--max-frames", type=int, default=None, help="only the first N clouds")

    @staticmethod
    def run(args: Any) -> int:
        import sys

        try:
            overrides = _parse_overrides(args.param)
            frames, names = golden_from_bag(args.bag, topic=args.topic, params_file=args.params_file,
                                            overrides=overrides, max_frames=args.max_frames)
        except (FileNotFoundError, ValueError) as exc:
            print(f"golden: {exc}", file=sys.stderr)
            return 1
        meta = {"bag": Path(args.bag).name, "params_file": str(args.params_file or "config/fastpillars.yaml"),
                "overrides": overrides}
        save_detections(frames, args.out, class_names=names, meta=meta)
        print(f"wrote {len(frames)} frames, {sum(len(f.names) for f in frames)} detections to {args.out}")
        return 0


def load_any(path: str | os.PathLike, topic: str | None = None) -> list[FrameDetections]:
    """Detections from a JSON detections file or a bag (see :func:`detections_from_bag`)."""
    p = Path(path)
    if p.suffix == ".json":
        return load_detections(p)
    return detections_from_bag(p, topic)


class Check:
    """``fastpillars-ros regression-check --golden G.json --received REC``: exit 0 when the replay matches."""

    @staticmethod
    def add_arguments(parser: Any) -> None:
        parser.add_argument("--golden", type=Path, required=True, help="golden detections JSON")
        parser.add_argument("--received", type=Path, required=True,
                            help="received detections: a bag recorded by 'replay --record' or a JSON file")
        parser.add_argument("--topic", default=None, help="Detection3DArray topic in the received bag")
        parser.add_argument("--iou", type=float, default=0.9, help="BEV IoU a match needs (default 0.9)")
        parser.add_argument("--score-threshold", type=float, default=0.0,
                            help="boxes below this score are neither required nor extra (default 0)")

    @staticmethod
    def run(args: Any) -> int:
        import sys

        try:
            report = compare(load_any(args.received, args.topic), load_detections(args.golden),
                             iou_threshold=args.iou, score_threshold=args.score_threshold)
        except (FileNotFoundError, ValueError) as exc:
            print(f"regression-check: {exc}", file=sys.stderr)
            return 2
        print(report.format())
        return 0 if report.ok else 1
