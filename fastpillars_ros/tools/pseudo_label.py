"""``fastpillars-ros pseudo-label``: label real scans with a teacher model for self-training
(:mod:`fastpillars_ros.train.pseudo_labels`).

Reads a KITTI-layout folder (``velodyne/``, ``calib/``, ``label_2/`` optional) and writes one beside it whose
labels cover the whole scan: with ``--camera-view`` a frame's own labels stay as they are (they cover the
camera's view) and teacher boxes are added outside that view only; without it every box is the teacher's.
Confident boxes are written as ``Car``/``Pedestrian``/``Cyclist``, unsure ones as ``Misc`` (an ignore box to
training), each with its fused score as the 16th field. Scans are linked, not copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run"]

#: BEV centre distance (m) within which two views' boxes of a class are one object.
MATCH_RADIUS = {"car": 1.5, "pedestrian": 0.6, "cyclist": 0.8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="teacher's model config (default: the embedded default)")
    parser.add_argument("--checkpoint", default=None, help="teacher's weights (default: the config's shipped ones)")
    parser.add_argument("--data", required=True, help="KITTI-layout folder of real scans (labels optional)")
    parser.add_argument("--out", required=True, help="output folder (KITTI layout; scans linked)")
    parser.add_argument("--camera-view", action="store_true",
                        help="the scans' own labels cover the front camera's view: keep them, pseudo-label the rest")
    parser.add_argument("--keep", default="car=0.5,pedestrian=0.55,cyclist=0.5",
                        help="fused score from which a teacher box is a label, per class "
                             "(default car=0.5,pedestrian=0.55,cyclist=0.5)")
    parser.add_argument("--floor", type=float, default=0.1,
                        help="fused score from which an unsure teacher box is an ignore box (default 0.1)")


def run(args: argparse.Namespace) -> int:
    from fastpillars_ros.config import DEFAULT_MODEL, load_model_config
    from fastpillars_ros.datasets.kitti import (
        DEFAULT_CLASS_MAP,
        KittiDataset,
        format_label_line,
        labels_from_lidar_boxes,
    )
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.tools.eval_real import parse_class_values
    from fastpillars_ros.train.data import camera_half_fov
    from fastpillars_ros.train.pseudo_labels import pseudo_labels

    config = load_model_config(args.config or DEFAULT_MODEL)
    names = list(config.class_names)
    try:
        keep_by_class = parse_class_values(args.keep, names, "--keep")
        if set(keep_by_class) != set(names):
            raise ValueError(f"--keep {args.keep!r}: give a score for each class of {names}")
        keep = [keep_by_class[c] for c in names]
        source = KittiDataset(args.data, classes=names)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pseudo-label: {exc}", file=sys.stderr)
        return 2
    kitti_type = {ours: kitti for kitti, ours in DEFAULT_CLASS_MAP.items() if ours is not None}
    missing_type = [c for c in names if c not in kitti_type]
    if missing_type:
        print(f"pseudo-label: no KITTI type for classes {missing_type}", file=sys.stderr)
        return 2
    # Per view, every box down to the fused floor can matter (a box in all views scores its mean).
    teacher = Detector(config, args.checkpoint, precision="fp32", score_threshold=args.floor)

    def detect(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = teacher.detect(points)
        return d.boxes, d.scores, d.labels

    out = Path(args.out)
    for sub in ("velodyne", "calib", "label_2"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    radius = {i: MATCH_RADIUS.get(c, 1.0) for i, c in enumerate(names)}
    totals = np.zeros(len(names), dtype=np.int64)
    n_ignored, start = 0, time.monotonic()
    for i, frame_id in enumerate(source.frame_ids):
        frame = source[i]
        known = np.concatenate([frame.boxes, frame.ignored_boxes]) if args.camera_view else None
        pl = pseudo_labels(detect, frame.points, keep, args.floor, radius, known=known,
                           half_fov=camera_half_fov(frame.calib) if args.camera_view else None)
        lines = []
        label_file = source.root / "label_2" / f"{frame_id}.txt"
        if args.camera_view and label_file.is_file():
            lines += [line for line in label_file.read_text().splitlines() if line.strip()]
        for boxes, types, scores in ((pl.boxes, [kitti_type[names[c]] for c in pl.labels], pl.scores),
                                     (pl.ignored, ["Misc"] * len(pl.ignored), None)):
            objs = labels_from_lidar_boxes(types, boxes, frame.calib)
            for k, obj in enumerate(objs):
                obj.score = None if scores is None else float(scores[k])
                lines.append(format_label_line(obj))
        (out / "label_2" / f"{frame_id}.txt").write_text("".join(line + "\n" for line in lines))
        shutil.copyfile(source.root / "calib" / f"{frame_id}.txt", out / "calib" / f"{frame_id}.txt")
        link = out / "velodyne" / f"{frame_id}.bin"
        link.unlink(missing_ok=True)
        link.symlink_to((source.root / "velodyne" / f"{frame_id}.bin").resolve())
        totals += np.bincount(pl.labels, minlength=len(names))
        n_ignored += len(pl.ignored)
        if (i + 1) % 10 == 0 or i + 1 == len(source):
            print(f"pseudo-label: {i + 1}/{len(source)} scans, {time.monotonic() - start:.0f} s", flush=True)
    print(f"{len(source)} scans -> {out}: labels " + ", ".join(f"{c} {int(n)}" for c, n in zip(names, totals,
                                                                                                  strict=True))
          + f"; ignore boxes {n_ignored}")
    return 0
