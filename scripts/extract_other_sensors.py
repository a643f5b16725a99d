#!/usr/bin/env python3
"""Extract small labelled real scans of non-KITTI lidars for evaluation (``eval-real --all-around``).

Issue #14 asks that other sensors work too. Two public repositories hold a few real, annotated scans of other
lidars; this script reads them at pinned commits and writes them in KITTI layout under ``out/`` (never into the
repository), labelled **all around the sensor** (these datasets label every direction, unlike KITTI's camera view):

* ``av2``: 3 scans of Argoverse 2 (two stacked Velodyne VLP-32C, 64 lasers, about 100k points, Pittsburgh / Miami)
  from argoverse/av2-api ``tests/unit/test_data`` (two logs: ``7fab2350...`` 2 sweeps 0.1 s apart, ``adcf7d18...``
  1 sweep), points and cuboids in the ego-vehicle frame, brought into the upper lidar's frame with its calibration
  (the log without calibration uses the other log's: the same vehicle type); intensity 0..255.
  Data: Argoverse 2, CC BY-NC-SA 4.0 (the repository's code is MIT).
* ``nuscenes``: 1 keyframe of nuScenes v1.0-mini scene-0061 (Singapore; Velodyne HDL-32E, 32 lasers, about 35k
  points) from open-mmlab/mmdetection3d ``demo/data/nuscenes``: the scan and mmdetection3d's info file (a pickle,
  read with an unpickler that admits only numpy dtypes and scalars: no code runs), boxes in the LIDAR_TOP frame,
  turned into a forward-x frame with the lidar-to-ego rotation; intensity 0..255.
  Data: nuScenes, CC BY-NC-SA 4.0 (the repository's code is Apache-2.0).
* ``pandaset``: 76 consecutive scans (8 s at 10 Hz, frames 56-58 and 71 are not in the snapshot) of PandaSet
  sequence 002 (San Francisco; Hesai Pandar64, 64 lasers, about 106k points; the solid-state PandarGT's points are
  left out) from scaleapi/pandaset-devkit's former test data (a commit reached by the repository's pull-request
  refs), points and cuboids in world coordinates brought into the Pandar64's frame with the sequence's lidar poses
  (pandas tables, read with an unpickler that builds plain numpy columns: no pandas, no code runs); intensity
  0..255. Cuboids measured with the front solid-state lidar (``cuboids.sensor_id`` 1) are left out: the
  mechanical lidar's own cuboid of the same object is kept.
  Data: PandaSet, CC BY 4.0 (Scale AI and Hesai; the repository's code is Apache-2.0).

Classes: cars (AV2 ``REGULAR_VEHICLE``, nuScenes ``car``, PandaSet ``Car``) -> Car, pedestrians -> Pedestrian,
riders on bicycles (AV2 ``BICYCLIST``, PandaSet ``Bicycle`` with a rider; a pedestrian box on a ridden bicycle or
motorcycle is dropped) -> Cyclist; trucks, buses, trailers -> Truck and bicycles (ridden or parked: nuScenes does not
say which here), motorcycles, strollers, wheelchairs -> Misc (PandaSet's pick-up trucks -> Truck: AV2 counts them as
regular vehicles, KITTI as cars or vans), both written as objects that are neither found nor
false; cones, barriers, bollards and signs are not written (a detection there is a false object). An object with
no lidar point in its box is written as Misc (nuScenes' rule: such boxes are not evaluated). Every box's own point
count (``num_interior_pts`` / ``num_lidar_pts``) is checked against the points the written box holds; PandaSet
states no counts, so there its cars must hold more points with their stated heading than turned by 90 degrees.

Usage::

    python scripts/extract_other_sensors.py --out out/real/other_sensors [--mirrors /work/.mirror]

needs ``pyarrow`` (Argoverse 2 files are Feather tables): ``pip install -r requirements/data.txt``.
"""

from __future__ import annotations

import argparse
import io
import pickle
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_real_kitti import Repo

from fastpillars_ros.boxes import points_in_boxes
from fastpillars_ros.datasets.kitti import format_label_line, labels_from_lidar_boxes
from fastpillars_ros.ros.pose_sources import quat_to_matrix
from fastpillars_ros.sim.generate import SIM_CALIB

REPOS = {
    "av2": ("argoverse/av2-api", "b7321d1f71f6ce0ecdd151f4f2b648338c191edd"),
    "mmdet3d": ("open-mmlab/mmdetection3d", "fe25f7a51d36e3702f961e198894580d83c4387b"),
    "pandaset": ("scaleapi/pandaset-devkit", "9102b4dbe55d395163b902388cb5d0d4805c49bc"),
}
AV2_ROOT = "tests/unit/test_data"
#: log folder -> lidar sweep timestamps (ns); the calibration is read from the first log that has one.
AV2_LOGS = {
    "sensor/val/7fab2350-7eaf-3b7e-a39d-6937a4c1bede": (315966265259836000, 315966265360032000),
    "sensor_dataset_logs/adcf7d18-0510-35b0-a2fa-b4cea13a6d76": (315973157959879000,),
}
AV2_CLASSES = {"REGULAR_VEHICLE": "Car", "PEDESTRIAN": "Pedestrian", "BICYCLIST": "Cyclist",
               **{c: "Truck" for c in ("LARGE_VEHICLE", "BUS", "BOX_TRUCK", "TRUCK", "TRUCK_CAB", "VEHICULAR_TRAILER",
                                       "SCHOOL_BUS", "ARTICULATED_BUS", "MESSAGE_BOARD_TRAILER")},
               **{c: "Misc" for c in ("BICYCLE", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER",
                                      "STROLLER", "WHEELCHAIR", "DOG", "OFFICIAL_SIGNALER")}}
NUSCENES_SCAN = "demo/data/nuscenes/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
NUSCENES_INFO = "demo/data/nuscenes/n015-2018-07-24-11-22-45+0800.pkl"
NUSCENES_CLASSES = {"car": "Car", "pedestrian": "Pedestrian", "bicycle": "Misc", "motorcycle": "Misc",
                    **{c: "Truck" for c in ("truck", "bus", "trailer", "construction_vehicle")}}
#: Share of boxes whose written point count must equal the dataset's own (float rounding moves a point or two).
MIN_COUNT_AGREEMENT = 0.9
PANDASET_ROOT = "test/data/002"
PANDASET_FRAMES = tuple(f for f in range(80) if f not in (56, 57, 58, 71))  # 4 MiB or more: not in the snapshot
PANDASET_CLASSES = {"Car": "Car", "Pedestrian": "Pedestrian", "Pedestrian with Object": "Pedestrian",
                    **{c: "Truck" for c in ("Pickup Truck", "Medium-sized Truck", "Semi-truck", "Bus", "Towed Object",
                                            "Other Vehicle - Construction Vehicle", "Other Vehicle - Uncommon",
                                            "Other Vehicle - Pedicab", "Emergency Vehicle", "Train", "Trolley",
                                            "Tram / Subway")},
                    **{c: "Misc" for c in ("Bicycle", "Motorcycle", "Motorized Scooter", "Personal Mobility Device",
                                           "Animals - Other", "Animals - Bird")}}
#: PandaSet's lidar frame has y forward and x to the right; this turns REP 103 coordinates (x forward, y left) into it.
PANDASET_AXES = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def yaw_of(qw: np.ndarray, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
    """Heading about z (rad) of unit quaternions (w, x, y, z), each ``(K,)``."""
    return np.arctan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))


def to_sensor(points: np.ndarray, boxes: np.ndarray, rotation: np.ndarray, translation: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, >=3)`` and boxes ``(K, 7)`` of a frame F into the frame of a sensor whose pose in F is
    ``rotation`` (3, 3, only its heading is applied to the boxes' yaw) and ``translation`` (3,) metres."""
    pts = points.copy()
    pts[:, :3] = (points[:, :3] - translation) @ rotation
    out = boxes.copy()
    out[:, :3] = (boxes[:, :3] - translation) @ rotation
    out[:, 6] = boxes[:, 6] - np.arctan2(rotation[1, 0], rotation[0, 0])
    return pts, out


def check_counts(points: np.ndarray, boxes: np.ndarray, expected: np.ndarray, what: str) -> float:
    """Share of boxes holding exactly their stated number of points (at least ``MIN_COUNT_AGREEMENT``)."""
    counts = points_in_boxes(points[:, :3], boxes).sum(axis=0) if len(boxes) else np.zeros(0)
    share = float(np.mean(np.abs(counts - expected) <= 1)) if len(boxes) else 1.0
    if share < MIN_COUNT_AGREEMENT:
        raise ValueError(f"{what}: only {share:.0%} of the boxes hold their stated point count: the box "
                         "convention was misread")
    return share


def kitti_types(names: list[str], num_points: np.ndarray) -> list[str]:
    """Objects with no lidar point are not evaluated: written as Misc."""
    return [n if k > 0 else "Misc" for n, k in zip(names, num_points, strict=True)]


def write_frame(root: Path, stem: str, points: np.ndarray, boxes: np.ndarray, types: list[str]) -> None:
    """KITTI layout: x y z intensity float32 scan, labels through the simulator's calibration (a camera looking
    forward; the labels here cover every direction, so no image size applies)."""
    for sub in ("velodyne", "label_2", "calib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points[:, :4], dtype=np.float32).tofile(root / "velodyne" / f"{stem}.bin")
    objs = labels_from_lidar_boxes(types, boxes, SIM_CALIB)
    (root / "label_2" / f"{stem}.txt").write_text("".join(format_label_line(o) + "\n" for o in objs))
    (root / "calib" / f"{stem}.txt").write_text(SIM_CALIB.to_text())


def _feather(raw: bytes) -> dict[str, np.ndarray]:
    import pyarrow.feather as feather

    table = feather.read_table(io.BytesIO(raw))
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _pose(row: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray]:
    rot = quat_to_matrix([float(row[k][i]) for k in ("qx", "qy", "qz", "qw")])
    return rot, np.array([float(row[k][i]) for k in ("tx_m", "ty_m", "tz_m")])


def extract_av2(repo: Repo, out: Path) -> int:
    calib = None
    for log in AV2_LOGS:
        try:
            calib = _feather(repo.read(f"{AV2_ROOT}/{log}/calibration/egovehicle_SE3_sensor.feather"))
            break
        except subprocess.CalledProcessError:  # git show: this log has no calibration
            continue
    if calib is None:
        raise ValueError("no Argoverse 2 calibration found")
    rot, trans = _pose(calib, list(calib["sensor_name"]).index("up_lidar"))
    n = 0
    for log, stamps in AV2_LOGS.items():
        ann = _feather(repo.read(f"{AV2_ROOT}/{log}/annotations.feather"))
        for stamp in stamps:
            scan = _feather(repo.read(f"{AV2_ROOT}/{log}/sensors/lidar/{stamp}.feather"))
            points = np.stack([scan[k].astype(np.float32) for k in ("x", "y", "z", "intensity")], axis=1)
            rows = np.flatnonzero((ann["timestamp_ns"] == stamp)
                                  & np.isin(ann["category"], list(AV2_CLASSES)))
            boxes = np.stack([ann["tx_m"][rows], ann["ty_m"][rows], ann["tz_m"][rows], ann["length_m"][rows],
                              ann["width_m"][rows], ann["height_m"][rows],
                              yaw_of(*(ann[k][rows] for k in ("qw", "qx", "qy", "qz")))], axis=1)
            num = ann["num_interior_pts"][rows]
            check_counts(points, boxes, num, f"Argoverse 2 {log} {stamp}")
            points, boxes = to_sensor(points, boxes, rot, trans)
            types = kitti_types([AV2_CLASSES[c] for c in ann["category"][rows]], num)
            write_frame(out / "av2", f"{n:06d}", points, boxes, types)
            n += 1
    return n


class _DataOnly(pickle.Unpickler):
    """Unpickles plain containers, numbers and numpy scalars (what mmdetection3d's info files hold); any other
    global, numpy arrays included, is refused."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name} in a data file")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if name == "dtype":
            return np.dtype
        import numpy._core.multiarray as multiarray

        return multiarray.scalar


def extract_nuscenes(repo: Repo, out: Path) -> int:
    info = _DataOnly(io.BytesIO(repo.read(NUSCENES_INFO))).load()
    names = {v: k for k, v in info["metainfo"]["categories"].items()}
    (sample,) = info["data_list"]
    scan = np.frombuffer(repo.read(NUSCENES_SCAN), dtype=np.float32).reshape(-1, 5)
    kept = [o for o in sample["instances"] if names.get(int(o["bbox_label_3d"])) in NUSCENES_CLASSES]
    boxes = np.array([o["bbox_3d"] for o in kept], dtype=np.float64).reshape(-1, 7)  # x y z(centre) l w h yaw
    num = np.array([int(o["num_lidar_pts"]) for o in kept])
    check_counts(scan, boxes, num, "nuScenes scene-0061")
    lidar2ego = np.asarray(sample["lidar_points"]["lidar2ego"], dtype=np.float64)
    points, boxes = to_sensor(scan[:, :4].astype(np.float64), boxes, lidar2ego[:3, :3].T, np.zeros(3))
    types = kitti_types([NUSCENES_CLASSES[names[int(o["bbox_label_3d"])]] for o in kept], num)
    write_frame(out / "nuscenes", "000000", points, boxes, types)
    return 1


class _Columns:
    """Stands in for a pickled pandas ``DataFrame``, ``BlockManager`` or ``Index``: keeps the state it is given."""

    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _new_index(cls: type, data: dict) -> _Columns:
    index = cls.__new__(cls)
    index.state = data
    return index


class _PandasTable(pickle.Unpickler):
    """Reads a pickled pandas ``DataFrame`` of plain columns (PandaSet's files) into ``{column: (N,) array}``
    without pandas: the pandas classes are replaced by :class:`_Columns`, numpy arrays and dtypes are admitted,
    any other global is refused, so no code in the file runs."""

    STANDINS: ClassVar[dict[tuple[str, str], object]] = {
        ("pandas.core.frame", "DataFrame"): _Columns, ("pandas.core.internals.managers", "BlockManager"): _Columns,
        ("pandas.core.indexes.base", "Index"): _Columns, ("pandas.core.indexes.range", "RangeIndex"): _Columns,
        ("pandas.core.indexes.base", "_new_Index"): _new_index, ("builtins", "slice"): slice,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.STANDINS:
            return self.STANDINS[(module, name)]
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            import numpy._core.multiarray as multiarray

            return multiarray._reconstruct
        raise pickle.UnpicklingError(f"refused global {module}.{name} in a data file")

    def table(self) -> dict[str, np.ndarray]:
        frame = self.load()
        try:
            axes, _, _, extra = frame.state["_data"].state
            names = list(axes[0].state["data"])
            (blocks,) = (v["blocks"] for v in extra.values())
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a pickled table of plain columns: {exc}") from exc
        columns = {}
        for block in blocks:
            rows = block["mgr_locs"]
            indices = range(len(names))[rows] if isinstance(rows, slice) else rows
            for values, k in zip(block["values"], indices, strict=True):
                columns[str(names[int(k)])] = np.asarray(values)
        return columns


def _pandaset_pose(pose: dict) -> tuple[np.ndarray, np.ndarray]:
    """The Pandar64's pose in world coordinates as (rotation of REP 103 sensor axes, translation)."""
    rot = quat_to_matrix([float(pose["heading"][k]) for k in ("x", "y", "z", "w")])
    return rot @ PANDASET_AXES, np.array([pose["position"][k] for k in ("x", "y", "z")], dtype=np.float64)


def pandaset_frame(scan: dict[str, np.ndarray], cuboids: dict[str, np.ndarray], pose: dict
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One PandaSet frame in the Pandar64's REP 103 frame: points ``(N, 4)`` x y z intensity, boxes ``(K, 7)``
    x y z (centre) l w h yaw and their KITTI types.

    PandaSet's cuboid ``yaw`` is 0 when its length points along world +y (``dimensions.y`` is the length,
    ``dimensions.x`` the width); ours is 0 along +x, hence the quarter turn.
    """
    lidar = scan["d"] == 0
    points = np.stack([scan[k][lidar] for k in ("x", "y", "z", "i")], axis=1).astype(np.float64)
    keep = np.flatnonzero((cuboids["cuboids.sensor_id"] != 1) & np.isin(cuboids["label"], list(PANDASET_CLASSES)))
    boxes = np.stack([cuboids["position.x"][keep], cuboids["position.y"][keep], cuboids["position.z"][keep],
                      cuboids["dimensions.y"][keep], cuboids["dimensions.x"][keep], cuboids["dimensions.z"][keep],
                      cuboids["yaw"][keep].astype(np.float64) + np.pi / 2], axis=1).astype(np.float64)
    riders = cuboids.get("attributes.rider_status")  # absent from frames without a bicycle or motorcycle
    ridden = np.zeros(len(keep), bool) if riders is None else riders[keep] == "With Rider"
    names = [("Cyclist" if ride and label == "Bicycle" else PANDASET_CLASSES[label])
             for label, ride in zip(cuboids["label"][keep], ridden, strict=True)]
    # A rider labelled as a pedestrian of its own, on the bicycle or motorcycle, is part of that object.
    vehicles = boxes[ridden]
    if len(vehicles):
        inside = points_in_boxes(boxes[:, :3], vehicles).any(axis=1)
        drop = inside & np.array([n == "Pedestrian" for n in names])
        boxes, names = boxes[~drop], [n for n, d in zip(names, drop, strict=True) if not d]
    rot, trans = _pandaset_pose(pose)
    points, boxes = to_sensor(points, boxes, rot, trans)
    num = points_in_boxes(points[:, :3], boxes).sum(axis=0) if len(boxes) else np.zeros(0, int)
    return points.astype(np.float32), boxes, kitti_types(names, num)


def check_headings(points: np.ndarray, boxes: np.ndarray, types: list[str], what: str) -> None:
    """Cars hold more points with their stated heading than turned by 90 degrees, or the yaw convention was
    misread (PandaSet states no point counts to check against)."""
    cars = boxes[[t == "Car" for t in types]]
    if not len(cars):
        return
    turned = cars.copy()
    turned[:, 6] += np.pi / 2
    stated, across = (int(points_in_boxes(points[:, :3], b).sum()) for b in (cars, turned))
    if stated <= across:
        raise ValueError(f"{what}: the cars hold {stated} points as stated and {across} turned by 90 degrees: the "
                         "heading convention was misread")


def extract_pandaset(repo: Repo, out: Path) -> int:
    import gzip
    import json

    poses = json.loads(repo.read(f"{PANDASET_ROOT}/lidar/poses.json"))
    for n, frame in enumerate(PANDASET_FRAMES):
        scan = _PandasTable(io.BytesIO(gzip.decompress(repo.read(f"{PANDASET_ROOT}/lidar/{frame:02d}.pkl.gz"))))
        cuboids = _PandasTable(io.BytesIO(gzip.decompress(
            repo.read(f"{PANDASET_ROOT}/annotations/cuboids/{frame:02d}.pkl.gz"))))
        points, boxes, types = pandaset_frame(scan.table(), cuboids.table(), poses[frame])
        check_headings(points, boxes, types, f"PandaSet 002 frame {frame}")
        write_frame(out / "pandaset", f"{frame:06d}", points, boxes, types)
        print(f"\rpandaset: {n + 1}/{len(PANDASET_FRAMES)} scans", end="", flush=True)
    print()
    return len(PANDASET_FRAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/real/other_sensors",
                        help="output folder (default out/real/other_sensors)")
    parser.add_argument("--mirrors", default=None, help="folder of local git dirs <owner>+<name>/repo")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cache = out / ".src"
    cache.mkdir(parents=True, exist_ok=True)
    mirrors = Path(args.mirrors) if args.mirrors else None
    n_av2 = extract_av2(Repo("av2", mirrors, cache, REPOS), out)
    n_nus = extract_nuscenes(Repo("mmdet3d", mirrors, cache, REPOS), out)
    n_ps = extract_pandaset(Repo("pandaset", mirrors, cache, REPOS), out)
    print(f"av2: {n_av2} scans, nuscenes: {n_nus} scan, pandaset: {n_ps} scans -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
