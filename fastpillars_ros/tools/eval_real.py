"""``fastpillars-ros eval-real``: how a model does on the real development scans (``shared/data/real``).

The development set is small (7 KITTI frames, 3 View-of-Delft frames), labelled only in the front camera's view.
For each set the detector runs once per frame, keeping every candidate above the decode floor, and the report
gives, within :data:`MAX_RANGE` metres and the camera's view:

* KITTI R40 BEV AP (car @0.7 and @0.5, pedestrian and cyclist @0.5), as ``fastpillars-ros eval --camera-fov``,
  each with the interval that a bootstrap over the set's frames gives it (:data:`AP_LEVEL`);
* recall at the loose IoU thresholds (:data:`LOOSE_IOU`) among the detections a user sees by default (the model's
  default per-class score thresholds);
* **false objects per frame** at those thresholds: a published detection in the labelled view that overlaps no
  labelled or ignored object of any type at BEV IoU :data:`LOOSE_IOU` of its class, and whose centre does not
  project into a ``DontCare`` image region (those regions have no 3D box);
* the **360-degree check** (KITTI): every scan turned by 180 degrees about z (points and, for comparison, the
  boxes turned back), so the labelled objects lie behind the sensor; car recall at BEV IoU 0.5 should match the
  unturned scans.

A set whose sensor is mounted unlike the model's training sensor (View-of-Delft: pitched ~7 degrees) is moved
into the model's mounting first (:mod:`fastpillars_ros.mounting`). ``--kitti NAME=DIR`` adds other KITTI-layout
folders of the same sensor (the held-out real drives of ``make model``), reported like the KITTI set; ``--pool NAME``
reports their frames also as one set (APs over the union of the frames: more objects, tighter intervals).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fastpillars_ros.evaluation import FrameBoxes, bootstrap_interval, evaluate
from fastpillars_ros.pointcloud import model_columns
from fastpillars_ros.runtime.choices import BACKENDS, PRECISIONS
from fastpillars_ros.tools.eval import DIFFICULTIES, ground_truth, in_camera_fov, project_centres

__all__ = ["DEV_SETS", "KITTI_SET", "LOOSE_IOU", "MAX_RANGE", "Calibrate", "RealSet", "SetReport", "SetRun",
           "add_arguments", "calibrate_thresholds", "false_objects", "in_labelled_view", "run", "run_set", "summarise",
           "threshold_intervals"]

MAX_RANGE = 50.0
#: BEV IoU at which a detection "finds" an object of its class (and is not a false object).
LOOSE_IOU = {"car": 0.5, "pedestrian": 0.25, "cyclist": 0.25}
AP_IOU = {"car": (0.7, 0.5), "pedestrian": (0.5,), "cyclist": (0.5,)}
#: Share of the frame bootstrap (:meth:`~fastpillars_ros.evaluation.ClassMetrics.ap_interval`) that the printed AP
#: intervals hold: with a few dozen frames, APs whose intervals overlap widely are not told apart by the data.
AP_LEVEL = 0.9


@dataclass(frozen=True)
class RealSet:
    """A labelled real folder (KITTI layout) and what differs about its sensor."""

    name: str
    folder: str  # under the real-data folder, or an absolute path (``--kitti NAME=DIR``)
    intensity_max: float  # reflectance range of its .bin files
    image_size: tuple[int, int] | None  # camera 2 (width, height) px: the labelled view (None: all around)
    estimate_mounting: bool  # sensor mounted unlike the model's (estimate height/roll/pitch from the ground)
    turn_check: bool  # run the 180-degree check on it
    max_difficulty: int | None  # KITTI difficulty above which objects are ignored (None: KITTI's rule not used)


KITTI_SET = RealSet("kitti", "kitti/training", 1.0, (1242, 375), False, True, 2)
DEV_SETS = (
    KITTI_SET,
    # View-of-Delft fills the truncation column with 0/1 flags and its images are 3x taller, so KITTI's
    # difficulty rule (pixel heights, truncation fractions) does not apply: every labelled object counts.
    RealSet("vod", "vod/training", 255.0, (1936, 1216), True, False, None),
)


@dataclass
class SetReport:
    """Results of one set: per-frame detections (all candidates), ground truth and the derived figures."""

    name: str
    num_frames: int
    num_objects: dict[str, int]
    ap: dict[str, float]  # "car@0.7" -> AP (NaN: no objects)
    ap_interval: dict[str, tuple[float, float]]  # "car@0.7" -> 90 % bootstrap interval over frames (NaN: none)
    recall: dict[str, float]  # class -> recall at LOOSE_IOU among published detections
    false_per_frame: float
    false_by_class: dict[str, int]
    published_per_frame: float
    turned_car_recall: float | None = None
    turned_false_per_frame: float | None = None
    mounting: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if math.isnan(v) else round(v, 4)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, tuple):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in self.__dict__.items()}


def _turn(points: np.ndarray) -> np.ndarray:
    out = points.copy()
    out[:, :2] *= -1.0
    return out


def _turn_boxes_back(boxes: np.ndarray) -> np.ndarray:
    out = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    out[:, :2] *= -1.0
    out[:, 6] = np.angle(np.exp(1j * (out[:, 6] + math.pi)))
    return out


def in_labelled_view(boxes: np.ndarray, calib: Any, image_size: tuple[int, int] | None) -> np.ndarray:
    """(K,) bool: the box centre lies within :data:`MAX_RANGE` metres and projects into camera 2's image (any
    direction when ``image_size`` is None: labels all around the sensor)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    near = np.hypot(b[:, 0], b[:, 1]) <= MAX_RANGE
    return near if image_size is None else near & in_camera_fov(b, calib, image_size)


def _in_dontcare(boxes: np.ndarray, frame: Any) -> np.ndarray:
    """(K,) bool: the box centre projects into one of the frame's DontCare image rectangles."""
    rects = np.asarray(frame.dontcare_bboxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes) or not len(rects):
        return np.zeros(len(boxes), dtype=bool)
    _, u, v = project_centres(boxes, frame.calib)
    inside = ((u[:, None] >= rects[None, :, 0]) & (u[:, None] <= rects[None, :, 2])
              & (v[:, None] >= rects[None, :, 1]) & (v[:, None] <= rects[None, :, 3]))
    return inside.any(axis=1)


def false_objects(pred: FrameBoxes, frame: Any, class_names: Sequence[str]) -> np.ndarray:
    """(K,) bool over ``pred``: detections that overlap no labelled or ignored object of the frame (any type)
    at BEV IoU :data:`LOOSE_IOU` of the detection's class and do not point into a DontCare region."""
    from fastpillars_ros.ops.iou import rotated_iou_bev

    objects = np.concatenate([np.asarray(frame.boxes, np.float64).reshape(-1, 7),
                              np.asarray(frame.ignored_boxes, np.float64).reshape(-1, 7)])
    if not len(pred.boxes):
        return np.zeros(0, dtype=bool)
    need = np.array([LOOSE_IOU.get(class_names[int(c)], 0.5) for c in pred.labels])
    best = (np.asarray(rotated_iou_bev(pred.boxes, objects)).max(axis=1) if len(objects)
            else np.zeros(len(pred.boxes)))
    return (best < need) & ~_in_dontcare(pred.boxes, frame)


def _select(fb: FrameBoxes, keep: np.ndarray) -> FrameBoxes:
    return FrameBoxes(fb.boxes[keep], fb.labels[keep], None if fb.scores is None else fb.scores[keep])


def _published(pred: FrameBoxes, thresholds: np.ndarray) -> FrameBoxes:
    return _select(pred, pred.scores >= thresholds[pred.labels])  # type: ignore[operator]


@dataclass
class SetRun:
    """One set's detections, frame by frame: what a :class:`SetReport` is computed from.

    Runs of several sets pool by concatenating their frames (:func:`summarise`), so a pooled AP is the AP over
    the union of the frames, not an average of the sets' APs.
    """

    class_names: list[str]
    preds: list[FrameBoxes]  # every candidate above the decode floor in the labelled view
    truths: list[FrameBoxes]  # labels (objects out of view or past MAX_RANGE ignored)
    published: list[FrameBoxes]  # the candidates at the default thresholds
    false: list[np.ndarray]  # (K_i,) bool over each frame's published detections
    turned: list[FrameBoxes] | None = None  # the 180-degree check's published detections, turned back
    turned_false: int = 0
    mounting: list[str] = field(default_factory=list)
    pictures: list[dict[str, Any]] = field(default_factory=list)


def run_set(detector: Any, real: RealSet, root: Path, *, progress: bool = False, pictures: bool = False) -> SetRun:
    """Run ``detector`` (built with the decode floor as its threshold) on every frame of one set.

    Scans of a set with ``estimate_mounting`` are moved into the model's mounting first by a ground-plane fit of
    each scan (:func:`fastpillars_ros.mounting.estimate_ground`, what ``mounting.auto`` does on the first
    cloud). With ``pictures`` the result also holds, per frame, the material for pictures (points, ground truth,
    published detections, which of them are false); without, no scan is kept.
    """
    from tqdm import tqdm

    from fastpillars_ros.datasets.kitti import KittiDataset
    from fastpillars_ros.mounting import estimate_ground

    class_names = list(detector.class_names)
    thresholds = np.array([detector.default_score_thresholds[c] for c in class_names])
    dataset = KittiDataset(root / real.folder, classes=class_names)
    gain = detector.intensity_scale / real.intensity_max
    run = SetRun(class_names, [], [], [], [], [] if real.turn_check else None)
    for i in tqdm(range(len(dataset)), desc=f"eval-real {real.name}", unit="frame", file=sys.stderr,
                  disable=not progress):
        frame = dataset[i]
        pts = model_columns(frame.points, detector.point_features, gain)
        if real.estimate_mounting:
            est = estimate_ground(frame.points)
            detector.mounting_source = None if est is None else est.mounting
            m = detector.mounting_source
            run.mounting.append("no ground found" if m is None else f"{m.height:.2f} m, roll "
                                f"{math.degrees(m.roll):.1f} deg, pitch {math.degrees(m.pitch):.1f} deg")
        try:
            out = detector.detect(pts)
        finally:
            detector.mounting_source = None
        pred = FrameBoxes(out.boxes.astype(np.float64), out.labels.astype(np.int64), out.scores.astype(np.float64))
        gt = ground_truth(frame, class_names, real.max_difficulty)
        pred = _select(pred, in_labelled_view(pred.boxes, frame.calib, real.image_size))
        gt.ignore = gt.ignore | ~in_labelled_view(gt.boxes, frame.calib, real.image_size)  # type: ignore[operator]
        pub = _published(pred, thresholds)
        false = false_objects(pub, frame, class_names)
        run.preds.append(pred)
        run.truths.append(gt)
        run.published.append(pub)
        run.false.append(false)
        if pictures:
            run.pictures.append({"frame_id": frame.frame_id, "points": frame.points, "gt_boxes": frame.boxes,
                                 "gt_names": list(frame.names), "det_boxes": pub.boxes,
                                 "det_scores": pub.scores, "det_names": [class_names[int(c)] for c in pub.labels],
                                 "false": false})
        if run.turned is not None:
            out_t = detector.detect(_turn(pts))
            pred_t = FrameBoxes(_turn_boxes_back(out_t.boxes), out_t.labels.astype(np.int64),
                                out_t.scores.astype(np.float64))
            pred_t = _select(pred_t, in_labelled_view(pred_t.boxes, frame.calib, real.image_size))
            pub_t = _published(pred_t, thresholds)
            run.turned_false += int(false_objects(pub_t, frame, class_names).sum())
            run.turned.append(pub_t)
    return run


def summarise(name: str, runs: Sequence[SetRun]) -> SetReport:
    """The report of one set's run, or of several runs' frames pooled into one set (APs over their union)."""
    class_names = runs[0].class_names
    preds = [p for r in runs for p in r.preds]
    truths = [t for r in runs for t in r.truths]
    pubs = [p for r in runs for p in r.published]
    n_false = np.zeros(len(class_names), dtype=np.int64)
    for pub, false in zip(pubs, (f for r in runs for f in r.false), strict=True):
        np.add.at(n_false, pub.labels[false], 1)
    ap_res = evaluate(preds, truths, class_names, iou_thresholds={c: AP_IOU.get(c, (0.5,)) for c in class_names})
    ap_metrics = {f"{c}@{t:g}": ap_res.get(c, "bev", t) for c in class_names for t in AP_IOU.get(c, (0.5,))}
    loose = evaluate(pubs, truths, class_names, iou_thresholds={c: LOOSE_IOU.get(c, 0.5) for c in class_names})
    n = len(preds)
    report = SetReport(name=name, num_frames=n,
                       num_objects={c: loose.get(c, "bev", LOOSE_IOU.get(c, 0.5)).num_gt for c in class_names},
                       ap={k: m.ap for k, m in ap_metrics.items()},
                       ap_interval={k: m.ap_interval(AP_LEVEL) for k, m in ap_metrics.items()},
                       recall={c: loose.get(c, "bev", LOOSE_IOU.get(c, 0.5)).max_recall for c in class_names},
                       false_per_frame=float(n_false.sum()) / max(n, 1),
                       false_by_class={c: int(k) for c, k in zip(class_names, n_false, strict=True)},
                       published_per_frame=sum(len(p.boxes) for p in pubs) / max(n, 1),
                       mounting=[m for r in runs for m in r.mounting] or None)
    if all(r.turned is not None for r in runs):
        turned = [p for r in runs for p in r.turned or ()]
        t_res = evaluate(turned, truths, class_names, iou_thresholds={"car": 0.5})
        report.turned_car_recall = t_res.get("car", "bev", 0.5).max_recall
        report.turned_false_per_frame = sum(r.turned_false for r in runs) / max(n, 1)
    return report


def format_reports(reports: Sequence[SetReport], thresholds: dict[str, float], difficulty: str = "hard") -> str:
    """The development-set table (one block per set); ``difficulty``: the KITTI sets' (see ``--difficulty``)."""
    lines = ["default score thresholds: " + ", ".join(f"{c} {t:.2f}" for c, t in thresholds.items()),
             f"objects within {MAX_RANGE:g} m in the labelled view (the camera's for KITTI and View-of-Delft, all "
             "around for --all-around sets); loose IoU "
             + ", ".join(f"{c} {t:g}" for c, t in LOOSE_IOU.items())
             + ("; every KITTI object counts" if difficulty == "all"
                else f"; KITTI objects up to difficulty {difficulty} (harder ones ignored)")]
    for r in reports:
        objs = ", ".join(f"{n} {c}" for c, n in r.num_objects.items())
        lines.append(f"\n[{r.name}] {r.num_frames} frames, {objs}")
        lines.append("  BEV AP (R40):      " + "  ".join(
            f"{k} {'n/a' if math.isnan(v) else f'{v:5.1f}'}" for k, v in r.ap.items()))
        lines.append(f"  {100 * AP_LEVEL:g} % interval:     " + "  ".join(
            f"{k} {'n/a' if math.isnan(lo) else f'{lo:.1f}-{hi:.1f}'}" for k, (lo, hi) in r.ap_interval.items()))
        lines.append("  recall (default):  " + "  ".join(
            f"{c} {'n/a' if math.isnan(v) else f'{100 * v:5.1f}%'}" for c, v in r.recall.items()))
        lines.append(f"  false objects/frame (default thresholds): {r.false_per_frame:.2f} "
                     f"({', '.join(f'{c} {k}' for c, k in r.false_by_class.items())}); "
                     f"published/frame {r.published_per_frame:.1f}")
        if r.turned_car_recall is not None:
            lines.append(f"  turned 180 deg:    car recall@0.5 {100 * r.turned_car_recall:5.1f}% "
                         f"(unturned {100 * r.recall['car'] if 'car' in r.recall else float('nan'):5.1f}%), "
                         f"false objects/frame {r.turned_false_per_frame:.2f}")
        if r.mounting:
            lines.append("  mounting (estimated per scan): " + "; ".join(r.mounting))
    return "\n".join(lines)


def _pictures(frames: list[dict[str, Any]], set_name: str, path: Path) -> Path:
    from fastpillars_ros.tools.viz import SceneView, overview

    views = [SceneView(points=f["points"], gt_boxes=f["gt_boxes"], gt_names=f["gt_names"], det_boxes=f["det_boxes"],
                       det_scores=f["det_scores"], det_names=f["det_names"],
                       title=f"{set_name} {f['frame_id']}: {len(f['det_boxes'])} published, "
                             f"{int(np.sum(f['false']))} false")
             for f in frames]
    return overview(views, path, cols=min(4, len(views)), view_range=(-MAX_RANGE, MAX_RANGE, -MAX_RANGE, MAX_RANGE),
                    title=f"{set_name}: published detections (default thresholds) and labels (white)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="model config (default: the embedded default)")
    parser.add_argument("--checkpoint", default=None, help="weights (default: the ones shipped for --config)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="dense-part back end (default auto: the Detector's default path)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: the Detector's default precision for the back end (the default path)")
    parser.add_argument("--real-data", default=None,
                        help="the real-data folder (default: shared/data/real beside the repository)")
    parser.add_argument("--sets", default=",".join(s.name for s in DEV_SETS),
                        help="comma-separated development sets (default: all)")
    parser.add_argument("--kitti", action="append", default=[], metavar="NAME=DIR",
                        help="also evaluate a KITTI-layout folder of KITTI HDL-64 scans with camera-view labels (e.g. "
                             "the held-out drives that `make model` extracts), as the kitti set is; repeatable")
    parser.add_argument("--all-around", action="append", default=[], metavar="NAME=DIR",
                        help="also evaluate a KITTI-layout folder of another lidar labelled all around the sensor "
                             "(intensity 0..255, mounting estimated per scan by a ground fit; e.g. the Argoverse 2, "
                             "nuScenes and PandaSet scans of scripts/extract_other_sensors.py); repeatable")
    parser.add_argument("--pool", default=None, metavar="NAME",
                        help="also report the frames of every --kitti set pooled as one set NAME (its APs are over "
                             "the union of the frames: more objects, tighter intervals than any one set's)")
    parser.add_argument("--difficulty", default="hard", choices=list(DIFFICULTIES),
                        help="KITTI sets: ground truth harder than this is ignored (default hard, the issue's "
                             "measure; moderate is how published KITTI results are usually quoted); View-of-Delft "
                             "counts every object")
    parser.add_argument("--out", default=None, help="JSON report")
    parser.add_argument("--pictures", default=None, metavar="DIR", help="BEV pictures per set (PNG) into DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_real_data() -> Path:
    """``shared/data/real`` beside the repository (the development checkout's layout)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def run(args: argparse.Namespace) -> int:
    from fastpillars_ros.config import DEFAULT_MODEL
    from fastpillars_ros.detector import Detector

    root = Path(args.real_data) if args.real_data else default_real_data()
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    sets = [s for s in DEV_SETS if s.name in wanted]
    unknown = sorted(set(wanted) - {s.name for s in DEV_SETS})
    if unknown or not (sets or args.kitti or args.all_around):
        print(f"eval-real: unknown set(s) {unknown}; sets: {[s.name for s in DEV_SETS]}", file=sys.stderr)
        return 2
    if sets and not (root / sets[0].folder).is_dir():
        print(f"eval-real: real data not found under {root} (give --real-data)", file=sys.stderr)
        return 2
    added: set[str] = set()
    difficulty = DIFFICULTIES[args.difficulty]
    sets = [s if s.max_difficulty is None else replace(s, max_difficulty=difficulty) for s in sets]
    #: flag -> (the set a folder becomes, where such folders come from)
    folder_sets = {
        "kitti": (replace(KITTI_SET, max_difficulty=difficulty),
                  "the held-out drives come from `python scripts/extract_real_kitti.py`"),
        "all_around": (RealSet("", "", 255.0, None, True, False, None),
                       "the other lidars' scans come from `python scripts/extract_other_sensors.py`"),
    }
    for flag, (template, source) in folder_sets.items():
        for item in getattr(args, flag):
            name, sep, folder = item.partition("=")
            if not sep or not name or not (Path(folder) / "velodyne").is_dir():
                print(f"eval-real: --{flag.replace('_', '-')} {item!r}: give NAME=DIR, DIR a KITTI-layout folder "
                      f"(velodyne/, label_2/, calib/); {source}", file=sys.stderr)
                return 2
            sets.append(replace(template, name=name, folder=str(Path(folder).resolve())))
            if flag == "kitti":
                added.add(name)
    if args.pool and len(added) < 2:
        print("eval-real: --pool needs two or more --kitti sets to pool", file=sys.stderr)
        return 2
    from fastpillars_ros.config import load_model_config

    config = load_model_config(args.config or DEFAULT_MODEL)
    detector = Detector(config, args.checkpoint, backend=args.backend, precision=args.precision,
                        score_threshold=config.decode.score_threshold)
    reports, kitti_runs = [], []
    for real in sets:
        set_run = run_set(detector, real, root, progress=not args.no_progress, pictures=bool(args.pictures))
        reports.append(summarise(real.name, [set_run]))
        if real.name in added:
            kitti_runs.append(set_run)
        if args.pictures:
            _pictures(set_run.pictures, real.name, Path(args.pictures) / f"real_{real.name}.png")
    if args.pool:
        reports.append(summarise(args.pool, kitti_runs))
    defaults = detector.default_score_thresholds
    print(detector.describe())
    print(format_reports(reports, defaults, args.difficulty))
    if args.out:
        Path(args.out).write_text(json.dumps({"config": config.name, "checkpoint": args.checkpoint,
                                              "thresholds": defaults, "kitti_difficulty": args.difficulty,
                                              "sets": [r.to_dict() for r in reports]}, indent=1))
    return 0


def parse_class_values(text: str, class_names: Sequence[str], flag: str) -> dict[str, float]:
    """``CLASS=N[,CLASS=N...]`` -> ``{class: N}``; ValueError naming ``flag`` on bad syntax or an unknown class."""
    out = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None or name.strip() not in class_names:
            raise ValueError(f"{flag} {text!r}: expected CLASS=N[,CLASS=N] with CLASS one of {list(class_names)}")
        out[name.strip()] = number
    return out


def calibrate_thresholds(scores: dict[str, list[float]], num_frames: int, budget: dict[str, float],
                         floor: float) -> dict[str, float]:
    """Per class, the lowest score threshold (>= ``floor``) at which the false objects of that class number at most
    ``budget[class]`` per frame: just above the score of the ``floor(budget * num_frames) + 1``-th highest false
    object (``scores[class]``: the scores of a class's false objects over ``num_frames`` frames)."""
    out = {}
    for name, allowed in budget.items():
        ranked = sorted(scores.get(name, []), reverse=True)
        k = math.floor(allowed * num_frames + 1e-9)
        out[name] = float(floor) if k >= len(ranked) else float(np.nextafter(np.float32(ranked[k]), np.float32(1)))
    return out


def threshold_intervals(frames: list[dict[str, list[float]]], budget: dict[str, float], floor: float,
                        level: float = 0.9, resamples: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """How much :func:`calibrate_thresholds` depends on the frames at hand: per class, ``(low, high)`` holding the
    middle ``level`` of the thresholds calibrated on bootstrap resamples of the frames (``frames[i]``: class ->
    scores of frame i's false objects). Deterministic for a given ``seed``."""
    n = len(frames)
    if n == 0:
        return {c: (float(floor), float(floor)) for c in budget}
    names = list(budget)

    def thresholds(times: np.ndarray) -> np.ndarray:
        pooled = {c: [s for f, t in zip(frames, times, strict=True) for s in f.get(c, []) * int(t)] for c in names}
        chosen = calibrate_thresholds(pooled, n, budget, floor)
        return np.array([chosen[c] for c in names])

    low, high = bootstrap_interval(n, thresholds, level, resamples, seed)
    return {c: (float(lo), float(hi)) for c, lo, hi in zip(names, low, high, strict=True)}


class Calibrate:
    """``fastpillars-ros calibrate``: default score thresholds per class from the false objects on held-out real
    scans (KITTI layout, labelled in the camera's view), stored in the checkpoint with ``--write``."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default=None, help="model config (default: the embedded default)")
        parser.add_argument("--checkpoint", required=True, help="weights to calibrate")
        parser.add_argument("--data", action="append", required=True,
                            help="held-out real KITTI-layout folder (camera-view labels); repeatable; never the "
                                 "development or evaluation frames")
        parser.add_argument("--false-per-frame", default="car=0.5,pedestrian=0.4,cyclist=0.2",
                            help="allowed false objects per frame and class (default car=0.5,pedestrian=0.4,"
                                 "cyclist=0.2)")
        parser.add_argument("--backend", default="auto", choices=BACKENDS, help="dense-part back end (default auto)")
        parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                            help="dense-part precision (default auto): int8 calibrates the thresholds of INT8 "
                                 "dense parts, fp32 those of floating-point ones, bf16 and fp16 a set of their own "
                                 "(used before fp32's)")
        parser.add_argument("--write", action="store_true",
                            help="store the thresholds in the checkpoint, as the set of the precision that ran")
        parser.add_argument("--auto-int8", action=argparse.BooleanOptionalAction, default=None,
                            help="with --write, also store whether precision 'auto' may run these weights in INT8 "
                                 "(--no-auto-int8 where their INT8 accuracy was not accepted: auto then runs bf16 "
                                 "or fp32, and int8 runs only by name); default: leave it as it is")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from fastpillars_ros.config import DEFAULT_MODEL, load_model_config
        from fastpillars_ros.detector import Detector
        from fastpillars_ros.model import update_checkpoint_meta

        config = load_model_config(args.config or DEFAULT_MODEL)
        if args.auto_int8 is not None and not args.write:
            print("calibrate: --auto-int8/--no-auto-int8 is stored in the checkpoint: add --write", file=sys.stderr)
            return 2
        try:
            budget = parse_class_values(args.false_per_frame, config.class_names, "--false-per-frame")
        except ValueError as exc:
            print(f"calibrate: {exc}", file=sys.stderr)
            return 2
        floor = config.decode.score_threshold
        detector = Detector(config, args.checkpoint, score_threshold=floor, backend=args.backend,
                            precision=args.precision)
        # Every candidate is "published" at the floor, so that each false object's score is seen.
        detector.default_score_thresholds = {c: floor for c in detector.class_names}
        by_frame: list[dict[str, list[float]]] = []  # class -> scores of each frame's false objects
        for folder in args.data:
            real = RealSet(Path(folder).name, str(Path(folder).resolve()), 1.0, (1242, 375), False, False, 2)
            set_run = run_set(detector, real, Path("/"))
            for pub, false in zip(set_run.published, set_run.false, strict=True):
                false_scores: dict[str, list[float]] = {}
                for label, score in zip(pub.labels[false], pub.scores[false], strict=True):  # type: ignore[index]
                    false_scores.setdefault(detector.class_names[int(label)], []).append(float(score))
                by_frame.append(false_scores)
        scores = {c: [s for f in by_frame for s in f.get(c, [])] for c in budget}
        frames = len(by_frame)
        chosen = calibrate_thresholds(scores, frames, budget, floor)
        spread = threshold_intervals(by_frame, budget, floor)
        print(f"{frames} frames; false objects at the floor {floor:g}: "
              + ", ".join(f"{c} {len(scores.get(c, []))}" for c in budget))
        int8 = detector.precision == "int8"  # which of the checkpoint's threshold sets this calibrates
        arithmetic = f"{'int8' if int8 else 'floating-point'} dense part: {detector.backend} {detector.precision}"
        print(f"thresholds ({arithmetic}): " + ", ".join(f"{c} {t:.3f}" for c, t in chosen.items()))
        # A threshold set from few frames is itself uncertain; say how much (e.g. 10 frames of one drive).
        print("90 % interval over a bootstrap of the frames: "
              + ", ".join(f"{c} {lo:.3f}-{hi:.3f}" for c, (lo, hi) in spread.items()))
        if args.write:
            # Each arithmetic publishes at its own calibration: INT8 and fp32 have their sets, bf16 and fp16 one
            # each beside them (otherwise they use fp32's).
            if int8 or detector.precision == "fp32":
                key = "score_thresholds" if int8 else "float_score_thresholds"
                entries: dict[str, Any] = {key: chosen}
            else:
                key = f"precision_score_thresholds[{detector.precision}]"
                entries = {"precision_score_thresholds": {detector.precision: chosen}}
            if args.auto_int8 is not None:
                entries["auto_int8"] = args.auto_int8
                key += f", auto_int8 {args.auto_int8}"
            update_checkpoint_meta(args.checkpoint, **entries)  # one rewrite of the checkpoint
            print(f"written to {args.checkpoint} ({key})")
        return 0
