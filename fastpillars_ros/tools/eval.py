"""``fastpillars-ros eval``: KITTI-style R40 AP (BEV and 3D) of the detector, or of stored detections, on a
KITTI-format folder (``velodyne/``, ``label_2/``, ``calib/``; real KITTI or the simulator's output).

Detections come from one of:

* the detector (``--config``/``--checkpoint``), run over every frame's points;
* ``--detections FILE.json``: a detections file (:mod:`fastpillars_ros.detections_file`; LiDAR frame, class
  names), its frames matched to the KITTI frames by ``sample`` (the KITTI frame id), else by ``index`` in the
  evaluated frame order. ``--save-detections`` writes the detector's output in this format (``viz
  --detections`` and ``regression-check`` read it too);
* ``--detections DIR``: KITTI result files ``DIR/<frame_id>.txt`` (label_2 lines with a 16th score column,
  camera frame), converted to the LiDAR frame with each frame's calibration.

Frames missing from the detections have no detections. Ground truth: the labelled boxes of the evaluated
classes; boxes harder than ``--difficulty`` (KITTI difficulty from box height, occlusion and truncation; the
simulator marks objects with fewer than 5 LiDAR returns as occlusion 3, difficulty none) and KITTI's
neighbouring classes (Van for car, Person_sitting for pedestrian) are *ignored*: not counted as misses, and
detections on them are not false positives (see :mod:`fastpillars_ros.evaluation`). DontCare image regions
have no 3D extent and are not used. ``--camera-fov`` restricts the evaluation to boxes whose centre projects
into camera 2's image (real KITTI labels only exist there).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastpillars_ros.detections_file import FrameDetections, load_detections, save_detections
from fastpillars_ros.evaluation import FrameBoxes, evaluate, plot_pr_curves
from fastpillars_ros.pointcloud import model_columns
from fastpillars_ros.runtime.choices import BACKENDS, DEVICES, PRECISIONS

log = logging.getLogger(__name__)

DIFFICULTIES = {"easy": 0, "moderate": 1, "hard": 2, "all": None}
# KITTI classes that are ignored (not false positives, not misses) when evaluating one of ours.
NEIGHBOUR_CLASSES = {"Van": "car", "Person_sitting": "pedestrian"}
DEFAULT_IMAGE_SIZE = (1242, 375)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="KITTI-format folder (velodyne/, label_2/, calib/) or the "
                                                      "folder above training/")
    parser.add_argument("--split-file", default=None, help="text file of frame ids (default: every velodyne/*.bin)")
    parser.add_argument("--max-frames", type=int, default=None, help="evaluate only the first N frames")
    src = parser.add_argument_group("detections")
    src.add_argument("--config", default=None, help="model config name or YAML path (runs the detector; "
                                                   "with --detections it only names the classes)")
    src.add_argument("--checkpoint", default=None, help="weights file (default: the one shipped for --config)")
    src.add_argument("--device", default="auto", choices=DEVICES)
    src.add_argument("--backend", default="auto", choices=BACKENDS)
    src.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="auto: the Detector's default precision for the back end (the default path)")
    src.add_argument("--score-threshold", type=float, default=None,
                     help="detector score threshold (default: the config's decode.score_threshold, the candidate "
                          "floor; lower gives fuller PR curves)")
    src.add_argument("--intensity-max", type=float, default=1.0,
                     help="maximum reflectance in the .bin files (KITTI: 1.0); rescaled to the model's range")
    src.add_argument("--detections", default=None,
                     help="stored detections instead of running the detector: a JSON file or a folder of "
                          "KITTI result files (see the command's description)")
    src.add_argument("--save-detections", default=None, help="write the detector's output as JSON")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--classes", default=None,
                    help="comma-separated class names (default: the config's, else car,pedestrian,cyclist)")
    ev.add_argument("--iou", action="append", default=[], metavar="CLASS=T[,T...]",
                    help="IoU thresholds of a class (repeatable), e.g. car=0.7,0.5")
    ev.add_argument("--max-range", type=float, default=None, help="only boxes within R metres (BEV) count")
    ev.add_argument("--difficulty", default="hard", choices=list(DIFFICULTIES),
                    help="ground truth harder than this is ignored (all: nothing is ignored for difficulty)")
    ev.add_argument("--camera-fov", action="store_true", help="only boxes whose centre is in camera 2's image")
    ev.add_argument("--whole-scene", action="store_true",
                    help="also count ground truth outside the model's x/y range (default: ground truth there is "
                         "ignored and detections there are dropped, since the model cannot see it)")
    ev.add_argument("--out", default=None, help="JSON report")
    ev.add_argument("--plot", default=None, help="precision/recall curves (PNG)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_iou(items: Sequence[str], class_names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or name not in class_names:
            raise ValueError(f"--iou {item!r}: expected CLASS=T[,T...] with CLASS one of {list(class_names)}")
        out[name] = tuple(float(v) for v in values.split(",") if v.strip())
    return out


def _in_xy_range(boxes: np.ndarray, pc_range: Sequence[float]) -> np.ndarray:
    """(K,) bool: the box centre lies inside the x/y extent of ``pc_range`` (x_min, y_min, z_min, x_max, ...)."""
    b = np.asarray(boxes).reshape(-1, 7)
    return ((b[:, 0] >= pc_range[0]) & (b[:, 0] < pc_range[3]) & (b[:, 1] >= pc_range[1]) & (b[:, 1] < pc_range[4]))


def project_centres(boxes: np.ndarray, calib: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box centres (LiDAR frame) in camera 2: ``(depth m, u px, v px)``, each ``(K,)`` (u, v meaningless where
    depth <= 0)."""
    t = calib.velo_to_rect
    rect = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)[:, :3] @ t[:3, :3].T + t[:3, 3]
    uvw = np.hstack([rect, np.ones((len(rect), 1))]) @ calib.p2.T
    with np.errstate(divide="ignore", invalid="ignore"):
        return rect[:, 2], uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]


def in_camera_fov(boxes: np.ndarray, calib: Any, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """(K,) bool: the box centre is in front of camera 2 and projects inside its image."""
    if not len(boxes):
        return np.zeros(0, dtype=bool)
    depth, u, v = project_centres(boxes, calib)
    return (depth > 0.1) & (u >= 0) & (u < image_size[0]) & (v >= 0) & (v < image_size[1])


def ground_truth(frame: Any, class_names: Sequence[str], max_difficulty: int | None) -> FrameBoxes:
    """Ground truth of a :class:`~fastpillars_ros.datasets.kitti.KittiFrame` (labels index ``class_names``,
    the dataset's classes): hard boxes and neighbouring-class boxes are ignore boxes."""
    ignore = np.zeros(len(frame.boxes), dtype=bool)
    if max_difficulty is not None:
        ignore = (frame.difficulty < 0) | (frame.difficulty > max_difficulty)
    boxes, labels = [np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 7)], [frame.labels]
    extra = [(i, class_names.index(NEIGHBOUR_CLASSES[n])) for i, n in enumerate(frame.ignored_names)
             if NEIGHBOUR_CLASSES.get(n) in class_names]
    if extra:
        boxes.append(frame.ignored_boxes[[i for i, _ in extra]])
        labels.append(np.array([c for _, c in extra], dtype=np.int64))
        ignore = np.concatenate([ignore, np.ones(len(extra), dtype=bool)])
    return FrameBoxes(boxes=np.concatenate(boxes), labels=np.concatenate(labels).astype(np.int64), ignore=ignore)


def _labels_from(names: Sequence[str], class_names: Sequence[str], where: str) -> np.ndarray:
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise ValueError(f"{where}: unknown class {unknown[0]!r}; classes: {list(class_names)}")
    return np.array([class_names.index(n) for n in names], dtype=np.int64)


def load_json_detections(path: str | Path, class_names: Sequence[str], frame_ids: Sequence[str]
                         ) -> dict[str, FrameBoxes]:
    """A detections file -> ``{KITTI frame id: FrameBoxes}`` (by ``sample``, else ``frame_ids[index]``)."""
    out: dict[str, FrameBoxes] = {}
    for f in load_detections(path):
        fid = f.sample or (frame_ids[f.index] if 0 <= f.index < len(frame_ids) else str(f.index))
        out[fid] = FrameBoxes(boxes=f.boxes, scores=f.scores,
                              labels=_labels_from(f.names, class_names, f"{path} {f.describe()}"))
    return out


def save_json_detections(path: str | Path, detections: dict[str, FrameBoxes], class_names: Sequence[str],
                         frame_ids: Sequence[str]) -> None:
    """Write ``{KITTI frame id: FrameBoxes}`` as a detections file (``sample`` = frame id, ``index`` = its
    position in ``frame_ids``, the evaluated frame order)."""
    position = {fid: i for i, fid in enumerate(frame_ids)}
    frames = [FrameDetections(position[fid], 0, d.boxes, d.scores, [class_names[int(k)] for k in d.labels],
                              sample=fid) for fid, d in detections.items()]
    save_detections(frames, path, class_names=class_names, meta={"source": "eval"})


def load_kitti_detections(folder: str | Path, frame_id: str, calib: Any, class_names: Sequence[str],
                          class_map: dict[str, str | None]) -> FrameBoxes:
    """One frame's KITTI result file (label_2 lines + score) -> our boxes; unknown types are skipped."""
    from fastpillars_ros.boxes import kitti_to_lidar
    from fastpillars_ros.datasets.kitti import read_labels

    path = Path(folder) / f"{frame_id}.txt"
    objs = read_labels(path) if path.is_file() else []
    kept, labels = [], []
    for o in objs:
        name = class_map.get(o.type, o.type if o.type in class_names else None)
        if name is None or name not in class_names:
            continue
        if o.score is None:
            raise ValueError(f"{path}: detection lines need a 16th column (score)")
        kept.append(o)
        labels.append(class_names.index(name))
    if not kept:
        return FrameBoxes(np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros(0))
    boxes = kitti_to_lidar(np.array([o.location for o in kept]), np.array([o.dims_hwl for o in kept]),
                           np.array([o.rotation_y for o in kept]), calib)
    return FrameBoxes(boxes=boxes, labels=np.array(labels, dtype=np.int64),
                      scores=np.array([o.score for o in kept], dtype=np.float64))


def _class_names(args: argparse.Namespace) -> list[str]:
    if args.classes:
        return [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.config:
        from fastpillars_ros.config import load_model_config

        return list(load_model_config(args.config).class_names)
    from fastpillars_ros.datasets.kitti import DEFAULT_CLASSES

    return list(DEFAULT_CLASSES)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fastpillars_ros.datasets.kitti import KittiDataset

    if args.detections is None and args.config is None:
        print("eval: give --config (run the detector) or --detections (stored results)", file=sys.stderr)
        return 2
    if args.max_frames is not None and args.max_frames <= 0:
        print("eval: --max-frames must be positive", file=sys.stderr)
        return 2
    try:
        class_names = _class_names(args)
        iou = _parse_iou(args.iou, class_names)
        dataset = KittiDataset(args.data, split_file=args.split_file, classes=class_names)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    n = len(dataset) if args.max_frames is None else min(len(dataset), args.max_frames)
    if n == 0:
        print(f"eval: no frames in {args.data}", file=sys.stderr)
        return 2

    stored: dict[str, FrameBoxes] | None = None
    kitti_dir: Path | None = None
    detector = None
    if args.detections is not None:
        path = Path(args.detections)
        try:
            if path.is_dir():
                kitti_dir = path / "data" if (path / "data").is_dir() else path
            else:
                stored = load_json_detections(path, class_names, dataset.frame_ids[:n])
        except (OSError, ValueError) as exc:
            print(f"eval: {exc}", file=sys.stderr)
            return 2
    else:
        from fastpillars_ros.config import load_model_config
        from fastpillars_ros.detector import Detector

        # AP needs every candidate: the decode floor, not the (higher) default published thresholds.
        floor = load_model_config(args.config).decode.score_threshold
        detector = Detector(args.config, args.checkpoint, device=args.device, backend=args.backend,
                            precision=args.precision,
                            score_threshold=floor if args.score_threshold is None else args.score_threshold)
        missing = [c for c in detector.class_names if c not in class_names]
        if missing:
            log.warning("detector classes %s are not evaluated (classes: %s)", missing, class_names)
        gain = detector.intensity_scale / args.intensity_max

    max_difficulty = DIFFICULTIES[args.difficulty]
    predictions, truths = [], []
    saved: dict[str, FrameBoxes] = {}
    frame_ids = dataset.frame_ids[:n]
    if stored is not None:
        unknown = sorted(set(stored) - set(frame_ids))
        if unknown:
            log.warning("%d frames of %s are not in the evaluated frames (e.g. %s)", len(unknown), args.detections,
                        unknown[0])
    for i in tqdm(range(n), desc="eval", unit="frame", file=sys.stderr, disable=args.no_progress):
        frame = dataset[i]
        gt = ground_truth(frame, class_names, max_difficulty)
        if detector is not None:
            out = detector.detect(model_columns(frame.points, detector.point_features, gain))
            keep = np.isin(np.asarray(detector.class_names)[out.labels], class_names)
            labels = np.array([class_names.index(detector.class_names[k]) for k in out.labels[keep]], dtype=np.int64)
            pred = FrameBoxes(boxes=out.boxes[keep].astype(np.float64), scores=out.scores[keep].astype(np.float64),
                              labels=labels)
            saved[frame.frame_id] = pred
        elif kitti_dir is not None:
            pred = load_kitti_detections(kitti_dir, frame.frame_id, frame.calib, class_names, dataset.class_map)
        else:
            assert stored is not None
            pred = stored.get(frame.frame_id, FrameBoxes(np.zeros((0, 7)), np.zeros(0, np.int64), np.zeros(0)))
        if detector is not None and not args.whole_scene:
            keep = _in_xy_range(pred.boxes, detector.config.pc_range)
            pred = FrameBoxes(pred.boxes[keep], pred.labels[keep], pred.scores[keep])  # type: ignore[index]
            gt.ignore = gt.ignore | ~_in_xy_range(gt.boxes, detector.config.pc_range)  # type: ignore[operator]
        if args.camera_fov:
            keep = in_camera_fov(pred.boxes, frame.calib)
            pred = FrameBoxes(pred.boxes[keep], pred.labels[keep], pred.scores[keep])  # type: ignore[index]
            gt.ignore = gt.ignore | ~in_camera_fov(gt.boxes, frame.calib)  # type: ignore[operator]
        predictions.append(pred)
        truths.append(gt)

    if args.save_detections and saved:
        save_json_detections(args.save_detections, saved, class_names, frame_ids)
    try:
        result = evaluate(predictions, truths, class_names, iou_thresholds=iou, max_range=args.max_range)
    except ValueError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 2
    result.extras.update({"data": str(args.data), "config": args.config, "checkpoint": args.checkpoint,
                          "detections": args.detections, "difficulty": args.difficulty,
                          "camera_fov": bool(args.camera_fov),
                          "model_range_only": detector is not None and not args.whole_scene})
    print(result.format_table())
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=1))
    if args.plot:
        plot_pr_curves(result, args.plot)
    return 0
