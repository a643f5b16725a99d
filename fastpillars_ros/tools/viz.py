"""Bird's-eye-view pictures of point clouds, ground truth and detections (matplotlib, Agg; no ROS needed).

``fastpillars-ros viz INPUT [--frame K] [--detections FILE_OR_BAG] [--labels DIR_OR_FILE] -o out.png``

INPUT is one of

* a point file: KITTI ``.bin``, nuScenes ``.pcd.bin`` or ``.pcd`` (labels are picked up from a KITTI
  layout next to it: ``../label_2/<stem>.txt`` with ``../calib/<stem>.txt``);
* a KITTI-layout folder (``velodyne/``, ``label_2/``, ``calib/``): frame ``--frame K`` (index in sorted
  order, or the file id such as ``000042``), its labels as ground truth;
* a rosbag2 bag (directory, ``.mcap``, ``.db3``): cloud number ``--frame K``, ground truth from its
  ``/ground_truth`` topic when present (same header stamp).

``--detections`` adds detections from a bag (a Detection3DArray topic) or a detections file
(:mod:`fastpillars_ros.detections_file`, e.g. from ``eval --save-detections``): the frame with the cloud's
stamp, else the one named by the KITTI frame id, else number K. ``--labels`` names a label file or KITTI
folder explicitly.

The picture: x (forward) points up and y (left) to the left, as seen from above; points are coloured by
height; ground truth is drawn as dashed white boxes; detections as solid boxes coloured by class with
"class score" labels; every box has a heading tick from its centre to its front face. :func:`overview`
tiles several frames into one image.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastpillars_ros.colors import class_color

__all__ = [
    "SceneView",
    "add_arguments",
    "draw_bev",
    "load_view",
    "overview",
    "render",
    "run",
]

GT_COLOR = "#ffffff"
BACKGROUND = "#101014"


@dataclass
class SceneView:
    """What one BEV panel shows. Boxes are ``(K, 7)`` ``[x, y, z, l, w, h, yaw]`` in the cloud's frame."""

    points: np.ndarray
    gt_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    gt_names: list[str] = field(default_factory=list)
    det_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    det_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    det_names: list[str] = field(default_factory=list)
    title: str = ""
    stamp_ns: int | None = None


# ---- drawing ---------------------------------------------------------------------------------------------

def _corners_bev(boxes: np.ndarray) -> np.ndarray:
    """(K, 4, 2) BEV corners (x, y): front-left, front-right, rear-right, rear-left."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw = b[:, 3] / 2, b[:, 4] / 2
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64)
    dx = local[None, :, 0] * hl[:, None]
    dy = local[None, :, 1] * hw[:, None]
    x = b[:, 0, None] + dx * c[:, None] - dy * s[:, None]
    y = b[:, 1, None] + dx * s[:, None] + dy * c[:, None]
    return np.stack([x, y], axis=-1)


def auto_range(points: np.ndarray, boxes: Sequence[np.ndarray] = ()) -> tuple[float, float, float, float]:
    """A square-ish ``(xmin, xmax, ymin, ymax)`` that holds most points and every box, sensor included."""
    xs = [0.0]
    ys = [0.0]
    if len(points):
        xs += list(np.percentile(points[:, 0], [0.5, 99.5]))
        ys += list(np.percentile(points[:, 1], [0.5, 99.5]))
    for b in boxes:
        if len(b):
            xs += [float(b[:, 0].min()), float(b[:, 0].max())]
            ys += [float(b[:, 1].min()), float(b[:, 1].max())]
    x0, x1 = max(min(xs) - 2, -100.0), min(max(xs) + 2, 100.0)
    y0, y1 = max(min(ys) - 2, -100.0), min(max(ys) + 2, 100.0)
    # Square: widen the shorter side around its centre, so a square panel has no empty bands.
    half = max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - half, cx + half, cy - half, cy + half


def height_range(clouds: Sequence[np.ndarray]) -> tuple[float, float]:
    """2nd and 98th percentile of the heights of several clouds together (a shared colour scale)."""
    z = np.concatenate([np.asarray(c)[:, 2] for c in clouds if len(c)] or [np.zeros(0)])
    if not len(z):
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(z, [2, 98]))
    return lo, hi if hi > lo else lo + 1.0


def draw_bev(ax, view: SceneView, view_range: Sequence[float] | None = None, *, score_threshold: float = 0.0,
             point_size: float = 0.8, text: bool = True, legend: bool = True, colorbar: bool = False,
             z_range: Sequence[float] | None = None, font_size: float = 6.5) -> None:
    """Draw one :class:`SceneView` into matplotlib axes ``ax`` (x up, y to the left).

    ``z_range``: heights mapped to the ends of the colour map (default: 2nd..98th percentile of the shown
    points).
    """
    from matplotlib.lines import Line2D

    x0, x1, y0, y1 = view_range if view_range is not None else auto_range(
        view.points, (view.gt_boxes, view.det_boxes))
    ax.set_facecolor(BACKGROUND)
    pts = view.points
    if len(pts):
        keep = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
        p = pts[keep]
        z = p[:, 2]
        lo, hi = z_range if z_range is not None else height_range([p])
        mappable = ax.scatter(p[:, 1], p[:, 0], c=np.clip(z, lo, hi), s=point_size, cmap="turbo", linewidths=0,
                              rasterized=True, vmin=lo, vmax=hi if hi > lo else lo + 1)
        if colorbar:
            bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.035, pad=0.01)
            bar.set_label("height z (m)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
    ax.plot([0], [0], marker="^", color="#ff00ff", markersize=6)

    def boxes(b: np.ndarray, colors: list[str], style: str, width: float, labels: list[str] | None) -> None:
        corners = _corners_bev(b)
        for k in range(len(b)):
            poly = np.vstack([corners[k], corners[k][:1]])
            ax.plot(poly[:, 1], poly[:, 0], style, color=colors[k], linewidth=width)
            front = corners[k][:2].mean(axis=0)
            ax.plot([b[k, 1], front[1]], [b[k, 0], front[0]], "-", color=colors[k], linewidth=width)
            if labels is not None and text and x0 <= b[k, 0] <= x1 and y0 <= b[k, 1] <= y1:
                # Left of the box on screen (+y is drawn to the left), on a dark patch for contrast.
                ax.text(corners[k][:, 1].max() + 0.4, b[k, 0], labels[k], color=colors[k], fontsize=font_size,
                        ha="right", va="center", clip_on=True,
                        bbox={"facecolor": BACKGROUND, "edgecolor": "none", "alpha": 0.6, "pad": 0.5})

    gt = np.asarray(view.gt_boxes).reshape(-1, 7)
    boxes(gt, [GT_COLOR] * len(gt), "--", 0.9, None)
    det = np.asarray(view.det_boxes).reshape(-1, 7)
    scores = np.asarray(view.det_scores).reshape(-1)
    keep_det = np.flatnonzero(scores >= score_threshold) if len(det) else np.zeros(0, dtype=int)
    names = [view.det_names[i] for i in keep_det]
    boxes(det[keep_det], [class_color(n) for n in names], "-", 1.3,
          [f"{n} {scores[i]:.2f}" for n, i in zip(names, keep_det, strict=True)])

    ax.set_xlim(y1, y0)  # +y (left) on the left
    ax.set_ylim(x0, x1)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("y (m, left)")
    ax.set_ylabel("x (m, forward)")
    if view.title:
        ax.set_title(view.title, fontsize=9)
    if legend:
        handles = [Line2D([], [], color=GT_COLOR, linestyle="--", label=f"ground truth ({len(gt)})")]
        for name in sorted(set(names)):
            handles.append(Line2D([], [], color=class_color(name), label=f"{name} ({names.count(name)})"))
        leg = ax.legend(handles=handles, loc="upper right", fontsize=7, facecolor="#303036", edgecolor="#606066",
                        labelcolor="white", framealpha=0.85)
        leg.set_zorder(10)


def _figure(width_px: int, height_px: int, dpi: int = 100):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="white")


def render(view: SceneView, path: str | os.PathLike, *, size: tuple[int, int] = (1000, 1000),
           view_range: Sequence[float] | None = None, score_threshold: float = 0.0) -> Path:
    """Write one BEV picture of ``size`` (width, height) pixels to ``path`` (PNG)."""
    fig = _figure(*size)
    ax = fig.add_subplot(1, 1, 1)
    draw_bev(ax, view, view_range, score_threshold=score_threshold, colorbar=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path


def overview(views: Sequence[SceneView], path: str | os.PathLike, *, cols: int = 3, tile_px: int = 500,
             view_range: Sequence[float] | None = None, score_threshold: float = 0.0,
             title: str | None = None) -> Path:
    """Tile several frames into one PNG (``cols`` per row, each tile ``tile_px`` square)."""
    if not views:
        raise ValueError("overview needs at least one frame")
    cols = max(1, min(cols, len(views)))
    rows = math.ceil(len(views) / cols)
    top = 40 if title else 0
    fig = _figure(cols * tile_px, rows * tile_px + top)
    z_range = height_range([v.points[::8] for v in views])
    for i, view in enumerate(views):
        ax = fig.add_subplot(rows, cols, i + 1)
        draw_bev(ax, view, view_range, score_threshold=score_threshold, point_size=0.4, legend=True,
                 z_range=z_range, font_size=5.5)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - top / fig.bbox.height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)
    return path


# ---- inputs --------------------------------------------------------------------------------------------

def _is_bag(path: Path) -> bool:
    return path.suffix in (".mcap", ".db3") or (path.is_dir() and (path / "metadata.yaml").is_file())


def _kitti_index(ds, frame: int | str) -> int:  # type: ignore[no-untyped-def]
    text = str(frame)
    if text in ds.frame_ids:
        return ds.frame_ids.index(text)
    index = int(text)
    if not -len(ds) <= index < len(ds):
        raise ValueError(f"frame {frame} is out of range: the folder has {len(ds)} frames")
    return index % len(ds)


def _labels_from_file(label_file: Path, calib_file: Path | None) -> tuple[np.ndarray, list[str]]:
    from fastpillars_ros.boxes import KittiCalib, kitti_to_lidar
    from fastpillars_ros.datasets.kitti import DEFAULT_CLASS_MAP, read_labels

    if calib_file is None or not calib_file.is_file():
        raise ValueError(f"labels {label_file} need a calib file ({calib_file} not found)")
    calib = KittiCalib.from_file(calib_file)
    # The training classes only, like KittiDataset (Van, Truck, Misc ... and DontCare are left out).
    objs = [o for o in read_labels(label_file) if DEFAULT_CLASS_MAP.get(o.type)]
    if not objs:
        return np.zeros((0, 7)), []
    boxes = kitti_to_lidar(np.array([o.location for o in objs]), np.array([o.dims_hwl for o in objs]),
                           np.array([o.rotation_y for o in objs]), calib)
    names = [str(DEFAULT_CLASS_MAP[o.type]) for o in objs]
    return boxes, names


def _labels(labels: Path, stem: str, frame: int | str) -> tuple[np.ndarray, list[str]]:
    if labels.is_dir():
        from fastpillars_ros.datasets.kitti import KittiDataset

        ds = KittiDataset(labels)
        f = ds[_kitti_index(ds, stem if stem in ds.frame_ids else frame)]
        return f.boxes, list(f.names)
    return _labels_from_file(labels, labels.parent.parent / "calib" / f"{labels.stem}.txt")


def _detections(source: Path, stamp: int | None, sample: str, frame: int
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Detections of the viewed frame from a bag or a detections file: by header stamp, else by dataset
    sample name (KITTI frame id), else the ``frame``-th."""
    from fastpillars_ros.detections_file import find_frame, load_detections

    if _is_bag(source):
        from fastpillars_ros.tools.regression import detections_from_bag

        frames = detections_from_bag(source)
    else:
        frames = load_detections(source)
    f = find_frame(frames, stamp_ns=stamp, sample=sample, index=frame)
    if f is None:
        return np.zeros((0, 7)), np.zeros(0), []
    return f.boxes, f.scores, list(f.names)


def load_view(source: str | os.PathLike, frame: int | str = 0, *, detections: str | os.PathLike | None = None,
              labels: str | os.PathLike | None = None) -> SceneView:
    """Build a :class:`SceneView` from a point file, KITTI folder or bag (see the module docstring)."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"no such input: {src}")
    stamp = None
    gt_boxes, gt_names = np.zeros((0, 7)), []
    if _is_bag(src):
        from fastpillars_ros import bags

        index = int(frame)
        rec = next(bags.read_clouds(src, frames=[index]), None)
        if rec is None:
            raise ValueError(f"{src} has no cloud number {index}")
        points, stamp = rec.points, rec.stamp_ns
        title = f"{src.name} #{index} ({stamp / 1e9:.2f} s, {rec.frame_id})"
        if bags.GROUND_TRUTH_TOPIC in bags.topic_types(src):
            gt = [g for g in bags.read_detections(src) if g.stamp_ns == stamp]
            if gt:
                gt_boxes, gt_names = gt[0].boxes, gt[0].names
        stem = str(index)
    elif src.is_dir():
        from fastpillars_ros.datasets.kitti import KittiDataset

        ds = KittiDataset(src)
        index = _kitti_index(ds, frame)
        f = ds[index]
        points, gt_boxes, gt_names = f.points, f.boxes, list(f.names)
        title = f"{src.name} frame {f.frame_id}"
        stem = f.frame_id
    else:
        from fastpillars_ros.pointcloud import read_points

        points = read_points(src, ("x", "y", "z", "intensity"), defaults={"intensity": 0.0})
        title = src.name
        stem = src.name.split(".")[0]
        label_file = src.parent.parent / "label_2" / f"{stem}.txt"
        if labels is None and label_file.is_file():
            gt_boxes, gt_names = _labels_from_file(label_file, src.parent.parent / "calib" / f"{stem}.txt")
    if labels is not None:
        gt_boxes, gt_names = _labels(Path(labels), stem, frame)
    view = SceneView(points=np.asarray(points), gt_boxes=np.asarray(gt_boxes).reshape(-1, 7), gt_names=list(gt_names),
                     title=title, stamp_ns=stamp)
    if detections is not None:
        view.det_boxes, view.det_scores, view.det_names = _detections(Path(detections), stamp, stem, int(
            frame if str(frame).lstrip("-").isdigit() else 0))
        view.det_boxes = np.asarray(view.det_boxes).reshape(-1, 7)
    return view


# ---- command -------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="point file (.bin/.pcd), KITTI folder or bag (.mcap/.db3/dir)")
    parser.add_argument("--frame", default="0", help="frame index (bag, KITTI folder) or KITTI frame id")
    parser.add_argument("--detections", type=Path, default=None, help="detections: bag or JSON file")
    parser.add_argument("--labels", type=Path, default=None, help="ground truth: KITTI label file or folder")
    parser.add_argument("--range", type=float, nargs=4, default=None, metavar=("XMIN", "XMAX", "YMIN", "YMAX"),
                        help="area shown in metres (default: fit the points and boxes)")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="hide detections below this score")
    parser.add_argument("--size", type=int, nargs=2, default=(1000, 1000), metavar=("W", "H"),
                        help="picture size in pixels (default 1000 1000)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output PNG")


def run(args: argparse.Namespace) -> int:
    try:
        view = load_view(args.input, args.frame, detections=args.detections, labels=args.labels)
    except (FileNotFoundError, ValueError) as exc:
        print(f"viz: {exc}", file=sys.stderr)
        return 1
    path = render(view, args.out, size=tuple(args.size), view_range=args.range,
                  score_threshold=args.score_threshold)
    print(f"wrote {path} ({len(view.points)} points, {len(view.gt_boxes)} ground-truth boxes, "
          f"{int((np.asarray(view.det_scores) >= args.score_threshold).sum())} detections)")
    return 0
