"""Detector: LiDAR points in, 3D boxes out. The ROS-free core that the node, replay, evaluation and the
demo share.

Pipeline per frame (one stage each, timed): ``pillarize`` (range crop, pillar ids, decoration) ->
``encode`` (MAPE + scatter to the BEV canvas) -> ``dense`` (fused CRVNet, neck, head; torch or a
TensorRT engine) -> ``decode`` (heat threshold, IoU-rectified scores, boxes; all tasks at once) -> ``nms``
(per task; on a GPU all tasks in one kernel launch). On a GPU with the torch back end, dense + decode replay
as one CUDA graph (timed as ``dense``), and nothing waits for the device until the results are copied out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import DEFAULT_MODEL, ModelConfig, load_model_config
from .model import build_model, checkpoint_meta, load_checkpoint
from .model.checkpoint import CheckpointMeta
from .model.head import Candidates, DenseCandidates, decode_dense
from .mounting import AutoMounting, Mounting, boxes_to_cloud, points_to_model
from .ops import Pillars, decorate, mape_cpu, native, pillarize, pillarize_cpu
from .ops.nms import nms_grouped, suppress_contained
from .pointcloud import even_indices
from .runtime.choices import BACKENDS, CPU_BACKENDS, CPU_PRECISIONS, DEVICES, ON_INSUFFICIENT_MEMORY, PRECISIONS
from .runtime.cpu_features import bf16_units
from .runtime.cuda_graphs import GraphRunner
from .runtime.engine_cache import EngineCache
from .runtime.malloc import keep_freed_memory
from .runtime.memory import (
    InsufficientMemoryError,
    cpu_backend_version,
    estimate_memory,
    fits,
    insufficient_message,
    query_device_memory,
    resolve_backend,
)
from .runtime.profiling import StageClock
from .terrain import follow_terrain

if TYPE_CHECKING:
    from .runtime.onnxruntime_backend import OnnxRuntimeDense
    from .runtime.openvino_backend import OpenVinoDense
    from .runtime.tensorrt_backend import TensorRTDense

log = logging.getLogger(__name__)

STAGES = ("pillarize", "encode", "dense", "decode", "nms")
_NMS_KINDS = {"rotate": "bev", "bev": "bev", "3d": "3d", "circle": "circle", "none": None}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def default_checkpoint(config_name: str) -> Path | None:
    """The checkpoint shipped with the package for a bundled config (``weights/<name>.pt``), if any."""
    path = WEIGHTS_DIR / f"{config_name}.pt"
    return path if path.is_file() else None


@dataclass
class Detections:
    """Detections of one frame.

    Attributes:
        boxes: (K, 7) float32 ``[x, y, z_center, length, width, height, yaw]`` in the input frame (m, rad).
        scores: (K,) float32 in [0, 1], descending within each task.
        labels: (K,) int64 index into :attr:`Detector.class_names`.
        velocities: (K, 2) float32 (vx, vy) m/s for models with a velocity head, else None.
        timings: milliseconds per stage (:data:`STAGES`) and ``total``; on a GPU read from CUDA events, and
            with the CUDA graph ``dense`` includes decode (``decode`` ~0).
        stats: ``num_points`` (given), ``num_points_used`` (after the max_points cap),
            ``num_points_in_range``, ``num_pillars``, ``dropped_points`` (cap), ``dropped_pillars`` (cap).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    velocities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Detector:
    """FastPillars inference on CPU or GPU.

    Args:
        config: bundled model config name, YAML path or :class:`ModelConfig`.
        checkpoint: weights file; None uses the checkpoint shipped for a bundled config and warns (random
            weights) when there is none. Loaded strictly with ``torch.load(weights_only=True)``.
        backend: "torch", "tensorrt", "onnxruntime", "openvino" or "auto": on a GPU TensorRT where installed,
            else torch (with one warning); on the CPU onnxruntime where installed (the faster CPU engine for the
            dense part, BENCHMARKS.md), else OpenVINO, else torch, but OpenVINO first on a processor with AMX
            bf16 units (there bf16 is 3x faster than onnxruntime INT8 with fp32's accuracy,
            ``runtime/cpu_features.py``), and on one with AVX-512 BF16 for weights that rule INT8 out of auto
            (``CheckpointMeta.auto_int8``); OpenVINO with precision "bf16".
        device: "cpu", "cuda" or "auto" (cuda when available).
        precision: "fp32", "fp16" (GPU only), "bf16" (OpenVINO on the CPU: fp32's boxes, fast where the
            processor has native bf16), "int8" (the dense part quantised on the CPU, ``runtime/quantize.py``, run
            by onnxruntime or OpenVINO) or "auto": int8 with onnxruntime (2x faster dense part than fp32, boxes
            within the tolerance of ``test/test_quantize.py``), with OpenVINO bf16 where native else int8, fp32
            elsewhere; fp32 in place of int8 for weights whose checkpoint rules INT8 out of auto (their INT8
            accuracy was not accepted).
        score_threshold: minimum published score, one float or ``{class_name: threshold}`` (classes not in
            the dict use the default); None = the defaults (:attr:`default_score_thresholds`: calibrated
            thresholds stored in the checkpoint, else the config's ``decode.score_threshold``).
        nms_kind, nms_iou_threshold, nms_pre_max, nms_post_max: override the config's NMS (per task).
        nms_containment: override the config's ``decode.nms_containment``: after NMS a box is dropped when at
            least this fraction of its BEV area lies inside a stronger, larger box of another class (a pedestrian
            inside a car); 0 = off.
        max_points: points beyond this are dropped deterministically (an even subsample), counted in
            ``stats["dropped_points"]`` and logged.
        max_pillars: non-empty pillars beyond this are dropped (the ones with fewest points), counted.
        on_insufficient_memory: what to do when the start-up GPU memory check fails: "error" (raise
            :class:`InsufficientMemoryError`), "fp16" (retry at fp16) or "cpu" (run on the CPU).
        engine_cache_dir: where TensorRT engines and INT8 models are cached (default
            ``~/.cache/fastpillars_ros/engines``).
        cuda_graphs: on a GPU with the torch back end, replay dense + decode as a CUDA graph (captured on the
            first frame; a failed capture falls back to eager execution with a warning).
        warmup: run two frames of synthetic points at construction so the first real frame is not slow.
        mounting: the sensor's pose relative to the ground (:class:`~fastpillars_ros.mounting.Mounting`), or
            an :class:`~fastpillars_ros.mounting.AutoMounting` that estimates it from the clouds; None = the
            clouds come from a level sensor at the model's training height. Each cloud is moved into the
            model's frame before pillarization and the boxes are moved back: inputs and outputs stay in
            the cloud's frame.
    """

    def __init__(self, config: str | Path | ModelConfig = DEFAULT_MODEL, checkpoint: str | Path | None = None, *,
                 backend: str = "auto", device: str = "auto", precision: str = "auto",
                 score_threshold: float | Mapping[str, float] | None = None, nms_kind: str | None = None,
                 nms_iou_threshold: float | None = None, nms_pre_max: int | None = None,
                 nms_post_max: int | None = None, nms_containment: float | None = None,
                 max_points: int = 300_000, max_pillars: int | None = None,
                 on_insufficient_memory: str = "error", engine_cache_dir: str | Path | None = None,
                 warmup: bool = True, cuda_graphs: bool = True,
                 mounting: Mounting | AutoMounting | None = None) -> None:
        self.config = load_model_config(config)
        cfg = self.config
        _check_choice("backend", backend, BACKENDS)
        _check_choice("device", device, DEVICES)
        _check_choice("precision", precision, PRECISIONS)
        _check_choice("on_insufficient_memory", on_insufficient_memory, ON_INSUFFICIENT_MEMORY)
        if nms_kind is not None:
            _check_choice("nms_kind", nms_kind, tuple(_NMS_KINDS))
        if max_points <= 0:
            raise ValueError(f"max_points must be a positive number of points, got {max_points}")
        if max_pillars is not None and max_pillars <= 0:
            raise ValueError(f"max_pillars must be positive or None (no cap), got {max_pillars}")
        # Per-frame tensors are MBs each: keep freed memory for the next frame (see runtime/malloc.py).
        keep_freed_memory()
        self.class_names: list[str] = list(cfg.class_names)
        self.point_features: list[str] = list(cfg.point_features)
        self.intensity_scale = float(cfg.intensity_scale)
        self.max_points, self.max_pillars = int(max_points), max_pillars
        d = cfg.decode
        self.nms_kind = _NMS_KINDS[nms_kind or d.nms_kind]
        self.nms_iou_threshold = d.nms_iou_threshold if nms_iou_threshold is None else float(nms_iou_threshold)
        self.nms_pre_max = d.pre_max if nms_pre_max is None else int(nms_pre_max)
        self.nms_post_max = d.post_max if nms_post_max is None else int(nms_post_max)
        self.nms_containment = d.nms_containment if nms_containment is None else float(nms_containment)
        if not 0.0 <= self.nms_containment <= 1.0:
            raise ValueError(f"nms_containment must be in [0, 1] (0: off), got {nms_containment}")
        if mounting is not None and not isinstance(mounting, (Mounting, AutoMounting)):
            raise TypeError(f"mounting must be a Mounting, an AutoMounting or None, got {type(mounting).__name__}")
        # Set after the warm-up: synthetic points must not feed an AutoMounting's ground estimate.
        self.mounting_source: Mounting | AutoMounting | None = None

        self.checkpoint = self._resolve_checkpoint(checkpoint)
        # Read before the arithmetic is chosen: the weights say whether "auto" may run them in INT8.
        meta = checkpoint_meta(self.checkpoint) if self.checkpoint is not None else CheckpointMeta()
        self.device, self.precision = self._resolve_device(device, precision, backend, on_insufficient_memory)
        self.backend = self._resolve_backend(backend, self.precision, meta.auto_int8)
        self.precision = self._resolve_precision(self.precision, self.backend, meta.auto_int8)

        model = build_model(cfg)
        #: Terms the loaded weights are under (stated in the checkpoint; None: not stated or random weights).
        self.weights_licence: str | None = meta.licence
        #: Published score per class when the user sets none: the thresholds stored with the weights for the
        #: precision that runs (set once the dense part exists: a failed engine falls back), else the config's
        #: decode floor.
        self.default_score_thresholds = {c: float(self.config.decode.score_threshold) for c in self.class_names}
        self.set_score_threshold(score_threshold)  # a bad value fails here, before any engine is built
        if self.checkpoint is not None:
            load_checkpoint(model, self.checkpoint, strict=True)
        if not meta.auto_int8:
            self._explain_kept_off_int8(backend, precision)
        model.eval().fuse("full")
        self.model = model.to(self.device)
        explicit = backend != "auto" or precision in CPU_PRECISIONS
        self._dense, self.backend = self._make_dense(self.backend, explicit, engine_cache_dir)
        self.default_score_thresholds.update({c: t for c, t in meta.thresholds_for(self.precision).items()
                                              if c in self.default_score_thresholds})
        self.set_score_threshold(score_threshold)
        self._graphs = (GraphRunner(self._dense_and_decode)
                        if cuda_graphs and self.device == "cuda" and self.backend == "torch" else None)
        self._device_thresholds: tuple[np.ndarray, torch.Tensor] | None = None
        self.warmup_ms: float | None = None
        if warmup:
            t0 = time.perf_counter()
            cloud = self.synthetic_cloud()
            for _ in range(2):
                self.detect(cloud)
            self.warmup_ms = (time.perf_counter() - t0) * 1e3
        self.mounting_source = mounting

    # ---- set-up helpers ------------------------------------------------------------------------
    def _resolve_device(self, device: str, precision: str, backend: str, on_insufficient: str) -> tuple[str, str]:
        if device == "auto":
            cpu_only = backend in CPU_BACKENDS or precision in CPU_PRECISIONS
            device = "cuda" if torch.cuda.is_available() and not cpu_only else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device "
                               "(check the driver and a CUDA build of torch, or use device 'cpu')")
        if device == "cpu":
            if precision == "fp16":
                raise ValueError("precision 'fp16' needs a GPU: use precision 'fp32' or 'int8' on the CPU")
            return device, precision
        if precision in CPU_PRECISIONS:
            raise ValueError(f"precision {precision!r} runs on the CPU (OpenVINO or onnxruntime): use device 'cpu', "
                             "or precision 'fp32'/'fp16' on the GPU")
        precision = "fp32" if precision == "auto" else precision
        dev = query_device_memory()
        # Budget the back end that will run: with "auto" that is TensorRT where it is installed.
        engine_backend = resolve_backend(backend, device)
        est = estimate_memory(self.config, precision, backend=engine_backend, max_points=self.max_points,
                              max_pillars=self.max_pillars)
        if dev is None or fits(est, dev.free):
            return device, precision
        message = insufficient_message(est, dev)
        if on_insufficient == "fp16" and precision != "fp16":
            est16 = estimate_memory(self.config, "fp16", backend=engine_backend, max_points=self.max_points,
                                    max_pillars=self.max_pillars)
            if fits(est16, dev.free):
                log.warning("%s; falling back to fp16 (on_insufficient_memory=fp16)", message)
                return device, "fp16"
        if on_insufficient == "cpu":
            log.warning("%s; falling back to the CPU (on_insufficient_memory=cpu)", message)
            return "cpu", "fp32"
        raise InsufficientMemoryError(message)

    def _resolve_backend(self, backend: str, precision: str, auto_int8: bool) -> str:
        if backend == "auto" and precision == "bf16":
            backend = "openvino"  # the only back end that runs bf16
        if backend in CPU_BACKENDS:
            if self.device != "cpu":
                raise ValueError(f"backend {backend!r} runs the dense part on the CPU: use device 'cpu', or "
                                 "backend 'torch'/'tensorrt' on the GPU")
            if cpu_backend_version(backend) is None:
                raise RuntimeError(f"backend {backend!r} needs the {backend} package (pip install {backend}); "
                                   "or use backend 'auto' or 'torch'")
            return backend
        if backend == "auto" and self.device == "cpu":
            return resolve_backend("auto", "cpu", auto_int8=auto_int8 or precision != "auto")
        if backend == "torch":
            return "torch"
        if self.device != "cuda":
            raise ValueError("backend 'tensorrt' needs device 'cuda' (or 'auto' on a GPU machine)")
        from .runtime.tensorrt_backend import tensorrt_version

        if tensorrt_version() is None:
            if backend == "tensorrt":
                raise RuntimeError("backend 'tensorrt' needs the TensorRT Python package "
                                   "(pip install tensorrt); or use backend 'torch'")
            log.warning("TensorRT is not installed: using the torch backend on the GPU "
                        "(install tensorrt for the faster engine)")
            return "torch"
        return "tensorrt"

    def _explain_kept_off_int8(self, backend: str, precision: str) -> None:
        """Say why weights whose checkpoint keeps ``auto`` off INT8 run as they do: once, where auto would have run
        other weights in INT8, or where INT8 was asked for by name anyway."""
        if self.precision == "int8":
            log.warning("precision int8 was asked for by name, but these weights (%s) were not accepted in INT8 "
                        "(more false objects than in floating point, MODEL_CARD.md): precision 'auto' runs them "
                        "in bf16 or fp32", self.checkpoint)
            return
        if precision != "auto" or self.device != "cpu" or self._resolve_precision(
                "auto", self._resolve_backend(backend, "auto", True), True) != "int8":
            return
        # A processor with bf16 units runs these weights at INT8's speed in bf16, but only through OpenVINO.
        if self.precision == "fp32" and bf16_units() and cpu_backend_version("openvino") is None:
            log.warning("precision auto: fp32, not int8: these weights (%s) were not accepted in INT8 (MODEL_CARD.md); "
                        "this processor has native bf16: pip install openvino to run them in bf16 at INT8's speed "
                        "(fp32 takes 1.7-1.9x as long)", self.checkpoint)
        else:
            log.info("precision auto: %s, not int8: these weights (%s) were not accepted in INT8 (MODEL_CARD.md)",
                     self.precision, self.checkpoint)

    @staticmethod
    def _resolve_precision(precision: str, backend: str, auto_int8: bool) -> str:
        if precision == "auto":
            int8 = "int8" if auto_int8 else "fp32"
            if backend == "openvino":
                from .runtime.openvino_backend import native_bf16

                return "bf16" if native_bf16() else int8
            return int8 if backend == "onnxruntime" else "fp32"
        if precision == "int8" and backend not in CPU_BACKENDS:
            raise ValueError(f"precision 'int8' needs a CPU back end (OpenVINO or onnxruntime), not {backend!r}: "
                             "use backend 'openvino', 'onnxruntime' or 'auto', or precision 'fp32'")
        if precision == "bf16" and backend != "openvino":
            raise ValueError(f"precision 'bf16' needs the openvino back end (pip install openvino), not "
                             f"{backend!r}: use backend 'openvino' or 'auto', or precision 'fp32'")
        return precision

    def _make_dense(self, backend: str, explicit: bool, engine_cache_dir: str | Path | None
                    ) -> tuple[torch.nn.Module | TensorRTDense | OnnxRuntimeDense | OpenVinoDense, str]:
        """The object whose ``forward_dense`` runs the dense part; falls back to torch when a TensorRT
        engine or an onnxruntime session cannot be made and the backend was "auto"."""
        if backend in (*CPU_BACKENDS, "tensorrt"):
            try:
                return self._make_engine(backend, engine_cache_dir), backend
            except Exception as exc:
                if explicit:
                    raise
                log.warning("%s back end unavailable (%s): falling back to the torch backend", backend, exc)
                self.precision = "fp32" if self.precision in CPU_PRECISIONS else self.precision
        if self.precision == "fp16":
            # MAPE stays fp32 (segment softmax sums); only the dense part runs in half precision.
            return _HalfDense(self.model), "torch"
        return self.model, "torch"

    def _make_engine(self, backend: str, engine_cache_dir: str | Path | None
                     ) -> TensorRTDense | OnnxRuntimeDense | OpenVinoDense:
        if backend == "openvino":
            from .runtime.openvino_backend import OpenVinoDense

            return OpenVinoDense(self.model, precision=self.precision, cache=EngineCache(engine_cache_dir))
        if backend == "onnxruntime":
            from .runtime.onnxruntime_backend import OnnxRuntimeDense

            return OnnxRuntimeDense(self.model, precision=self.precision, cache=EngineCache(engine_cache_dir))
        from .runtime.tensorrt_backend import TensorRTDense

        return TensorRTDense(self.model, self.precision, EngineCache(engine_cache_dir))

    def _resolve_checkpoint(self, checkpoint: str | Path | None) -> Path | None:
        if checkpoint is not None and str(checkpoint) != "":
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {path} does not exist")
            return path
        shipped = default_checkpoint(self.config.name)
        if shipped is None:
            log.warning("no checkpoint given and none shipped for model %r: running with RANDOM weights "
                        "(detections are meaningless)", self.config.name)
        return shipped

    def synthetic_cloud(self, n: int = 20_000) -> np.ndarray:
        """Reproducible points spread over the model's range (warm-up input)."""
        r = self.config.pc_range
        rng = np.random.default_rng(0)
        pts = np.empty((n, len(self.point_features)), dtype=np.float32)
        for j, name in enumerate(self.point_features):
            if name in ("x", "y", "z"):
                k = "xyz".index(name)
                pts[:, j] = rng.uniform(r[k], r[k + 3], n)
            elif name == "intensity":
                pts[:, j] = rng.uniform(0.0, self.intensity_scale, n)
            else:
                pts[:, j] = 0.0
        return pts

    # ---- runtime settings -----------------------------------------------------------------------
    def set_score_threshold(self, value: float | Mapping[str, float] | None) -> None:
        """Minimum published score: one float, or per class name (others keep the config default)."""
        per_class = np.array([self.default_score_thresholds[c] for c in self.class_names], dtype=np.float32)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(self.class_names))
            if unknown:
                raise ValueError(f"score thresholds for unknown classes {unknown}; classes: {self.class_names}")
            for name, thr in value.items():
                per_class[self.class_names.index(name)] = _check_unit("score threshold of " + name, thr)
        elif value is not None:
            per_class[:] = _check_unit("score_threshold", value)
        self._score_thresholds = per_class

    @property
    def score_thresholds(self) -> dict[str, float]:
        """The threshold in force per class."""
        return {n: float(t) for n, t in zip(self.class_names, self._score_thresholds, strict=True)}

    @property
    def mounting(self) -> Mounting | None:
        """The mounting in force for the next frame (an :class:`AutoMounting`'s current estimate); None = none."""
        src = self.mounting_source
        return src.current if isinstance(src, AutoMounting) else src

    # ---- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, points: np.ndarray | torch.Tensor) -> Detections:
        """Detect objects in one frame.

        Args:
            points: (N, C) float32, columns in :attr:`point_features` order (x, y, z in metres in the
                model's frame, intensity on the model's :attr:`intensity_scale`, dt in seconds); numpy or
                torch (any device: moved to the detector's device). N may be 0.
        Returns:
            :class:`Detections` (numpy arrays on the host).
        """
        clock = StageClock(self.device == "cuda")
        lap = clock.lap

        pts = self._as_tensor(points)
        if isinstance(self.mounting_source, AutoMounting):
            self.mounting_source.update(points if isinstance(points, np.ndarray) else pts[:, :3].cpu().numpy())
        mounting = self.mounting
        model_height = self.config.sensor_height
        if mounting is not None and mounting.is_identity(model_height):
            mounting = None
        if mounting is not None:
            pts = points_to_model(pts, mounting, model_height)
        pts, terrain = follow_terrain(pts, self.config)
        n_in = int(pts.shape[0])
        stats = {"num_points": n_in, "dropped_points": 0, "dropped_pillars": 0}
        if n_in > self.max_points:
            keep = torch.from_numpy(even_indices(n_in, self.max_points))
            pts = pts[keep.to(pts.device)]
            stats["dropped_points"] = n_in - self.max_points
            log.warning("frame has %d points, more than max_points=%d: dropped %d (even subsample)",
                        n_in, self.max_points, stats["dropped_points"])
        stats["num_points_used"] = int(pts.shape[0])
        cfg = self.config
        pillars = pillarize(pts, cfg.pc_range, cfg.pillar_size)
        pillars, stats["dropped_pillars"] = self._cap_pillars(pillars)
        features = decorate(pts, pillars, cfg.pc_range, cfg.pillar_size)
        stats["num_points_in_range"] = int(pillars.point_index.shape[0])
        stats["num_pillars"] = int(pillars.coords.shape[0])
        lap("pillarize")
        if stats["num_pillars"] == 0:
            # Nothing in range: no object can be there, and the network would only answer with its biases.
            timings = {**clock.timings(), **{s: 0.0 for s in STAGES[1:]}}
            return Detections(np.zeros((0, 7), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                              np.zeros((0, 2), np.float32) if cfg.vel else None, timings, stats)

        canvas = self.model.encode(features, pillars.point_pillar, pillars.coords)
        lap("encode")
        if self._graphs is not None:  # one replay: dense and decode
            dense = self._graphs(canvas)
            lap("dense")
        else:
            outputs = self._dense.forward_dense(canvas)
            lap("dense")
            dense = decode_dense(outputs, cfg)
        lap("decode")
        cand = self._select_on_device(dense) if self.device == "cuda" else self._select(dense.compact()[0])
        lap("nms")
        vel = None if cand.velocities is None else cand.velocities.float().cpu().numpy()
        boxes, scores = cand.boxes.float().cpu().numpy(), cand.scores.float().cpu().numpy()
        labels = cand.labels.cpu().numpy().astype(np.int64)
        if terrain is not None:
            boxes = terrain.raise_boxes(boxes)
        if mounting is not None:
            boxes, vel = boxes_to_cloud(boxes, mounting, model_height, vel)
        return Detections(boxes, scores, labels, vel, clock.timings(), stats)

    def _dense_and_decode(self, canvas: torch.Tensor) -> DenseCandidates:
        """The static part of a frame (fixed shapes, no host synchronisation): what a CUDA graph replays."""
        return decode_dense(self._dense.forward_dense(canvas), self.config)

    def _as_tensor(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(points, torch.Tensor):
            pts = points.to(self.device, torch.float32)
        else:
            arr = np.asarray(points)
            if arr.ndim != 2:
                raise ValueError(f"points must be a 2-D (N, C) array, got shape {arr.shape}")
            pts = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self.device)
        if pts.ndim != 2 or pts.shape[1] != len(self.point_features):
            raise ValueError(f"points must have shape (N, {len(self.point_features)}) with columns "
                             f"{self.point_features}, got {tuple(pts.shape)}")
        return pts

    def _cap_pillars(self, pillars: Pillars) -> tuple[Pillars, int]:
        m = int(pillars.coords.shape[0])
        if self.max_pillars is None or m <= self.max_pillars:
            return pillars, 0
        counts = torch.bincount(pillars.point_pillar, minlength=m)
        # Keep the most populated pillars; sort the survivors back into row-major order.
        kept = torch.sort(torch.argsort(-counts, stable=True)[: self.max_pillars]).values
        new_id = torch.full((m,), -1, dtype=torch.int64, device=counts.device)
        new_id[kept] = torch.arange(kept.numel(), device=counts.device)
        point_new = new_id[pillars.point_pillar]
        on = point_new >= 0
        log.warning("frame has %d pillars, more than max_pillars=%d: dropped %d", m, self.max_pillars,
                    m - self.max_pillars)
        capped = Pillars(pillars.coords[kept], point_new[on], pillars.point_index[on], pillars.grid_shape)
        return capped, m - self.max_pillars

    def _thresholds_on(self, device: torch.device) -> torch.Tensor:
        """The per-class score thresholds as a tensor on ``device``, copied once per change, not per frame."""
        cached = self._device_thresholds
        if cached is None or cached[0] is not self._score_thresholds or cached[1].device != torch.device(device):
            self._device_thresholds = cached = (self._score_thresholds,
                                                torch.from_numpy(self._score_thresholds).to(device))
        return cached[1]

    def _select(self, cand: Candidates) -> Candidates:
        """CPU: NMS per task (the reference algorithm), the containment suppression across classes, then the
        per-class score thresholds.

        Candidates below the lowest threshold are dropped before NMS: greedy NMS and the containment suppression
        let a box suppress only boxes of lower score, and the pre/post caps count boxes by score, so none of them
        could change what is published; the quadratic IoU work then runs on the few boxes near the published
        scores instead of all those above the decoder's floor. The result is the same as over all of them."""
        thresholds = self._thresholds_on(cand.scores.device)
        cand = self._suppress_contained(self._nms(cand.select(cand.scores >= thresholds.min())))
        return cand.select(cand.scores >= thresholds[cand.labels])

    def _select_on_device(self, dense: DenseCandidates) -> Candidates:
        """GPU: NMS of all tasks in one launch on the decoder's block, the lowest score threshold, one select (the
        frame's first wait for the device), the containment suppression, then the per-class thresholds, in
        :meth:`_select`'s order: with NMS by descending score, ties in task order (as
        :func:`~fastpillars_ros.ops.nms_grouped` merges), without it task by task."""
        thresholds = self._thresholds_on(dense.scores.device)
        keep = dense.valid[0]
        if self.nms_kind is not None:
            from .ops.nms_cuda import nms_groups_cuda

            keep = nms_groups_cuda(dense.boxes[0], keep, self.nms_iou_threshold, kind=self.nms_kind,
                                   pre_max=self.nms_pre_max, post_max=self.nms_post_max,
                                   min_radius=self.nms_iou_threshold if self.nms_kind == "circle" else None)
        cand = dense.select(0, keep & (dense.scores[0] >= thresholds.min()))
        if self.nms_kind is not None:
            cand = cand.select(torch.sort(cand.scores, descending=True, stable=True).indices)
        cand = self._suppress_contained(cand)
        return cand.select(cand.scores >= thresholds[cand.labels])

    def _suppress_contained(self, cand: Candidates) -> Candidates:
        """:func:`~fastpillars_ros.ops.nms.suppress_contained` when ``nms_containment`` is set (on the host: the
        candidates after NMS are few)."""
        if not self.nms_containment or len(cand) < 2:
            return cand
        keep = suppress_contained(cand.boxes.cpu(), cand.scores.cpu(), cand.labels.cpu(), self.nms_containment)
        return cand.select(keep.to(cand.scores.device))

    def _nms(self, cand: Candidates) -> Candidates:
        if self.nms_kind is None or len(cand) == 0:
            return cand
        # Circle NMS radius: the config's IoU threshold field holds the distance (m) for kind "circle".
        keep = nms_grouped(cand.boxes, cand.scores, cand.task, self.nms_iou_threshold, kind=self.nms_kind,
                           pre_max=self.nms_pre_max, post_max=self.nms_post_max,
                           min_radius=self.nms_iou_threshold if self.nms_kind == "circle" else None)
        return cand.select(torch.as_tensor(keep, device=cand.scores.device))

    @property
    def cpu_kernels(self) -> str | None:
        """On the CPU, whether pillarize/decorate and MAPE run as compiled C kernels (``ops/native.py``):
        "compiled", or which of them fall back to numpy/torch (slower: BENCHMARKS.md, #17); None on a GPU."""
        if self.device != "cpu":
            return None
        missing = [name for name, kernel in (("pillarize", pillarize_cpu.kernel), ("MAPE", mape_cpu.kernel))
                   if kernel() is None]
        if not missing:
            return "compiled"
        return (f"{' and '.join(missing)} in numpy/torch (no C compiler, {native.SWITCH}=0 or a failed build; "
                "install a C compiler for the faster path)")

    def describe(self) -> str:
        """One line: model, backend, device, precision, CPU kernels, classes, checkpoint and its licence."""
        ckpt = self.checkpoint.name if self.checkpoint else "RANDOM WEIGHTS"
        if self.checkpoint:
            ckpt += f", weights licence: {self.weights_licence or 'not stated'}"
        kernels = f", CPU kernels {self.cpu_kernels}" if self.cpu_kernels else ""
        return (f"model {self.config.name} ({ckpt}), backend {self.backend}, device {self.device}, "
                f"precision {self.precision}{kernels}, classes {self.class_names}, features {self.point_features}")


class _HalfDense(torch.nn.Module):
    """Runs a model's dense part in fp16 on a half copy of its weights; outputs come back as fp32."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        import copy

        self.half_model = copy.deepcopy(model).half()

    def forward_dense(self, canvas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outs = self.half_model.forward_dense(canvas.half())
        return [{k: v.float() for k, v in task.items()} for task in outs]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_unit(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return v
