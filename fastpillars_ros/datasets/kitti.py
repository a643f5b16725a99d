"""KITTI-format dataset reader (real KITTI object frames and the simulator's output alike).

Layout read: ``<root>/velodyne/NNNNNN.bin`` (float32 x, y, z, reflectance; LiDAR frame, metres),
``<root>/label_2/NNNNNN.txt`` (camera-frame labels, 15 fields per line), ``<root>/calib/NNNNNN.txt``. ``root``
may also be the folder *above* ``training/`` (then ``training/`` is used). Frames without a label file
(KITTI ``testing/``) get no boxes.

Class mapping (``DEFAULT_CLASS_MAP``, override with ``class_map``): ``Car -> car``, ``Pedestrian ->
pedestrian``, ``Cyclist -> cyclist``. ``Van``, ``Truck``, ``Tram``, ``Person_sitting`` and ``Misc`` map to
``None``: they are not training classes, but they are real objects, so they are returned as *ignore boxes*
(``ignored_boxes`` / ``ignored_names``) that training may use to avoid counting detections there as false
positives (KITTI's evaluation also ignores Van for Car and Person_sitting for Pedestrian). A KITTI name that
is missing from the map is also ignored. ``DontCare`` lines have no 3D box (their location is -1000), so only
their 2D image rectangles are kept (``dontcare_bboxes``); nothing in the LiDAR frame refers to them.

Difficulty (``difficulty``: 0 easy, 1 moderate, 2 hard, -1 none) follows KITTI's rules on the 2D box height
(>= 40 / 25 / 25 px), occlusion (<= 0 / 1 / 2) and truncation (<= 0.15 / 0.3 / 0.5). Objects without an
image box (all-zero bbox: simulator objects outside the camera's view) are judged on occlusion and truncation
only. Occlusion 3 ("unknown"; the simulator writes it for objects with fewer than 5 LiDAR points) is always
difficulty -1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastpillars_ros.boxes import KittiCalib, kitti_to_lidar, lidar_to_kitti, observation_angle

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_CLASS_MAP",
    "KittiDataset",
    "KittiFrame",
    "KittiObject",
    "format_label_line",
    "kitti_difficulty",
    "parse_label_line",
    "read_labels",
]

DEFAULT_CLASSES = ("car", "pedestrian", "cyclist")
DEFAULT_CLASS_MAP: dict[str, str | None] = {
    "Car": "car",
    "Pedestrian": "pedestrian",
    "Cyclist": "cyclist",
    "Van": None,
    "Truck": None,
    "Tram": None,
    "Person_sitting": None,
    "Misc": None,
}


@dataclass
class KittiObject:
    """One line of a KITTI label file (camera frame: location is the bottom centre, rectified camera
    coordinates in metres; dims are h, w, l in metres; angles in radians; bbox in pixels)."""

    type: str
    truncated: float
    occluded: int
    alpha: float
    bbox: tuple[float, float, float, float]
    dims_hwl: tuple[float, float, float]
    location: tuple[float, float, float]
    rotation_y: float
    score: float | None = None


def parse_label_line(line: str) -> KittiObject:
    f = line.split()
    if len(f) not in (15, 16):
        raise ValueError(f"KITTI label line needs 15 (or 16 with score) fields, got {len(f)}: {line!r}")
    return KittiObject(
        type=f[0], truncated=float(f[1]), occluded=int(float(f[2])), alpha=float(f[3]),
        bbox=(float(f[4]), float(f[5]), float(f[6]), float(f[7])),
        dims_hwl=(float(f[8]), float(f[9]), float(f[10])),
        location=(float(f[11]), float(f[12]), float(f[13])), rotation_y=float(f[14]),
        score=float(f[15]) if len(f) == 16 else None)


def format_label_line(obj: KittiObject) -> str:
    """One label line with the 15 standard fields (16 when ``score`` is set); 6 decimals for metres and
    radians, 2 for pixels."""
    parts = [obj.type, f"{obj.truncated:.2f}", str(int(obj.occluded)), f"{obj.alpha:.6f}",
             *(f"{v:.2f}" for v in obj.bbox), *(f"{v:.6f}" for v in obj.dims_hwl),
             *(f"{v:.6f}" for v in obj.location), f"{obj.rotation_y:.6f}"]
    if obj.score is not None:
        parts.append(f"{obj.score:.6f}")
    return " ".join(parts)


def read_labels(path: str | os.PathLike) -> list[KittiObject]:
    return [parse_label_line(line) for line in Path(path).read_text().splitlines() if line.strip()]


def labels_from_lidar_boxes(names: Sequence[str], boxes: np.ndarray, calib: KittiCalib,
                            bboxes: np.ndarray | None = None, occluded: Sequence[int] | None = None,
                            truncated: Sequence[float] | None = None) -> list[KittiObject]:
    """Our LiDAR-frame boxes -> KITTI label objects through ``calib`` (alpha computed, bbox 0s if absent)."""
    loc, dims, ry = lidar_to_kitti(boxes, calib)
    alpha = observation_angle(loc, ry)
    out = []
    for i, name in enumerate(names):
        out.append(KittiObject(
            type=name, truncated=0.0 if truncated is None else float(truncated[i]),
            occluded=0 if occluded is None else int(occluded[i]), alpha=float(alpha[i]),
            bbox=(0.0, 0.0, 0.0, 0.0) if bboxes is None else tuple(float(v) for v in bboxes[i]),
            dims_hwl=tuple(float(v) for v in dims[i]), location=tuple(float(v) for v in loc[i]),
            rotation_y=float(ry[i])))
    return out


def kitti_difficulty(bbox: Sequence[float], occluded: int, truncated: float) -> int:
    """KITTI difficulty: 0 easy, 1 moderate, 2 hard, -1 none of them (see the module docstring)."""
    if occluded >= 3 or occluded < 0:
        return -1
    height = float(bbox[3]) - float(bbox[1])
    has_image_box = any(float(v) != 0.0 for v in bbox)
    for level, (min_h, max_occ, max_trunc) in enumerate(((40, 0, 0.15), (25, 1, 0.3), (25, 2, 0.5))):
        if (not has_image_box or height >= min_h) and occluded <= max_occ and truncated <= max_trunc:
            return level
    return -1


@dataclass
class KittiFrame:
    """One frame: ``points (N, 4)`` float32 x, y, z, reflectance (LiDAR frame, metres); ``boxes (K, 7)``
    float64 ours (see :mod:`fastpillars_ros.boxes`); ``labels (K,)`` int64 indices into the dataset's
    ``classes``; ``names`` the class names; ``kitti_names`` the original KITTI types; ``difficulty``,
    ``occluded`` ``(K,)`` int64 and ``truncated`` ``(K,)`` float64; ignore boxes of unmapped classes;
    DontCare image rectangles ``(M, 4)``; the calibration. ``extras``: for simulator output (a
    ``sim_meta/`` file beside the labels) ``num_points`` / ``ignored_num_points`` (returns per box, aligned
    with ``boxes`` / ``ignored_boxes``) and the whole ``sim_meta`` record."""

    frame_id: str
    points: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    names: list[str]
    kitti_names: list[str]
    difficulty: np.ndarray
    occluded: np.ndarray
    truncated: np.ndarray
    ignored_boxes: np.ndarray
    ignored_names: list[str]
    dontcare_bboxes: np.ndarray
    calib: KittiCalib
    extras: dict = field(default_factory=dict)


class KittiDataset:
    """Random access to KITTI-format frames (see the module docstring for layout, mapping and difficulty).

    ``split_file``: a text file of frame ids (one per line, e.g. ``000042``); default: every
    ``velodyne/*.bin`` in sorted order. ``classes``: our class names, ``labels`` index into it.
    ``class_map``: KITTI type -> our class name or ``None`` (ignored); names mapped to a class not in
    ``classes`` are ignored too.
    """

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike | None = None,
                 classes: Sequence[str] = DEFAULT_CLASSES,
                 class_map: Mapping[str, str | None] | None = None) -> None:
        root = Path(root)
        if not (root / "velodyne").is_dir() and (root / "training" / "velodyne").is_dir():
            root = root / "training"
        if not (root / "velodyne").is_dir():
            raise FileNotFoundError(f"no velodyne/ folder under {root}")
        self.root = root
        self.classes = tuple(classes)
        self.class_map = dict(DEFAULT_CLASS_MAP if class_map is None else class_map)
        if split_file is not None:
            ids = [s.strip() for s in Path(split_file).read_text().split() if s.strip()]
        else:
            ids = sorted(p.stem for p in (root / "velodyne").glob("*.bin"))
        self.frame_ids = ids

    def __len__(self) -> int:
        return len(self.frame_ids)

    def points(self, index: int) -> np.ndarray:
        path = self.root / "velodyne" / f"{self.frame_ids[index]}.bin"
        return np.fromfile(path, dtype=np.float32).reshape(-1, 4)

    def calib(self, index: int) -> KittiCalib:
        return KittiCalib.from_file(self.root / "calib" / f"{self.frame_ids[index]}.txt")

    def objects(self, index: int) -> list[KittiObject]:
        path = self.root / "label_2" / f"{self.frame_ids[index]}.txt"
        return read_labels(path) if path.is_file() else []

    def __getitem__(self, index: int) -> KittiFrame:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        calib = self.calib(index)
        objs = self.objects(index)
        kept, ignored, dontcare = [], [], []
        for o in objs:
            if o.type == "DontCare":
                dontcare.append(o.bbox)
                continue
            name = self.class_map.get(o.type)
            (kept if name is not None and name in self.classes else ignored).append(o)

        def to_boxes(items: list[KittiObject]) -> np.ndarray:
            if not items:
                return np.zeros((0, 7))
            return kitti_to_lidar(np.array([o.location for o in items]), np.array([o.dims_hwl for o in items]),
                                  np.array([o.rotation_y for o in items]), calib)

        names = [self.class_map[o.type] for o in kept]
        extras: dict = {}
        meta_path = self.root / "sim_meta" / f"{self.frame_ids[index]}.json"
        if meta_path.is_file():  # simulator output: per-object point counts, in label-file order
            meta = json.loads(meta_path.read_text())
            counts = [o.get("num_points", -1) for o in meta.get("objects", [])]
            labelled = [o for o in objs if o.type != "DontCare"]
            if len(counts) == len(labelled):
                by_obj = {id(o): c for o, c in zip(labelled, counts, strict=True)}
                extras["num_points"] = np.array([by_obj[id(o)] for o in kept], dtype=np.int64)
                extras["ignored_num_points"] = np.array([by_obj[id(o)] for o in ignored], dtype=np.int64)
            extras["sim_meta"] = meta
        return KittiFrame(
            frame_id=self.frame_ids[index],
            points=self.points(index),
            boxes=to_boxes(kept),
            labels=np.array([self.classes.index(n) for n in names], dtype=np.int64),
            names=names,
            kitti_names=[o.type for o in kept],
            difficulty=np.array([kitti_difficulty(o.bbox, o.occluded, o.truncated) for o in kept], dtype=np.int64),
            occluded=np.array([o.occluded for o in kept], dtype=np.int64),
            truncated=np.array([o.truncated for o in kept], dtype=np.float64),
            ignored_boxes=to_boxes(ignored),
            ignored_names=[o.type for o in ignored],
            dontcare_bboxes=np.array(dontcare, dtype=np.float64).reshape(-1, 4),
            calib=calib,
            extras=extras,
        )
