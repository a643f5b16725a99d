"""Detector: LiDAR points in, 3D boxes out. The ROS-free core that the node, replay, evaluation and the
demo share.

Pipeline per frame (one stage each, timed): ``pillarize`` (range crop, pillar ids, decoration) ->
``encode`` (MAPE + scatter to the BEV canvas) -> ``dense`` (fused CRVNet, neck, head; torch or a
TensorRT engine) -> ``decode`` (heat threshold, IoU-rectified scores, boxes) -> ``nms`` (per task).
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

from .config import ModelConfig, load_model_config
from .model import build_model, load_checkpoint
from .model.head import Candidates
from .ops import Pillars, decorate, pillarize
from .ops.nms import nms_grouped
from .pointcloud import even_indices
from .runtime.choices import BACKENDS, DEVICES, ON_INSUFFICIENT_MEMORY, PRECISIONS
from .runtime.malloc import keep_freed_memory
from .runtime.memory import (
    InsufficientMemoryError,
    estimate_memory,
    fits,
    insufficient_message,
    query_device_memory,
)

if TYPE_CHECKING:
    from .runtime.onnxruntime_backend import OnnxRuntimeDense
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
        timings: milliseconds per stage (:data:`STAGES`) and ``total``.
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
        backend: "torch", "tensorrt", "onnxruntime" or "auto": on a GPU TensorRT where installed, else torch
            (with one warning); on the CPU onnxruntime where installed (the faster CPU engine for the dense
            part, BENCHMARKS.md), else torch.
        device: "cpu", "cuda" or "auto" (cuda when available).
        precision: "fp32" or "fp16" (fp16 needs a GPU).
        score_threshold: minimum published score, one float or ``{class_name: threshold}`` (classes not in
            the dict use the config's ``decode.score_threshold``); None = the config's value for all.
        nms_kind, nms_iou_threshold, nms_pre_max, nms_post_max: override the config's NMS (per task).
        max_points: points beyond this are dropped deterministically (an even subsample), counted in
            ``stats["dropped_points"]`` and logged.
        max_pillars: non-empty pillars beyond this are dropped (the ones with fewest points), counted.
        on_insufficient_memory: what to do when the start-up GPU memory check fails: "error" (raise
            :class:`InsufficientMemoryError`), "fp16" (retry at fp16) or "cpu" (run on the CPU).
        engine_cache_dir: where TensorRT engines are cached (default ``~/.cache/fastpillars_ros/engines``).
        warmup: run two frames of synthetic points at construction so the first real frame is not slow.
    """

    def __init__(self, config: str | Path | ModelConfig = "tiny", checkpoint: str | Path | None = None, *,
                 backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 score_threshold: float | Mapping[str, float] | None = None, nms_kind: str | None = None,
                 nms_iou_threshold: float | None = None, nms_pre_max: int | None = None,
                 nms_post_max: int | None = None, max_points: int = 300_000, max_pillars: int | None = None,
                 on_insufficient_memory: str = "error", engine_cache_dir: str | Path | None = None,
                 warmup: bool = True) -> None:
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
        self.set_score_threshold(score_threshold)

        self.device, self.precision = self._resolve_device(device, precision, backend, on_insufficient_memory)
        self.backend = self._resolve_backend(backend)
        self.checkpoint = self._resolve_checkpoint(checkpoint)

        model = build_model(cfg)
        if self.checkpoint is not None:
            load_checkpoint(model, self.checkpoint, strict=True)
        model.eval().fuse("full")
        self.model = model.to(self.device)
        self._dense, self.backend = self._make_dense(self.backend, backend != "auto", engine_cache_dir)
        self.warmup_ms: float | None = None
        if warmup:
            t0 = time.perf_counter()
            cloud = self.synthetic_cloud()
            for _ in range(2):
                self.detect(cloud)
            self.warmup_ms = (time.perf_counter() - t0) * 1e3

    # ---- set-up helpers ------------------------------------------------------------------------
    def _resolve_device(self, device: str, precision: str, backend: str, on_insufficient: str) -> tuple[str, str]:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() and backend != "onnxruntime" else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device "
                               "(check the driver and a CUDA build of torch, or use device 'cpu')")
        if device == "cpu":
            if precision == "fp16":
                raise ValueError("precision 'fp16' needs a GPU: use precision 'fp32' on the CPU")
            return device, precision
        dev = query_device_memory()
        engine_backend = "tensorrt" if backend == "tensorrt" else "torch"
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

    def _resolve_backend(self, backend: str) -> str:
        from .runtime.onnxruntime_backend import onnxruntime_version

        if backend == "onnxruntime" or (backend == "auto" and self.device == "cpu"):
            if self.device != "cpu":
                raise ValueError("backend 'onnxruntime' runs the dense part on the CPU: use device 'cpu', or "
                                 "backend 'torch'/'tensorrt' on the GPU")
            if onnxruntime_version() is not None:
                return "onnxruntime"
            if backend == "onnxruntime":
                raise RuntimeError("backend 'onnxruntime' needs the onnxruntime package (pip install "
                                   "onnxruntime); or use backend 'torch'")
            return "torch"
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

    def _make_dense(self, backend: str, explicit: bool, engine_cache_dir: str | Path | None
                    ) -> tuple[torch.nn.Module | TensorRTDense | OnnxRuntimeDense, str]:
        """The object whose ``forward_dense`` runs the dense part; falls back to torch when a TensorRT
        engine or an onnxruntime session cannot be made and the backend was "auto"."""
        if backend in ("onnxruntime", "tensorrt"):
            try:
                return self._make_engine(backend, engine_cache_dir), backend
            except Exception as exc:
                if explicit:
                    raise
                log.warning("%s back end unavailable (%s): falling back to the torch backend", backend, exc)
        if self.precision == "fp16":
            # MAPE stays fp32 (segment softmax sums); only the dense part runs in half precision.
            return _HalfDense(self.model), "torch"
        return self.model, "torch"

    def _make_engine(self, backend: str, engine_cache_dir: str | Path | None) -> TensorRTDense | OnnxRuntimeDense:
        if backend == "onnxruntime":
            from .runtime.onnxruntime_backend import OnnxRuntimeDense

            return OnnxRuntimeDense(self.model)
        from .runtime.engine_cache import EngineCache
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
        default = self.config.decode.score_threshold
        per_class = np.full(len(self.class_names), default, dtype=np.float32)
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
        timings: dict[str, float] = {}
        cuda = self.device == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t_start = t = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal t
            sync()
            now = time.perf_counter()
            timings[stage] = (now - t) * 1e3
            t = now

        pts = self._as_tensor(points)
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
            timings.update({s: 0.0 for s in STAGES[1:]}, total=(time.perf_counter() - t_start) * 1e3)
            return Detections(np.zeros((0, 7), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                              np.zeros((0, 2), np.float32) if cfg.vel else None, timings, stats)

        canvas = self.model.encode(features, pillars.point_pillar, pillars.coords)
        lap("encode")
        outputs = self._dense.forward_dense(canvas)
        lap("dense")
        (cand,) = self.model.decode(outputs)
        lap("decode")
        cand = self._nms(cand)
        keep = cand.scores >= torch.from_numpy(self._score_thresholds).to(cand.scores.device)[cand.labels]
        cand = cand.select(keep)
        lap("nms")
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        vel = None if cand.velocities is None else cand.velocities.float().cpu().numpy()
        return Detections(cand.boxes.float().cpu().numpy(), cand.scores.float().cpu().numpy(),
                          cand.labels.cpu().numpy().astype(np.int64), vel, timings, stats)

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

    def _nms(self, cand: Candidates) -> Candidates:
        if self.nms_kind is None or len(cand) == 0:
            return cand
        # Circle NMS radius: the config's IoU threshold field holds the distance (m) for kind "circle".
        keep = nms_grouped(cand.boxes, cand.scores, cand.task, self.nms_iou_threshold, kind=self.nms_kind,
                           pre_max=self.nms_pre_max, post_max=self.nms_post_max,
                           min_radius=self.nms_iou_threshold if self.nms_kind == "circle" else None)
        return cand.select(torch.as_tensor(keep, device=cand.scores.device))

    def describe(self) -> str:
        """One line: model, backend, device, precision, classes, checkpoint."""
        ckpt = self.checkpoint.name if self.checkpoint else "RANDOM WEIGHTS"
        return (f"model {self.config.name} ({ckpt}), backend {self.backend}, device {self.device}, "
                f"precision {self.precision}, classes {self.class_names}, features {self.point_features}")


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
