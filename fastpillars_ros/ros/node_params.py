"""Parameters of the detector node: schema, defaults and validation, without ROS.

One table (:data:`SPECS`) describes every parameter the node ``fastpillars_detector`` declares: its
ROS name, default, type, allowed values, whether it may change while the node runs, and a description.
The node builds its ``ParameterDescriptor`` s from it, ``config/fastpillars.yaml`` lists the same
defaults (a test keeps them equal), the launcher and docs read it, and :func:`parse` turns the values a
user gave (params file, ``-p name:=value``) into a validated :class:`NodeParams` or raises
:class:`ParamError` naming *every* bad value, what is allowed and how to fix it.

The table is the only statement of the parameters: :func:`coerce` (one, with each spec's own extra rule in
``ParamSpec.check``) validates from it, :class:`NodeParams` holds its values (dotted groups as dicts, e.g.
``NodeParams.sweeps``; a test keeps the dataclass equal to the table), :func:`default_yaml` writes the
parameter file and :func:`parameters_markdown` the README table. Multi-sweep parameters (``sweeps.*``) are in
it too; :mod:`fastpillars_ros.ros.sweep_params` turns their values into the sweep settings object.

Per-class score thresholds (``score_thresholds.<class>``) depend on the model's classes, so they are not
in the table; :func:`check_class_thresholds` validates them once the model config is known.

``python -m fastpillars_ros.ros.node_params`` prints the default parameter file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastpillars_ros.config import DEFAULT_MODEL, available_models
from fastpillars_ros.mounting import AutoMounting, Mounting
from fastpillars_ros.runtime.choices import BACKENDS, DEVICES, PRECISIONS
from fastpillars_ros.runtime.choices import ON_INSUFFICIENT_MEMORY as MEMORY_POLICIES

#: Node name (parameter files may also key the node's parameters by it; the shipped one uses ``/**``).
NODE_NAME = "fastpillars_detector"

NMS_KINDS = ("", "rotate", "3d", "circle", "none")
MISSING_FIELD_POLICIES = ("fill", "error")
#: Point features a model may ask for (fastpillars_ros.config.KNOWN_POINT_FEATURES) that the node maps.
FEATURES = ("x", "y", "z", "intensity", "dt")
#: Features whose absence can be filled with a constant (x, y, z never can).
FILLABLE = ("intensity", "dt")
#: Prefix of the per-class threshold parameters.
CLASS_THRESHOLD_PREFIX = "score_thresholds."
#: Names other nodes' shared parameter files commonly carry, and rclpy's own: never reported as unknown.
FOREIGN_OK_PREFIXES = ("use_sim_time", "qos_overrides.", "start_type_description_service")


class ParamError(ValueError):
    """One or more parameter values are invalid; ``errors`` holds one complete sentence per problem."""

    def __init__(self, errors: Iterable[str]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} invalid parameter value(s) for {NODE_NAME}:\n{lines}")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    ``kind`` is the ROS type: ``"string"``, ``"double"``, ``"integer"``, ``"bool"``, or ``"scale"`` (a
    number or the string ``"auto"``, declared with dynamic typing). ``choices`` lists allowed strings;
    ``range`` is the inclusive ``(low, high)`` range of a number (the ROS descriptor's range);
    ``runtime`` marks values that may change while the node runs (the rest are read-only).
    """

    name: str
    default: Any
    kind: str
    description: str
    choices: tuple[str, ...] | None = None
    range: tuple[float, float] | None = None
    runtime: bool = False
    #: How a value is interpreted beyond the range (shown in errors and docs), e.g. the meaning of -1.
    note: str = ""
    #: A rule beyond kind, choices and range: gets the coerced value, returns what is allowed when it is broken.
    check: Callable[[Any], str | None] | None = None

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "scale":
            text = "'auto' or a number > 0"
        elif self.range is not None:
            lo, hi = self.range
            text = f"{'an integer' if self.kind == 'integer' else 'a number'} in [{_fmt(lo)}, {_fmt(hi)}]"
        elif self.kind == "string":
            text = "a string"
        else:
            text = f"a {self.kind}"
        return f"{text} ({self.note})" if self.note else text


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _field_list(value: str) -> str | None:
    if value.strip() and not all(n.strip() for n in value.split(",")):
        return "comma-separated field names without empty entries"
    return None


def _coordinate_field(value: str) -> str | None:
    return "a field name (x, y and z cannot be filled with a constant)" if not value.strip() else _field_list(value)


def _not_empty(allowed: str) -> Callable[[str], str | None]:
    return lambda value: None if value.strip() else allowed


SWEEPS_PREFIX = "sweeps."
SWEEPS_ENABLED = ("auto", "true", "false")
POSE_SOURCES = ("auto", "tf2", "odometry")
POSE_FAILURE_POLICIES = ("skip", "single")
SENSOR_TO_BASE_KEYS = ("x", "y", "z", "roll", "pitch", "yaw")
EGO_BOX_KEYS = ("x_min", "x_max", "y_min", "y_max")
_S2B = "Static transform from the lidar frame to the odometry's child (base) frame, used by the odometry pose source"
_XYZ_NOTE = "a field name, or comma-separated candidates tried in order"
_FIELD_NOTE = _XYZ_NOTE + "; empty = always use the fill value"

SPECS: tuple[ParamSpec, ...] = (
    # --- model and runtime --------------------------------------------------------------------------
    ParamSpec("model", DEFAULT_MODEL, "string",
              f"Model config: a bundled name ({', '.join(available_models())}) or a path to a model .yaml.",
              check=_not_empty("a bundled model name (e.g. tiny) or a path to a model .yaml")),
    ParamSpec("checkpoint", "", "string",
              "Weights file (.pt/.pth) matching the model; empty = the weights shipped for the model "
              "(random weights with a warning when none are shipped)."),
    ParamSpec("backend", "auto", "string",
              "Inference backend for the dense network: auto (on a GPU TensorRT when installed, else torch; on "
              "the CPU onnxruntime when installed, else OpenVINO, else torch; OpenVINO first where the CPU has "
              "AMX, or AVX-512 BF16 for weights not accepted in INT8, such as the default's), torch, tensorrt, "
              "onnxruntime or openvino (CPU only; bf16 with fp32's accuracy, or int8 1.5x faster).",
              choices=BACKENDS),
    ParamSpec("device", "auto", "string", "auto (cuda when available, else cpu), cpu or cuda.", choices=DEVICES),
    ParamSpec("precision", "auto", "string",
              "Numeric precision: auto (int8 with onnxruntime; with openvino bf16 where the CPU has native bf16, "
              "else int8; fp32 elsewhere, and in place of int8 for weights not accepted in INT8, such as the "
              "default's), fp32, fp16 (GPU), bf16 (openvino) or int8 (onnxruntime or openvino).",
              choices=PRECISIONS),
    ParamSpec("on_insufficient_memory", "error", "string",
              "What the start-up GPU memory check does when the model does not fit: error (exit with the "
              "numbers), fp16 (retry in half precision) or cpu (fall back to the CPU).",
              choices=MEMORY_POLICIES),
    ParamSpec("warmup", True, "bool", "Run a warm-up inference at start-up so the first frame is not slow."),
    ParamSpec("cpu_threads", 0, "integer",
              "Threads torch and the CPU engine (onnxruntime, OpenVINO) may use for CPU inference; on a CPU "
              "shared with other nodes fewer threads avoid spin-waiting slowdowns.", range=(0, 256),
              note="0 = torch's default (one per core)"),
    # --- detection output ---------------------------------------------------------------------------
    ParamSpec("score_threshold", -1.0, "double",
              "Minimum score of a published detection, all classes (per class: score_thresholds.<class>).",
              range=(-1.0, 1.0), runtime=True, note="negative = the model's default, calibrated with its weights"),
    ParamSpec("nms_kind", "", "string",
              "Non-maximum suppression: rotate (rotated BEV IoU), 3d (3D IoU), circle (centre distance), none.",
              choices=NMS_KINDS, note="empty = the model config's choice"),
    ParamSpec("nms_iou_threshold", -1.0, "double", "IoU above which the weaker of two boxes is suppressed.",
              range=(-1.0, 1.0), note="negative = the model config's default; 0 is not allowed",
              check=lambda v: "a number in [-1, 1] (negative = the model config's default; 0 is not allowed)"
              if v == 0.0 else None),
    ParamSpec("nms_pre_max", 0, "integer", "Candidates kept (by score) before NMS.", range=(0, 100000),
              note="0 = the model config's default"),
    ParamSpec("nms_post_max", 0, "integer", "Detections kept after NMS.", range=(0, 10000),
              note="0 = the model config's default"),
    ParamSpec("nms_containment", -1.0, "double",
              "Across classes, the weaker, smaller box is dropped when this share of its BEV area lies inside a "
              "stronger box (a pedestrian inside a car).", range=(-1.0, 1.0),
              note="negative = the model config's default (tiny360: 0.5); 0 = off"),
    # --- input ----------------------------------------------------------------------------------------
    ParamSpec("fields.x", "x", "string", "PointCloud2 field giving the model's x (metres).", note=_XYZ_NOTE,
              check=_coordinate_field),
    ParamSpec("fields.y", "y", "string", "PointCloud2 field giving the model's y (metres).", note=_XYZ_NOTE,
              check=_coordinate_field),
    ParamSpec("fields.z", "z", "string", "PointCloud2 field giving the model's z (metres).", note=_XYZ_NOTE,
              check=_coordinate_field),
    ParamSpec("fields.intensity", "intensity", "string",
              "PointCloud2 field giving the model's intensity (e.g. 'intensity,reflectivity').", note=_FIELD_NOTE,
              check=_field_list),
    ParamSpec("fields.dt", "", "string",
              "PointCloud2 field giving the model's dt (time lag of a past sweep, seconds); single sweeps use "
              "the fill value.", note=_FIELD_NOTE, check=_field_list),
    ParamSpec("missing_field", "fill", "string",
              "When a cloud lacks a mapped non-coordinate field: fill (use fill.<feature>, warn once per "
              "layout) or error (reject the frame). Missing x/y/z always rejects the frame.",
              choices=MISSING_FIELD_POLICIES),
    ParamSpec("fill.intensity", 0.0, "double", "Intensity used when the cloud has no intensity field "
              "(in the model's scale).", range=(-1e6, 1e6)),
    ParamSpec("fill.dt", 0.0, "double", "dt used when the cloud has no dt field (seconds).", range=(-1e6, 1e6)),
    ParamSpec("intensity_scale", "auto", "scale",
              "Multiplier from the cloud's intensity to the model's (e.g. 0.00392 for 0..255 into a 0..1 "
              "model). auto: infer the cloud's range (uint8 or values above 1 mean 0..255) and map it onto "
              "the model's.", runtime=True),
    ParamSpec("clip_intensity", True, "bool",
              "Clip scaled intensity to [0, the model's intensity scale].", runtime=True),
    ParamSpec("max_points", 300000, "integer",
              "Points per frame kept for inference; larger clouds are subsampled evenly (deterministic) "
              "with a counted warning.", range=(1000, 10_000_000)),
    ParamSpec("max_pillars", 0, "integer", "Cap on non-empty pillars per frame.", range=(0, 1_000_000),
              note="0 = the model config's default"),
    ParamSpec("expected_frame_id", "", "string",
              "Reject clouds whose header.frame_id differs (the model assumes its training sensor frame).",
              runtime=True, note="empty = accept any frame"),
    ParamSpec("max_input_age_ms", 500.0, "double",
              "Drop (and count) a frame whose header stamp is older than this when its turn comes; uses the "
              "ROS clock (sim time with use_sim_time).", range=(0.0, 600000.0), runtime=True,
              note="0 = never drop for age"),
    # --- mounting -------------------------------------------------------------------------------------
    ParamSpec("mounting.height", 0.0, "double",
              "Height of the lidar's origin above the ground below it (metres); the cloud is moved to the "
              "model's training height before detection and the boxes are moved back.", range=(0.0, 100.0),
              note="0 = the model's own training height, no change"),
    ParamSpec("mounting.roll", 0.0, "double",
              "Roll of the lidar relative to level ground (radians, REP 103: about x, left side up positive).",
              range=(-1.5, 1.5)),
    ParamSpec("mounting.pitch", 0.0, "double",
              "Pitch of the lidar relative to level ground (radians, about y, positive = nose down).",
              range=(-1.5, 1.5)),
    ParamSpec("mounting.frame", "", "string",
              "A tf frame whose z = 0 is the ground (e.g. base_footprint): height, roll and pitch come from "
              "the transform cloud frame -> this frame, looked up once per cloud frame.",
              note="empty = use mounting.height/roll/pitch"),
    ParamSpec("mounting.auto", False, "bool",
              "Estimate height, roll and pitch from the ground plane of the clouds (robust plane fit of the first "
              "clouds, refined slowly; estimate and quality in /diagnostics)."),
    # --- output ---------------------------------------------------------------------------------------
    ParamSpec("output_frame", "", "string",
              "Frame of the published detections and markers: boxes are transformed into it with tf2 at the "
              "cloud's stamp (a frame without a transform gets an empty answer).", runtime=True,
              note="empty = the input cloud's frame"),
    ParamSpec("transform_timeout_s", 0.05, "double",
              "How long a tf2 lookup (output_frame, mounting.frame) may wait for the transform.", range=(0.0, 1.0),
              runtime=True),
    ParamSpec("publish_markers", True, "bool", "Publish RViz markers on detection_markers.", runtime=True),
    ParamSpec("marker_lifetime", 0.0, "double", "Lifetime of published markers in seconds.",
              range=(0.0, 3600.0), runtime=True, note="0 = until replaced"),
    ParamSpec("skip_when_unsubscribed", True, "bool",
              "Skip inference (still counting frames) while nobody subscribes to detections or markers.",
              runtime=True),
    ParamSpec("diagnostics_period", 1.0, "double", "Seconds between /diagnostics messages.",
              range=(0.1, 60.0)),
    ParamSpec("warning_period", 5.0, "double",
              "Minimum seconds between two log warnings of the same kind (e.g. a bad input).",
              range=(0.0, 3600.0), runtime=True),
    # --- multi-sweep input (fastpillars_ros.ros.sweep_params) ---------------------------------------------
    ParamSpec("sweeps.enabled", "auto", "string",
              "Accumulate ego-motion-compensated past sweeps into each cloud (with a dt column): auto = when "
              "the model was trained on several sweeps (model config num_sweeps > 1).", choices=SWEEPS_ENABLED),
    ParamSpec("sweeps.num_sweeps", 0, "integer", "Sweeps per model input, the current one included.",
              range=(0, 50), note="0 = the model config's num_sweeps"),
    ParamSpec("sweeps.pose_source", "auto", "string",
              "Where sensor poses come from: tf2 (lookup_transform fixed_frame <- cloud frame), odometry "
              "(nav_msgs/Odometry on sweeps.odometry_topic + sweeps.sensor_to_base), auto (tf2 when "
              "tf2_ros is installed, else odometry).", choices=POSE_SOURCES),
    ParamSpec("sweeps.fixed_frame", "odom", "string",
              "Fixed frame in which sensor poses are compared (tf2 target frame; expected odometry frame).",
              check=_not_empty("a non-empty frame name")),
    ParamSpec("sweeps.odometry_topic", "odom", "string", "nav_msgs/Odometry topic of the odometry pose source.",
              check=_not_empty("a non-empty topic name")),
    *(ParamSpec(f"sweeps.sensor_to_base.{k}", 0.0, "double", f"{_S2B}: {k} ({'metres' if len(k) == 1 else 'radians'}).",
                range=(-1000.0, 1000.0) if len(k) == 1 else (-2 * math.pi, 2 * math.pi))
      for k in SENSOR_TO_BASE_KEYS),
    ParamSpec("sweeps.lookup_timeout_s", 0.05, "double",
              "How long a pose lookup may wait for tf / odometry to reach the cloud's stamp.", range=(0.0, 1.0)),
    ParamSpec("sweeps.odometry_tolerance_s", 0.05, "double",
              "How far a cloud stamp may lie beyond the odometry history (extrapolated) before the pose "
              "is refused.", range=(0.0, 1.0)),
    ParamSpec("sweeps.on_pose_failure", "skip", "string",
              "When a cloud's pose is unknown: skip (no detections for that frame, history kept) or single "
              "(detect on that cloud alone with dt 0 and restart the history).", choices=POSE_FAILURE_POLICIES),
    ParamSpec("sweeps.max_time_gap_s", 0.5, "double",
              "A larger stamp step between consecutive clouds restarts the history.", range=(0.01, 60.0)),
    ParamSpec("sweeps.max_jump_m", 5.0, "double",
              "Sensor motion between consecutive clouds above which the history restarts (relocalisation).",
              range=(0.01, 1000.0)),
    ParamSpec("sweeps.max_jump_rad", 0.5, "double",
              "Sensor rotation between consecutive clouds (radians) above which the history restarts.",
              range=(0.001, math.pi)),
    ParamSpec("sweeps.max_span_s", 0.0, "double",
              "Past sweeps older than this (dt, seconds) are left out (e.g. 0.5 to match nuScenes' 20 Hz "
              "span with a 10 Hz lidar).", range=(0.0, 60.0), note="0 = only num_sweeps limits"),
    *(ParamSpec(f"sweeps.ego_box.{k}", v, "double",
                f"Own-vehicle box in each past sweep's lidar frame (metres): past-sweep points with "
                f"x_min < x < x_max and y_min < y < y_max are dropped; {k}.",
                range=(-100.0, 100.0), note="x_min >= x_max or y_min >= y_max switches the filter off")
      for k, v in zip(EGO_BOX_KEYS, (-1.0, 1.0, -1.0, 1.0), strict=True)),
    ParamSpec("sweeps.max_points", 600000, "integer",
              "Cap on accumulated points: the oldest sweeps lose points first (deterministic).",
              range=(0, 10_000_000), note="0 = no cap"),
)

SPEC_BY_NAME: dict[str, ParamSpec] = {s.name: s for s in SPECS}
#: Parameters that no longer exist, with what replaces them: giving one is an error, not a silent change.
REMOVED = {"frame_id": "it relabelled the output header without moving the boxes; set output_frame instead "
                       "(the boxes are transformed into it with tf2)"}
def group_defaults(group: str) -> dict[str, Any]:
    """``{name after 'group.': default}`` of a dotted group of :data:`SPECS` (e.g. ``sweeps``)."""
    prefix = group + "."
    return {s.name[len(prefix):]: s.default for s in SPECS if s.name.startswith(prefix)}


def _field_default(feature: str) -> str:
    return SPEC_BY_NAME[f"fields.{feature}"].default


@dataclass
class NodeParams:
    """Validated node parameters (attribute per :data:`SPECS` entry; dotted names become dicts)."""

    model: str = DEFAULT_MODEL
    checkpoint: str = ""
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    on_insufficient_memory: str = "error"
    warmup: bool = True
    cpu_threads: int = 0
    score_threshold: float = -1.0
    score_thresholds: dict[str, float] = field(default_factory=dict)
    nms_kind: str = ""
    nms_iou_threshold: float = -1.0
    nms_pre_max: int = 0
    nms_post_max: int = 0
    nms_containment: float = -1.0
    fields: dict[str, str] = field(default_factory=lambda: {f: _field_default(f) for f in FEATURES})
    missing_field: str = "fill"
    fill: dict[str, float] = field(default_factory=lambda: {"intensity": 0.0, "dt": 0.0})
    intensity_scale: str | float = "auto"
    clip_intensity: bool = True
    max_points: int = 300000
    max_pillars: int = 0
    expected_frame_id: str = ""
    max_input_age_ms: float = 500.0
    mounting: dict[str, Any] = field(default_factory=lambda: {"height": 0.0, "roll": 0.0, "pitch": 0.0,
                                                              "frame": "", "auto": False})
    output_frame: str = ""
    transform_timeout_s: float = 0.05
    publish_markers: bool = True
    marker_lifetime: float = 0.0
    skip_when_unsubscribed: bool = True
    diagnostics_period: float = 1.0
    warning_period: float = 5.0
    #: ``sweeps.*`` values keyed by the part after ``sweeps.`` (settings object: fastpillars_ros.ros.sweep_params).
    sweeps: dict[str, Any] = field(default_factory=lambda: group_defaults("sweeps"))

    # --- flat ROS names <-> attributes ---------------------------------------------------------------
    def to_parameters(self) -> dict[str, Any]:
        """Flat ``{ROS name: value}`` of every parameter in :data:`SPECS` plus the per-class thresholds."""
        out: dict[str, Any] = {}
        for spec in SPECS:
            out[spec.name] = self.get(spec.name)
        for cls, value in self.score_thresholds.items():
            out[CLASS_THRESHOLD_PREFIX + cls] = value
        return out

    def get(self, name: str) -> Any:
        """Value of the parameter with ROS name ``name``."""
        if name.startswith(CLASS_THRESHOLD_PREFIX):
            return self.score_thresholds.get(name[len(CLASS_THRESHOLD_PREFIX):], -1.0)
        group, _, key = name.partition(".")
        if key:
            return getattr(self, group)[key]
        return getattr(self, name)

    def set(self, name: str, value: Any) -> None:
        """Store an already validated (and coerced) value under its ROS name."""
        if name.startswith(CLASS_THRESHOLD_PREFIX):
            self.score_thresholds[name[len(CLASS_THRESHOLD_PREFIX):]] = value
            return
        group, _, key = name.partition(".")
        if key:
            getattr(self, group)[key] = value
        else:
            setattr(self, name, value)

    def validate(self) -> None:
        """Check every value; raise :class:`ParamError` listing all problems."""
        errors = []
        for name, value in self.to_parameters().items():
            try:
                coerce(name, value)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ParamError(errors)

    # --- derived values the node uses ----------------------------------------------------------------
    @property
    def checkpoint_or_none(self) -> str | None:
        return self.checkpoint or None

    def effective_score_threshold(self, class_names: Iterable[str]) -> float | dict[str, float] | None:
        """What ``Detector.set_score_threshold`` gets: None when nothing is set (the model's defaults), one float
        when only the global value is set, else a class -> threshold dict of the classes that have a value (their
        own, else the global one); classes left out keep the model's default."""
        own = {c: v for c, v in self.score_thresholds.items() if v >= 0}
        glob = self.score_threshold if self.score_threshold >= 0 else None
        if not own:
            return glob
        return {c: float(own.get(c, glob)) for c in class_names if c in own or glob is not None}

    def detector_kwargs(self, class_names: Iterable[str]) -> dict[str, Any]:
        """Keyword arguments for :class:`~fastpillars_ros.detector.Detector` (0 / "" mean "config default")."""
        return dict(
            checkpoint=self.checkpoint_or_none, backend=self.backend, device=self.device, precision=self.precision,
            score_threshold=self.effective_score_threshold(class_names),
            nms_kind=self.nms_kind or None,
            nms_iou_threshold=self.nms_iou_threshold if self.nms_iou_threshold > 0 else None,
            nms_pre_max=self.nms_pre_max or None, nms_post_max=self.nms_post_max or None,
            nms_containment=self.nms_containment if self.nms_containment >= 0 else None,
            max_points=self.max_points, max_pillars=self.max_pillars or None,
            on_insufficient_memory=self.on_insufficient_memory, warmup=self.warmup,
            mounting=self.mounting_source())

    def mounting_source(self) -> Mounting | AutoMounting | None:
        """What the Detector's ``mounting`` gets: an AutoMounting for ``mounting.auto``, the stated
        :class:`Mounting`, or None (level at the model's height; also for ``mounting.frame``, which the node
        resolves from tf once it knows the cloud's frame)."""
        m = self.mounting
        if m["auto"]:
            return AutoMounting()
        if m["frame"] or (m["height"], m["roll"], m["pitch"]) == (0.0, 0.0, 0.0):
            return None
        return Mounting(m["height"], m["roll"], m["pitch"])

    def field_candidates(self, feature: str) -> list[str]:
        """Field names to try, in order, for a model feature (empty list = always fill)."""
        return [n.strip() for n in self.fields.get(feature, "").split(",") if n.strip()]

    def intensity_multiplier(self) -> float | None:
        """The fixed intensity multiplier, or None for ``auto``."""
        return None if self.intensity_scale == "auto" else float(self.intensity_scale)


def _how_to_fix(name: str) -> str:
    return (f"fix: set {name} in the parameter file (config/fastpillars.yaml) or on the command line "
            f"(--ros-args -p {name}:=<value>)")


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"parameter '{name}' = {value!r} is invalid: allowed is {allowed}; {_how_to_fix(name)}")


def coerce(name: str, value: Any) -> Any:
    """Validate one value given under ROS name ``name`` and return it in its canonical type.

    Integers are accepted for doubles (YAML writes ``1`` for ``1.0``). Raises ``ValueError`` with a message
    naming the parameter, the value, what is allowed and how to fix it; unknown names raise too.
    """
    if name.startswith(CLASS_THRESHOLD_PREFIX):
        spec = ParamSpec(name, -1.0, "double", "", range=(-1.0, 1.0),
                         note="negative = use score_threshold for this class")
    elif name in SPEC_BY_NAME:
        spec = SPEC_BY_NAME[name]
    else:
        raise ValueError(unknown_message(name))
    value = _coerce_kind(name, value, spec)
    problem = spec.check(value) if spec.check is not None else None
    if problem:
        raise _bad(name, value, problem)
    return value


def _coerce_kind(name: str, value: Any, spec: ParamSpec) -> Any:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise _bad(name, value, spec.allowed())
        return value
    if spec.kind == "string":
        value = string_value(name, value, spec)
        if spec.choices is not None and value not in spec.choices:
            raise _bad(name, value, spec.allowed())
        return value
    if spec.kind == "scale":
        return _coerce_scale(name, value, spec)
    if spec.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _bad(name, value, spec.allowed())
        _check_range(name, value, spec)
        return value
    if spec.kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(name, value, spec.allowed())
        value = float(value)
        _check_range(name, value, spec)
        return value
    raise AssertionError(f"unknown kind {spec.kind}")


#: Plain scalars that YAML 1.1 (and ROS 2's parameter parser: files, ``-p name:=value``) reads as booleans.
YAML_BOOLEANS = {True: ("y", "yes", "true", "on"), False: ("n", "no", "false", "off")}


def string_value(name: str, value: Any, spec: ParamSpec) -> str:
    """A string parameter's value as a string, undoing YAML's typing of unquoted scalars.

    ``ros2 param dump`` writes ``fields.y: y`` unquoted, and YAML reads ``y`` as true and ``1`` as an integer.
    A number becomes its text; a boolean becomes the spec's default when the default is one of the words
    YAML reads as that boolean (``fields.y``'s ``y``), else it is refused with the fix (quote the value).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        if spec.choices is not None and ("true" if value else "false") in spec.choices:
            return "true" if value else "false"  # a tri-state like sweeps.enabled: auto, true, false
        if isinstance(spec.default, str) and spec.default.lower() in YAML_BOOLEANS[value]:
            return spec.default
        raise _bad(name, value, spec.allowed() + "; YAML read an unquoted y/yes/on/true (or n/no/off/false) as "
                   "a boolean: quote the string, e.g. '\"yes\"'")
    if isinstance(value, int | float) and math.isfinite(value):
        return str(value)
    raise _bad(name, value, spec.allowed())


def _check_range(name: str, value: float, spec: ParamSpec) -> None:
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        raise _bad(name, value, spec.allowed())


def _coerce_scale(name: str, value: Any, spec: ParamSpec) -> str | float:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = float(text)
        except ValueError:
            raise _bad(name, value, spec.allowed()) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _bad(name, value, spec.allowed())
    return float(value)


def unknown_message(name: str) -> str:
    """Sentence for a parameter name the node does not have (with a suggestion when one is close)."""
    close = difflib.get_close_matches(name, [s.name for s in SPECS], n=1, cutoff=0.75)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"parameter '{name}' is not a parameter of {NODE_NAME}{hint}; it is ignored"


def parse(values: Mapping[str, Any]) -> tuple[NodeParams, list[str]]:
    """Build :class:`NodeParams` from user-given values (flat ROS names) on top of the defaults.

    Returns ``(params, warnings)``: warnings name unknown parameters (ignored, with a suggestion).
    Raises :class:`ParamError` with one sentence per invalid value.
    """
    params = NodeParams()
    errors: list[str] = []
    warnings: list[str] = []
    for name, value in values.items():
        known = name in SPEC_BY_NAME or name.startswith(CLASS_THRESHOLD_PREFIX)
        if name in REMOVED:
            errors.append(f"parameter '{name}' was removed: {REMOVED[name]}")
            continue
        if not known:
            if not name.startswith(FOREIGN_OK_PREFIXES):
                warnings.append(unknown_message(name))
            continue
        try:
            params.set(name, coerce(name, value))
        except ValueError as exc:
            errors.append(str(exc))
    errors += mounting_conflicts(params)
    if errors:
        raise ParamError(errors)
    return params, warnings


def mounting_conflicts(params: NodeParams) -> list[str]:
    """One sentence per contradiction between the three ways of stating the mounting."""
    m = params.mounting
    stated = [n for n in ("height", "roll", "pitch") if m[n] != 0.0]
    ways = ([f"mounting.{n}" for n in stated][:1] + (["mounting.frame"] if m["frame"] else [])
            + (["mounting.auto"] if m["auto"] else []))
    if len(ways) < 2:
        return []
    return [f"parameters {' and '.join(repr(w) for w in ways)} both state the sensor mounting; fix: use one of "
            f"mounting.height/roll/pitch, mounting.frame or mounting.auto"]


def check_class_thresholds(params: NodeParams, class_names: Iterable[str], model: str) -> None:
    """Per-class thresholds must name classes of the model; raise :class:`ParamError` otherwise."""
    names = list(class_names)
    errors = [f"parameter '{CLASS_THRESHOLD_PREFIX}{c}' names a class that model {model!r} does not have; "
              f"its classes are {names}; fix: rename it to one of "
              f"{', '.join(CLASS_THRESHOLD_PREFIX + n for n in names)} or remove it"
              for c in params.score_thresholds if c not in names]
    if errors:
        raise ParamError(errors)


def check_point_features(params: NodeParams, point_features: Iterable[str], model: str) -> None:
    """Every feature the model needs must be mappable: a field or a fill value."""
    errors = []
    for feature in point_features:
        if feature not in FEATURES:
            errors.append(f"model {model!r} asks for point feature {feature!r}, which the node cannot map "
                          f"(known: {list(FEATURES)}); fix: use a model config with known features")
        elif feature not in FILLABLE and not params.field_candidates(feature):
            errors.append(f"parameter 'fields.{feature}' is empty but model {model!r} needs {feature}; "
                          f"{_how_to_fix('fields.' + feature)}")
    if errors:
        raise ParamError(errors)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter-file mapping -> flat dotted names (``{'fields': {'x': 'x'}}`` -> ``fields.x``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def file_values(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{name: value}`` that a ROS parameter file (loaded YAML) gives this node: its ``/**`` section, then
    the sections keyed by the node's name (``fastpillars_detector`` or ``/fastpillars_detector``), later ones
    winning, as rcl applies them."""
    values: dict[str, Any] = {}
    for key in ("/**", NODE_NAME, "/" + NODE_NAME):
        section = tree.get(key)
        if isinstance(section, Mapping):
            values.update(flatten(section.get("ros__parameters") or {}))
    return values


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return '""' if value == "" else f'"{value}"'


def default_yaml() -> str:
    """The default parameter file (``config/fastpillars.yaml``): every parameter with its default."""
    lines = [
        "# Parameters of the fastpillars_ros detector node, every one with its default value.",
        "# Generated from fastpillars_ros/ros/node_params.py (python -m fastpillars_ros.ros.node_params);",
        "# a test keeps this file and the code's defaults equal. (runtime) = may be changed while running.",
        "# Keyed '/**' (any node name, any namespace): it applies under PushRosNamespace, __ns:= and renames.",
        "/**:",
        "  ros__parameters:",
    ]
    groups: dict[str, list[ParamSpec]] = {}
    for spec in SPECS:
        group, _, key = spec.name.partition(".")
        if key:
            if group not in groups:
                groups[group] = []
                lines.append(f"    {group}:")
            lines += _yaml_entry(spec, key, indent=6)
        else:
            lines += _yaml_entry(spec, spec.name, indent=4)
        if spec.name == "score_threshold":
            lines += [
                "    # Per-class thresholds override score_threshold for one class of the model, e.g.",
                "    # score_thresholds:",
                "    #   car: 0.3",
                "    #   pedestrian: 0.2",
            ]
    return "\n".join(lines) + "\n"


def _yaml_entry(spec: ParamSpec, key: str, indent: int) -> list[str]:
    pad = " " * indent
    tag = " (runtime)" if spec.runtime else ""
    comment = f"{pad}# {spec.description} Allowed: {spec.allowed()}.{tag}"
    return [comment, f"{pad}{key}: {_yaml_scalar(spec.default)}"]


if __name__ == "__main__":
    print(default_yaml(), end="")


def parameters_markdown() -> str:
    """The README's parameter table (one row per parameter; a test keeps the README equal to it)."""
    rows = ["| parameter | default | allowed | runtime | description |", "|---|---|---|---|---|"]
    for spec in SPECS:
        default = _yaml_scalar(spec.default).replace("|", "\\|")
        allowed = spec.allowed().replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{default}` | {allowed} | {'yes' if spec.runtime else ''} | "
                    f"{spec.description.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)
