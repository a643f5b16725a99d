"""Multi-sweep settings (``sweeps.*``): the typed settings object and its use, without ROS.

The parameters themselves (names, defaults, kinds, ranges, descriptions) are rows of the one table in
:mod:`fastpillars_ros.ros.node_params`, which validates them (``node_params.coerce``) and keeps their values in
``NodeParams.sweeps`` (keyed by the part after ``sweeps.``). :class:`SweepParams` is that dict typed.

Vector-valued settings are separate doubles under a common prefix (``sweeps.sensor_to_base.x`` ...
``.yaw``, ``sweeps.ego_box.x_min`` ... ``.y_max``), so no array parameter types are needed.

``sweeps.enabled`` is ``auto`` (on when the model config's ``num_sweeps`` > 1), ``true`` or ``false``;
a YAML boolean is accepted and stored as the string ``"true"``/``"false"``.

:func:`build_sweep_input` turns validated values and the model config into the per-frame glue
(:class:`fastpillars_ros.sweeps.SweepInput`), or None when accumulation is off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastpillars_ros.ros.node_params import (
    EGO_BOX_KEYS,
    SENSOR_TO_BASE_KEYS,
    SWEEPS_PREFIX,
    ParamError,
    group_defaults,
)
from fastpillars_ros.ros.node_params import (
    parse as parse_node_params,
)

PREFIX = SWEEPS_PREFIX


def defaults() -> dict[str, Any]:
    """``{key after 'sweeps.': default}``: the value of a ``NodeParams.sweeps`` dict."""
    return group_defaults("sweeps")


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


def parse(values: Mapping[str, Any]) -> SweepParams:
    """:class:`SweepParams` from flat ROS names (other names are ignored); raises :class:`ParamError` naming
    every bad value (validation: ``node_params.coerce``)."""
    flat = {k: v for k, v in values.items() if k.startswith(PREFIX)}
    return SweepParams.from_values(parse_node_params(flat)[0].sweeps)


def build_sweep_input(params: SweepParams, *, model_num_sweeps: int, point_features: Sequence[str],
                      device: Any = "cpu", node: Any = None, model: str = "the model") -> Any:
    """The node's per-frame glue, or None when accumulation is off.

    Returns a :class:`fastpillars_ros.sweeps.SweepInput`; when its ``pose_source`` is an
    :class:`~fastpillars_ros.ros.pose_sources.OdometryPoseSource` the caller subscribes
    ``params.odometry_topic`` with :func:`~fastpillars_ros.ros.pose_sources.make_odometry_callback`.
    ``point_features`` decide the dt column (the points passed to ``process`` are in that order).
    """
    from fastpillars_ros.ros.pose_sources import make_pose_source
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
