"""Parameters of multi-sweep accumulation (``sweeps.*``): schema, defaults and validation, without ROS.

Same conventions as :mod:`fastpillars_ros.node_params` (and meant to be merged into it): one table
(:data:`SPECS`) of :class:`~fastpillars_ros.node_params.ParamSpec` with ROS names, defaults, kinds
(only ``string``, ``double``, ``integer``), allowed values and descriptions; :func:`coerce` validates
one value and returns it in its canonical type; :func:`parse` builds a :class:`SweepParams` from flat
ROS names or raises :class:`~fastpillars_ros.node_params.ParamError` naming every bad value.

Vector-valued settings are separate doubles under a common prefix (``sweeps.sensor_to_base.x`` ...
``.yaw``, ``sweeps.ego_box.x_min`` ... ``.y_max``), so no array parameter types are needed and a
``NodeParams.sweeps`` dict keyed by the part after ``sweeps.`` works with ``NodeParams.get``/``set``.

``sweeps.enabled`` is ``auto`` (on when the model config's ``num_sweeps`` > 1), ``true`` or ``false``;
a YAML boolean is accepted and stored as the string ``"true"``/``"false"``.

:func:`build_sweep_input` turns validated values and the model config into the per-frame glue
(:class:`fastpillars_ros.sweeps.SweepInput`), or None when accumulation is off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastpillars_ros.node_params import ParamError, ParamSpec, string_value

PREFIX = "sweeps."
ENABLED_CHOICES = ("auto", "true", "false")
POSE_SOURCES = ("auto", "tf2", "odometry")
POSE_FAILURE_POLICIES = ("skip", "single")
SENSOR_TO_BASE_KEYS = ("x", "y", "z", "roll", "pitch", "yaw")
EGO_BOX_KEYS = ("x_min", "x_max", "y_min", "y_max")

_RAD = "radians"
_S2B = "Static transform from the lidar frame to the odometry's child (base) frame, used by the odometry pose source"

SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("sweeps.enabled", "auto", "string",
              "Accumulate ego-motion-compensated past sweeps into each cloud (with a dt column): auto = when "
              "the model was trained on several sweeps (model config num_sweeps > 1).", choices=ENABLED_CHOICES),
    ParamSpec("sweeps.num_sweeps", 0, "integer", "Sweeps per model input, the current one included.",
              range=(0, 50), note="0 = the model config's num_sweeps"),
    ParamSpec("sweeps.pose_source", "auto", "string",
              "Where sensor poses come from: tf2 (lookup_transform fixed_frame <- cloud frame), odometry "
              "(nav_msgs/Odometry on sweeps.odometry_topic + sweeps.sensor_to_base), auto (tf2 when "
              "tf2_ros is installed, else odometry).", choices=POSE_SOURCES),
    ParamSpec("sweeps.fixed_frame", "odom", "string",
              "Fixed frame in which sensor poses are compared (tf2 target frame; expected odometry frame)."),
    ParamSpec("sweeps.odometry_topic", "odom", "string", "nav_msgs/Odometry topic of the odometry pose source."),
    *(ParamSpec(f"sweeps.sensor_to_base.{k}", 0.0, "double", f"{_S2B}: {k} ({'metres' if len(k) == 1 else _RAD}).",
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


def defaults() -> dict[str, Any]:
    """``{key after 'sweeps.': default}``: the value of a ``NodeParams.sweeps`` dict."""
    return {s.name[len(PREFIX):]: s.default for s in SPECS}


@dataclass
class SweepParams:
    """Validated ``sweeps.*`` values (see :data:`SPECS`)."""

    enabled: str = "auto"
    num_sweeps: int = 0
    pose_source: str = "auto"
    fixed_frame: str = "odom"
    odometry_topic: str = "odom"
    sensor_to_base: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    lookup_timeout_s: float = 0.05
    odometry_tolerance_s: float = 0.05
    on_pose_failure: str = "skip"
    max_time_gap_s: float = 0.5
    max_jump_m: float = 5.0
    max_jump_rad: float = 0.5
    max_span_s: float = 0.0
    ego_box: tuple[float, ...] | None = (-1.0, 1.0, -1.0, 1.0)
    max_points: int = 600000

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SweepParams:
        """From already coerced values keyed by the part after ``sweeps.`` (e.g. ``NodeParams.sweeps``)."""
        v = {**defaults(), **values}
        box = tuple(float(v[f"ego_box.{k}"]) for k in EGO_BOX_KEYS)
        return cls(
            enabled=v["enabled"], num_sweeps=int(v["num_sweeps"]), pose_source=v["pose_source"],
            fixed_frame=v["fixed_frame"], odometry_topic=v["odometry_topic"],
            sensor_to_base=tuple(float(v[f"sensor_to_base.{k}"]) for k in SENSOR_TO_BASE_KEYS),
            lookup_timeout_s=float(v["lookup_timeout_s"]), odometry_tolerance_s=float(v["odometry_tolerance_s"]),
            on_pose_failure=v["on_pose_failure"], max_time_gap_s=float(v["max_time_gap_s"]),
            max_jump_m=float(v["max_jump_m"]), max_jump_rad=float(v["max_jump_rad"]),
            max_span_s=float(v["max_span_s"]),
            ego_box=box if box[0] < box[1] and box[2] < box[3] else None,
            max_points=int(v["max_points"]))

    def resolve(self, model_num_sweeps: int, point_features: Sequence[str], model: str = "the model"
                ) -> tuple[bool, int]:
        """``(enabled, num_sweeps)`` for a model; raises :class:`ParamError` when it cannot work."""
        num = self.num_sweeps or int(model_num_sweeps)
        enabled = self.enabled == "true" or (self.enabled == "auto" and int(model_num_sweeps) > 1)
        if enabled and "dt" not in point_features:
            raise ParamError([f"parameter 'sweeps.enabled' = {self.enabled!r} but {model} has no 'dt' point "
                              f"feature (features {list(point_features)}), so it cannot tell sweeps apart; fix: "
                              f"set sweeps.enabled to false or use a multi-sweep model config"])
        return enabled, max(num, 1)


def startup_notes(params: SweepParams, model_num_sweeps: int, model: str = "the model") -> list[str]:
    """Warnings worth logging once at start-up (the configuration works, but differs from training)."""
    enabled, num = params.enabled, params.num_sweeps or int(model_num_sweeps)
    notes = []
    if enabled == "false" and model_num_sweeps > 1:
        notes.append(f"sweeps.enabled is false but {model} was trained on {model_num_sweeps} sweeps: single-sweep "
                     f"input (dt 0) is about {model_num_sweeps}x sparser than its training data; expect lower "
                     f"recall")
    elif enabled != "false" and model_num_sweeps > 1 and num != model_num_sweeps:
        notes.append(f"sweeps.num_sweeps = {num} differs from the {model_num_sweeps} sweeps {model} was trained "
                     f"on (fine when it matches the trained time span for a lidar of another rate)")
    if enabled != "false" and params.ego_box is None and model_num_sweeps > 1:
        notes.append("sweeps.ego_box is off: own-vehicle returns of past sweeps stay in the input (training "
                     "removed them)")
    return notes


def _bad(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"parameter '{name}' = {value!r} is invalid: allowed is {allowed}; fix: set {name} in the "
                      f"parameter file (config/fastpillars.yaml) or on the command line (--ros-args -p "
                      f"{name}:=<value>)")


def coerce(name: str, value: Any) -> Any:
    """Validate one ``sweeps.*`` value; return it in its canonical type or raise ``ValueError``."""
    spec = SPEC_BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"parameter '{name}' is not a sweeps parameter; known: {sorted(SPEC_BY_NAME)}")
    if name == "sweeps.enabled" and isinstance(value, bool):
        return "true" if value else "false"
    if spec.kind == "string":
        value = string_value(name, value, spec)
        if spec.choices is not None and value not in spec.choices:
            raise _bad(name, value, spec.allowed())
        if name in ("sweeps.fixed_frame", "sweeps.odometry_topic") and not value.strip():
            raise _bad(name, value, "a non-empty " + ("frame name" if "frame" in name else "topic name"))
        return value
    if spec.kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, value, spec.allowed())
    else:  # double
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(name, value, spec.allowed())
        value = float(value)
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        raise _bad(name, value, spec.allowed())
    return value


def parse(values: Mapping[str, Any]) -> SweepParams:
    """:class:`SweepParams` from flat ROS names (other names are ignored); raises :class:`ParamError`."""
    coerced: dict[str, Any] = {}
    errors = []
    for name, value in values.items():
        if not name.startswith(PREFIX):
            continue
        try:
            coerced[name[len(PREFIX):]] = coerce(name, value)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ParamError(errors)
    return SweepParams.from_values(coerced)


def build_sweep_input(params: SweepParams, *, model_num_sweeps: int, point_features: Sequence[str],
                      device: Any = "cpu", node: Any = None, model: str = "the model") -> Any:
    """The node's per-frame glue, or None when accumulation is off.

    Returns a :class:`fastpillars_ros.sweeps.SweepInput`; when its ``pose_source`` is an
    :class:`~fastpillars_ros.pose_sources.OdometryPoseSource` the caller subscribes
    ``params.odometry_topic`` with :func:`~fastpillars_ros.pose_sources.make_odometry_callback`.
    ``point_features`` decide the dt column (the points passed to ``process`` are in that order).
    """
    from fastpillars_ros.pose_sources import make_pose_source
    from fastpillars_ros.sweeps import SweepBuffer, SweepInput

    enabled, num = params.resolve(model_num_sweeps, point_features, model)
    if not enabled:
        return None
    buffer = SweepBuffer(num, max_points=params.max_points or None, ego_box=params.ego_box,
                         max_time_gap_s=params.max_time_gap_s, max_jump_m=params.max_jump_m,
                         max_jump_rad=params.max_jump_rad, device=device, on_missing_pose=params.on_pose_failure,
                         max_span_s=params.max_span_s or None, dt_column=list(point_features).index("dt"))
    source = make_pose_source(params.pose_source, node=node, fixed_frame=params.fixed_frame,
                              timeout_s=params.lookup_timeout_s, sensor_to_base=params.sensor_to_base,
                              tolerance_s=params.odometry_tolerance_s)
    return SweepInput(buffer, source)


def yaml_lines(indent: int = 4) -> list[str]:
    """The ``sweeps:`` block of the default parameter file (same style as node_params.default_yaml)."""
    pad = " " * indent
    lines = [f"{pad}sweeps:"]
    for spec in SPECS:
        key = spec.name[len(PREFIX):]
        value = spec.default
        text = ('""' if value == "" else f'"{value}"') if isinstance(value, str) else (
            repr(value) if isinstance(value, float) else str(value))
        lines += [f"{pad}  # {spec.description} Allowed: {spec.allowed()}.", f"{pad}  {key}: {text}"]
    return lines
