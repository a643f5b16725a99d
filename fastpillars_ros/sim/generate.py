"""One simulated frame end to end (scene -> scan -> labels) and the KITTI-layout writer.

Labelling rules (self-consistent ground truth):

* Labelled types: ``Car``, ``Van``, ``Truck`` (vehicles; the dataset reader maps only ``Car`` to our ``car``
  class and returns vans and trucks as ignore boxes, as for real KITTI), ``Pedestrian``, ``Cyclist``.
  Scenery (buildings, trees, poles, street furniture) is never labelled.
* The box is the tight box around the object's full shape (all its primitives), whatever is visible
  (``label_style="tight"``, the default), or that box resized to KITTI's annotation habits
  (``label_style="kitti"``, :data:`KITTI_LABEL_GROWTH`).
* ``num_points`` is the number of returns in the written scan whose nearest hit is one of the object's
  primitives. Objects with 0 points are not labelled. Objects with 1..4 points (``MIN_POINTS - 1``) are
  labelled with ``occluded = 3`` ("unknown"), which the reader turns into difficulty -1 (ignore).
* ``occluded`` otherwise comes from the visible fraction ``visible rays / rays meeting the object at any
  depth``: > 0.8 -> 0 (fully visible), > 0.4 -> 1 (partly), else 2 (largely occluded).
* ``truncated`` is 0 (the scan covers 360 degrees); the 2D ``bbox`` is the projection into camera 2 of the
  fixed calibration below, clipped to a 1242 x 375 image, or all zeros for objects outside its view.
  Objects all around the sensor are labelled (real KITTI labels only the camera's field of view).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastpillars_ros.boxes import KittiCalib, project_boxes_to_image
from fastpillars_ros.datasets.kitti import format_label_line, labels_from_lidar_boxes
from fastpillars_ros.sim.raycast import Scan, cast_rays
from fastpillars_ros.sim.scene import Scene
from fastpillars_ros.sim.sensors import SensorModel, get_sensor
from fastpillars_ros.sim.street import street_scene

__all__ = ["GENERATOR_VERSION", "KITTI_LABEL_GROWTH", "LABELLED_TYPES", "LABEL_STYLES", "MIN_POINTS", "SIM_CALIB",
           "SimFrame", "label_boxes", "render_scene", "scene_rng", "simulate_frame", "write_frame"]

GENERATOR_VERSION = "fastpillars-sim-2"
LABELLED_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Cyclist")
MIN_POINTS = 5
#: How label boxes are drawn: ``tight`` around the shape, or ``kitti``: as KITTI's annotators draw them.
LABEL_STYLES = ("tight", "kitti")
#: ``kitti`` label style: metres added to a tight label's (length, width), per KITTI type. KITTI's annotators
#: draw a walking pedestrian's box longer than the body and a cyclist's box narrower than the handlebars: the
#: medians of KITTI's training labels (4,466 pedestrians, 1,597 cyclists; the reserved evaluation frames and the
#: project's held-out and development frames left out) are pedestrian length 0.88 m and cyclist width 0.60 m, the
#: simulator's tight boxes 0.64 m and 0.76 m.
KITTI_LABEL_GROWTH: dict[str, tuple[float, float]] = {"Pedestrian": (0.24, 0.0), "Cyclist": (0.0, -0.16)}
#: No label box is made narrower or shorter than this (metres).
MIN_LABEL_SIZE = 0.3


def _sim_calib() -> KittiCalib:
    f, cx, cy = 720.0, 620.0, 185.0
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    p = [np.hstack([k, k @ np.array([[tx], [0.0], [0.0]])]) for tx in (0.0, -0.54, 0.06, -0.48)]
    # LiDAR (x fwd, y left, z up) -> camera (x right, y down, z fwd); the camera sits 0.27 m ahead of and
    # 0.08 m below the LiDAR.
    tr = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27]])
    imu = np.array([[1.0, 0, 0, -0.81], [0, 1.0, 0, 0.32], [0, 0, 1.0, -0.8]])
    return KittiCalib(tr_velo_to_cam=tr, r0_rect=np.eye(3), p=p, tr_imu_to_velo=imu)


SIM_CALIB = _sim_calib()


@dataclass
class SimFrame:
    """A simulated frame: ``points (N, 4)`` float32 (LiDAR frame, intensity 0..1); labelled objects'
    ``boxes (K, 7)`` (ours), ``types`` (KITTI names), ``num_points``, ``occluded``, ``bboxes (K, 4)``;
    ``object_ids`` (their ids in ``scene.objects``), the scan and the scene, and ``meta`` (JSON-ready)."""

    points: np.ndarray
    boxes: np.ndarray
    types: list[str]
    num_points: np.ndarray
    occluded: np.ndarray
    bboxes: np.ndarray
    object_ids: np.ndarray
    scan: Scan
    scene: Scene
    meta: dict = field(default_factory=dict)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of a run with ``seed``: independent of every other scene, so a run
    can be split across processes and still give identical bytes."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def label_boxes(boxes: np.ndarray, types: list[str], style: str) -> np.ndarray:
    """Label boxes ``(K, 7)`` (ours) of objects of KITTI ``types`` from their tight boxes ``(K, 7)`` in the label
    ``style`` (:data:`LABEL_STYLES`); the centre and heading stay."""
    if style not in LABEL_STYLES:
        raise ValueError(f"label_style must be one of {LABEL_STYLES}, got {style!r}")
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    if style == "kitti":
        grow = np.array([KITTI_LABEL_GROWTH.get(name, (0.0, 0.0)) for name in types]).reshape(-1, 2)
        out[:, 3:5] = np.maximum(out[:, 3:5] + grow, MIN_LABEL_SIZE)
    return out


def render_scene(scene: Scene, sensor: SensorModel, rng: np.random.Generator, effects: bool = True,
                 label_style: str = "tight") -> SimFrame:
    """Scan ``scene`` and label its objects (rules in the module docstring; ``label_style``: :data:`LABEL_STYLES`)."""
    scan = cast_rays(scene, sensor, rng, effects=effects)
    ids, occ = [], []
    for i, obj in enumerate(scene.objects):
        if obj.kitti_type not in LABELLED_TYPES or scan.num_points[i] == 0:
            continue
        ids.append(i)
        if scan.num_points[i] < MIN_POINTS:
            occ.append(3)
        else:
            frac = scan.visible_rays[i] / max(int(scan.rays_hit[i]), 1)
            occ.append(0 if frac > 0.8 else 1 if frac > 0.4 else 2)
    ids_a = np.asarray(ids, dtype=np.int64)
    types = [str(scene.objects[i].kitti_type) for i in ids]
    boxes = label_boxes(np.array([scene.objects[i].box for i in ids], dtype=np.float64), types, label_style)
    frame = SimFrame(points=scan.points, boxes=boxes, types=types,
                     num_points=scan.num_points[ids_a], occluded=np.asarray(occ, dtype=np.int64),
                     bboxes=project_boxes_to_image(boxes, SIM_CALIB), object_ids=ids_a, scan=scan, scene=scene)
    cats: dict[str, int] = {}
    for o in scene.objects:
        cats[o.category] = cats.get(o.category, 0) + 1
    frame.meta = {
        "generator": GENERATOR_VERSION,
        "sensor": sensor.name,
        "num_points": len(scan.points),
        "objects": [{"type": t, "box": [round(float(v), 6) for v in b], "num_points": int(n),
                     "rays_hit": int(scan.rays_hit[i]), "occluded": int(o)}
                    for t, b, n, i, o in zip(frame.types, boxes, frame.num_points, ids_a, frame.occluded, strict=True)],
        "unlabelled_without_points": int(sum(1 for i, o in enumerate(scene.objects)
                                             if o.kitti_type in LABELLED_TYPES and scan.num_points[i] == 0)),
        "scene_objects": dict(sorted(cats.items())),
        "ground": {"z0": round(scene.ground.z0, 6), "slope": [round(v, 6) for v in scene.ground.slope],
                   "road_dir": round(scene.ground.road_dir, 6),
                   "road_half_width": round(scene.ground.road_half_width, 6),
                   "kerb_height": round(scene.ground.kerb_height, 6),
                   "sidewalk_width": round(scene.ground.sidewalk_width, 6),
                   "terrain_offset": [round(v, 6) for v in scene.ground.terrain_offset],
                   "terrain_slope": [round(v, 6) for v in scene.ground.terrain_slope],
                   "grades": [[round(v, 6) for v in g] for g in scene.ground.grades]},
    }
    return frame


def simulate_frame(seed: int, index: int, sensor: str | SensorModel = "hdl64", ramps: float = 0.0,
                   label_style: str = "tight", crossings: float = 0.0, vru_ranges: str = "uniform") -> SimFrame:
    """Scene ``index`` of the run ``seed``: a random street scan with its labels (deterministic); ``ramps``:
    the probability of a grade change ahead of and behind the sensor, ``crossings`` that of vehicles crossing the
    road there, ``vru_ranges`` how far away pedestrians and cyclists stand (:func:`street_scene`); ``label_style``:
    how the label boxes are drawn (:data:`LABEL_STYLES`; the scan does not depend on it)."""
    model = get_sensor(sensor) if isinstance(sensor, str) else sensor
    rng = scene_rng(seed, index)
    scene = street_scene(rng, model, ramps=ramps, crossings=crossings, vru_ranges=vru_ranges)
    frame = render_scene(scene, model, rng, label_style=label_style)
    frame.meta.update({"seed": int(seed), "index": int(index)})
    if crossings > 0.0:  # without them the records of earlier runs stay byte for byte
        frame.meta["crossings"] = crossings
    if vru_ranges != "uniform":  # likewise
        frame.meta["vru_ranges"] = vru_ranges
    if label_style != "tight":  # the tight default keeps the records of earlier runs byte for byte
        frame.meta["label_style"] = label_style
    return frame


def write_frame(root: str | os.PathLike, frame_id: str, frame: SimFrame) -> None:
    """Write ``velodyne/``, ``label_2/``, ``calib/`` and ``sim_meta/`` files of one frame under ``root``."""
    root = Path(root)
    for sub in ("velodyne", "label_2", "calib", "sim_meta"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(frame.points, dtype=np.float32).tofile(root / "velodyne" / f"{frame_id}.bin")
    objs = labels_from_lidar_boxes(frame.types, frame.boxes, SIM_CALIB, bboxes=frame.bboxes,
                                   occluded=frame.occluded)
    text = "".join(format_label_line(o) + "\n" for o in objs)
    (root / "label_2" / f"{frame_id}.txt").write_text(text)
    (root / "calib" / f"{frame_id}.txt").write_text(SIM_CALIB.to_text())
    meta = dict(frame.meta, frame_id=frame_id)
    (root / "sim_meta" / f"{frame_id}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
