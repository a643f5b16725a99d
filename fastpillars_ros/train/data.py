"""Training samples: load a frame, filter/augment it, pillarize + decorate it, build its targets; and the
collate function that stacks samples into one batch for ``model.encode(..., batch_index=...)``.

Every random draw of sample ``i`` in epoch ``e`` comes from ``numpy.random.default_rng([seed, e, i])``, and the
sampler hands ``(e, i)`` pairs to the dataset, so batches do not depend on the number of workers or on
which worker made them (deterministic and resumable).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..boxes import points_in_boxes
from ..config import ModelConfig
from ..ops import decorate, pillarize
from ..pointcloud import model_columns
from ..terrain import follow_terrain
from .augment import AugmentConfig, augment, paste_objects
from .losses import BatchTargets
from .targets import HeadGeometry, build_targets, head_geometry

__all__ = ["CameraViewFrames", "ConcatFrames", "EpochSampler", "Frame", "TrainSet", "camera_half_fov", "collate",
           "default_augment", "points_in_box"]

#: ``Frame.extras`` key: half-angle (rad) about the sensor's +x axis outside which the frame has no labels.
LABEL_HALF_FOV = "label_half_fov"


def points_in_box(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The rows of ``points`` inside one box (ours): a cheap axis-aligned pre-crop around the box's
    bounding circle, then the exact test on the few points left."""
    r = 0.5 * float(np.hypot(box[3], box[4]))
    near = np.nonzero((np.abs(points[:, 0] - box[0]) <= r) & (np.abs(points[:, 1] - box[1]) <= r))[0]
    inside = points_in_boxes(points[near], box[None])[:, 0]
    return points[near[inside]]


@dataclass
class Frame:
    """Minimal frame record (what :class:`fastpillars_ros.datasets.kitti.KittiFrame` also provides):
    points ``(N, 4)`` x, y, z, intensity (0..1); boxes ``(K, 7)`` ours; labels ``(K,)`` global class ids."""

    points: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignored_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    extras: dict = field(default_factory=dict)


def camera_half_fov(calib: Any, image_width: int = 1242) -> float:
    """Half the horizontal field of view (rad) of KITTI's left colour camera, the narrower side of its
    principal point: ``min(atan(cx / fx), atan((W - cx) / fx))`` from ``P2`` (about 40.7 degrees on KITTI)."""
    fx, cx = float(calib.p2[0, 0]), float(calib.p2[0, 2])
    return min(math.atan(cx / fx), math.atan((image_width - cx) / fx))


class CameraViewFrames:
    """Frames whose labels cover only the front camera's view (real KITTI): each frame gets
    ``extras[LABEL_HALF_FOV]`` (from its calibration), so that training does not treat the unlabelled rest of
    the scan as background (:class:`TrainSet` masks the heatmap's negatives there)."""

    def __init__(self, source: Sequence[Any], margin: float = math.radians(1.0)) -> None:
        self.source, self.margin = source, margin

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        f = self.source[index]
        f.extras = dict(getattr(f, "extras", None) or {})
        f.extras[LABEL_HALF_FOV] = camera_half_fov(f.calib) - self.margin
        return f


class ConcatFrames:
    """Several random-access frame sources as one (index ``i`` runs through them in order)."""

    def __init__(self, sources: Sequence[Sequence[Any]]) -> None:
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[k][index - int(self.offsets[k])]


@dataclass(frozen=True)
class GtSamplingConfig:
    """Ground-truth sampling: donor frames per sample and at most this many pasted objects per class."""

    donor_frames: int = 2
    max_per_class: tuple[int, ...] = (2, 4, 4)  # car, pedestrian, cyclist (tiny's class order)
    min_points: int = 10


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: a permutation of ``range(n)`` drawn from ``(seed, epoch)`` (or in order
    without shuffling). Call :meth:`set_epoch` before each epoch."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return iter([(self.epoch, int(i)) for i in order])


def default_augment(config: ModelConfig) -> AugmentConfig:
    """The augmentation a model's range calls for.

    A canvas around the sensor sees every heading: mirror front/back and turn scenes by any angle (objects
    turned past a longer side fall off the canvas, as they would in use). A front-view canvas keeps +-45 degrees
    and no front/back mirror, so that objects stay inside it.
    """
    r = config.pc_range
    around = r[0] < 0 < r[3] and r[1] < 0 < r[4]
    return AugmentConfig(flip_x=around, rotation=math.pi if around else math.pi / 4)


class TrainSet(Dataset):
    """Frames -> samples ready for :func:`collate`.

    Args:
        source: random-access frames (``KittiDataset(root, classes=config.class_names)`` or a list of
            :class:`Frame`); ``labels`` must index ``config.class_names``.
        config: model config (range, grid, classes, point features).
        seed: base seed of all random draws.
        augment: apply :func:`augment` (training) or not (validation).
        gt_sampling: paste objects from other frames (see :func:`paste_objects`).
        min_points: GT boxes with fewer LiDAR points are not targets (simulator ``num_points`` when
            present, else counted).
        indices: the frames of ``source`` to use (default all).
    """

    def __init__(self, source: Sequence[Any], config: ModelConfig, seed: int = 0, augment: bool = True,
                 gt_sampling: bool = False, min_points: int = 1, indices: Sequence[int] | None = None,
                 augment_config: AugmentConfig | None = None, gt_config: GtSamplingConfig | None = None,
                 geometry: HeadGeometry | None = None) -> None:
        self.source = source
        self.config = config
        self.seed = int(seed)
        self.augment = augment
        self.gt_sampling = gt_sampling
        self.min_points = min_points
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.augment_config = augment_config or default_augment(config)
        self.gt_config = gt_config or GtSamplingConfig()
        self.geo = geometry or head_geometry(config)

    def __len__(self) -> int:
        return len(self.indices)

    # ---- frame access -----------------------------------------------------------------------
    def _frame(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """points (N, 4) float32, boxes (K, 7), labels (K,), ignored (J, 7), per-box point counts (K,)."""
        return self._load(i)[:5]

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float | None]:
        """:meth:`_frame` plus the frame's labelled half field of view (rad; None = labelled all around)."""
        f = self.source[self.indices[i]]
        pts = np.asarray(f.points, dtype=np.float32)
        boxes = np.asarray(f.boxes, dtype=np.float64).reshape(-1, 7)
        labels = np.asarray(f.labels, dtype=np.int64).reshape(-1)
        ignored = np.asarray(getattr(f, "ignored_boxes", np.zeros((0, 7))), dtype=np.float64).reshape(-1, 7)
        counts = (getattr(f, "extras", None) or {}).get("num_points")
        if counts is None or len(counts) != len(boxes):
            counts = points_in_boxes(pts, boxes).sum(axis=0) if len(boxes) else np.zeros(0, np.int64)
        half_fov = (getattr(f, "extras", None) or {}).get(LABEL_HALF_FOV)
        return pts, boxes, labels, ignored, np.asarray(counts), half_fov

    def _donors(self, i: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int, np.ndarray]]:
        gc = self.gt_config
        n = len(self.indices)
        if n < 2:
            return []
        picks = rng.choice(n - 1, size=min(gc.donor_frames, n - 1), replace=False)
        picks = [int(p) + (p >= i) for p in picks]  # skip the sample itself
        frames = [self._frame(j) for j in picks]
        donors = []
        for c, quota in enumerate(gc.max_per_class):
            # (frame, box) candidates of class c with enough points; a random subset up to the quota.
            cand = [(f, k) for f, (_, _, labels, _, counts) in enumerate(frames)
                    for k in np.nonzero((labels == c) & (counts >= gc.min_points))[0]]
            for o in rng.permutation(len(cand))[:quota]:
                f, k = cand[o]
                pts, boxes = frames[f][0], frames[f][1]
                donors.append((boxes[k], c, points_in_box(pts, boxes[k])))
        return donors

    # ---- sample -------------------------------------------------------------------------------
    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, i])
        cfg = self.config
        pts, boxes, labels, ignored, counts, half_fov = self._load(i)
        # Where the labelled wedge points after augmentation: a probe box on its axis goes through the same
        # flips and turn (the wedge is symmetric about its axis, so its new axis is the probe's direction).
        probe = np.array([[10.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
        keep = counts >= self.min_points
        # Boxes with too few points are neither targets nor negatives: treat them as ignored.
        ignored = np.concatenate([ignored, boxes[~keep]], axis=0)
        boxes, labels = boxes[keep], labels[keep]
        if self.gt_sampling and self.augment:
            pts, boxes, labels = paste_objects(pts, boxes, labels, ignored, self._donors(i, rng))
        if self.augment:
            pts, (boxes, ignored, probe) = augment(pts, [boxes, ignored, probe], rng, self.augment_config)
        flat, terrain = follow_terrain(torch.from_numpy(np.ascontiguousarray(pts)), cfg)
        if terrain is not None:  # the network learns on what it sees in use: heights from the local ground
            pts, boxes, ignored = flat.numpy(), terrain.flatten_boxes(boxes), terrain.flatten_boxes(ignored)
        pts = self._features(pts)
        pillars = pillarize(pts, cfg.pc_range, cfg.pillar_size)
        features = decorate(pts, pillars, cfg.pc_range, cfg.pillar_size)
        targets = build_targets(boxes, labels, cfg, self.geo, ignored_boxes=ignored)
        if half_fov is not None:
            targets.ignore |= outside_wedge(self.geo, math.atan2(probe[0, 1], probe[0, 0]), half_fov)
        return {"features": features, "point_pillar": pillars.point_pillar, "coords": pillars.coords,
                "targets": targets, "num_boxes": int(sum(len(x) for x in targets.ind))}

    def _features(self, pts: np.ndarray) -> np.ndarray:
        """Raw columns in the config's order: x, y, z, intensity (times intensity_scale)[, dt = 0]."""
        return model_columns(pts, self.config.point_features, self.config.intensity_scale)


def outside_wedge(geo: HeadGeometry, axis: float, half_angle: float) -> np.ndarray:
    """``(H, W)`` bool: head cells whose centre's bearing from the sensor is more than ``half_angle`` (rad)
    from ``axis`` (rad, CCW from +x)."""
    x = geo.x_min + (np.arange(geo.width) + 0.5) * geo.cell_x
    y = geo.y_min + (np.arange(geo.height) + 0.5) * geo.cell_y
    bearing = np.arctan2(y[:, None], x[None, :])
    off = np.abs(np.angle(np.exp(1j * (bearing - axis))))
    return off > half_angle


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: points/pillars concatenated (pillar ids offset, ``batch_index`` per pillar), targets
    stacked (heatmaps) or padded to the largest object count of the batch (``mask`` 0 on padding)."""
    b = len(samples)
    offsets = np.cumsum([0] + [len(s["coords"]) for s in samples])
    features = torch.from_numpy(np.concatenate([s["features"] for s in samples], axis=0))
    point_pillar = torch.from_numpy(np.concatenate([s["point_pillar"] + offsets[k] for k, s in enumerate(samples)]))
    coords = torch.from_numpy(np.concatenate([s["coords"] for s in samples], axis=0).astype(np.int64))
    batch_index = torch.from_numpy(np.repeat(np.arange(b, dtype=np.int64), np.diff(offsets)))
    tgts = [s["targets"] for s in samples]
    hm, ind, mask, reg, boxes = [], [], [], [], []
    for t in range(len(tgts[0].hm)):
        hm.append(torch.from_numpy(np.stack([x.hm[t] for x in tgts])))
        k = max(1, max(len(x.ind[t]) for x in tgts))
        r = tgts[0].reg[t].shape[1]
        ind_t = np.zeros((b, k), np.int64)
        mask_t = np.zeros((b, k), np.float32)
        reg_t = np.zeros((b, k, r), np.float32)
        box_t = np.zeros((b, k, 7), np.float32)
        box_t[:, :, 3:6] = 1.0  # padding: harmless unit boxes
        for j, x in enumerate(tgts):
            n = len(x.ind[t])
            ind_t[j, :n], mask_t[j, :n], reg_t[j, :n], box_t[j, :n] = x.ind[t], 1.0, x.reg[t], x.boxes[t]
        ind.append(torch.from_numpy(ind_t))
        mask.append(torch.from_numpy(mask_t))
        reg.append(torch.from_numpy(reg_t))
        boxes.append(torch.from_numpy(box_t))
    ignore = torch.from_numpy(np.stack([x.ignore for x in tgts]))
    return {"features": features, "point_pillar": point_pillar, "coords": coords, "batch_index": batch_index,
            "batch_size": b, "targets": BatchTargets(hm, ind, mask, reg, boxes, ignore),
            "num_points": int(features.shape[0]), "num_boxes": sum(s["num_boxes"] for s in samples)}
