"""Per-frame input work of the detector node that needs no ROS graph: PointCloud2 -> model input.

:class:`FrameInput` maps each message's fields onto the model's point features (by the node's
``fields.<feature>`` parameters, with fill values for absent non-coordinate features), converts any
datatype and byte order, drops points with non-finite coordinates, caps the point count
deterministically, rescales intensity into the model's range (fixed multiplier or ``auto``) and
gathers the statistics the node reports in ``/diagnostics``.

A frame that cannot be used raises :class:`FrameRejected` with a ``kind`` (one of
:data:`REJECT_KINDS`) and a sentence naming the problem and the fix; the node then publishes an empty
result with the input header. Problems that do not stop the frame (float64 coordinates, big-endian
data, capping, a filled field, odd intensity ranges) are returned as ``Frame.notes``.

Works on any object shaped like ``sensor_msgs/PointCloud2`` (attribute access only); nothing here
imports rclpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastpillars_ros.pointcloud import DATATYPE_NAMES, cloud_to_array, even_indices, field_layout
from fastpillars_ros.ros.node_params import NodeParams

FLOAT32, FLOAT64, UINT8, INT8 = 7, 8, 2, 1

#: Why a frame was rejected (the counter names in diagnostics).
REJECT_KINDS = ("empty", "wrong_frame", "bad_layout", "missing_xyz", "xyz_type", "missing_field",
                "no_valid_points")
#: Problems that do not stop a frame.
NOTE_KINDS = ("xyz_float64", "big_endian", "capped", "filled_field", "nonfinite_features", "intensity_range")

#: Intensity samples used for statistics (an even stride through the frame).
_STAT_SAMPLES = 8192
_XYZ = ("x", "y", "z")


class FrameRejected(Exception):
    """The frame cannot be used; ``kind`` is one of :data:`REJECT_KINDS`."""

    def __init__(self, kind: str, message: str):
        assert kind in REJECT_KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class FeatureSource:
    """Where one model feature comes from: a field (name and datatype) or a constant fill value."""

    feature: str
    field: str | None
    datatype: int | None = None
    fill: float | None = None

    def describe(self) -> str:
        if self.field is None:
            return f"{self.feature}<-fill {self.fill:g}"
        src = self.field if self.field == self.feature else f"'{self.field}'"
        return f"{self.feature}<-{src} ({DATATYPE_NAMES.get(self.datatype, self.datatype)})"


@dataclass
class IntensityStats:
    """Intensity of one frame before and after scaling (from an even sample of the points)."""

    datatype: str            # the source field's datatype name, or "fill"
    raw_p99: float
    raw_max: float
    raw_mean: float
    zero_fraction: float
    multiplier: float        # applied: model value = raw * multiplier
    auto: bool               # multiplier chosen by intensity_scale=auto
    input_range: float       # full scale the cloud's intensity is taken to have (auto) or implied (fixed)
    model_range: float       # the model's intensity scale
    scaled_p99: float
    warning: str | None = None

    def summary(self) -> str:
        how = "auto" if self.auto else "fixed"
        return (f"raw p99 {self.raw_p99:.3g} max {self.raw_max:.3g} mean {self.raw_mean:.3g} "
                f"zeros {100 * self.zero_fraction:.0f}% ({self.datatype}); x{self.multiplier:.4g} ({how}, "
                f"cloud 0..{self.input_range:g} -> model 0..{self.model_range:g}); scaled p99 {self.scaled_p99:.3g}")


@dataclass
class Frame:
    """One converted frame: model input plus what the node reports about it."""

    points: np.ndarray                    # (N, K) float32, columns in the model's point_features order
    num_input: int                        # width * height of the message
    num_valid: int                        # after dropping non-finite x/y/z
    sources: list[FeatureSource]
    notes: list[tuple[str, str]] = field(default_factory=list)   # (kind in NOTE_KINDS, message)
    intensity: IntensityStats | None = None
    layout_changed: bool = False          # the field mapping differs from the previous frame's

    @property
    def mapping(self) -> str:
        return ", ".join(s.describe() for s in self.sources)


def _layout_signature(msg: Any) -> tuple:
    fields = tuple((f.name, int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields)
    return fields, int(msg.point_step), bool(msg.is_bigendian)


class FrameInput:
    """Converts PointCloud2 messages into the model's input columns.

    Args:
        point_features: the model's feature columns, e.g. ``["x", "y", "z", "intensity"]``.
        model_intensity_scale: the maximum intensity the model was trained with (1.0 or 255.0 ...).
        params: the node's parameters (fields, fill, missing_field, intensity_scale, clip_intensity,
            max_points, expected_frame_id are used); replace with :meth:`update_params`.
    """

    def __init__(self, point_features: Sequence[str], model_intensity_scale: float, params: NodeParams):
        self.point_features = list(point_features)
        self.model_intensity_scale = float(model_intensity_scale)
        self.params = params
        self._signature: tuple | None = None
        self._sources: list[FeatureSource] | None = None
        self._source_notes: list[tuple[str, str]] = []
        self._auto_range: float | None = None

    def update_params(self, params: NodeParams) -> None:
        """Use new parameter values from the next frame on (re-resolves the mapping, restarts auto scale)."""
        self.params = params
        self._signature = None
        self._auto_range = None

    # --- mapping ----------------------------------------------------------------------------------------
    def _resolve(self, msg: Any) -> tuple[list[FeatureSource], list[tuple[str, str]]]:
        try:
            layout = field_layout(msg)
        except ValueError as exc:
            raise FrameRejected("bad_layout", f"inconsistent PointCloud2 layout: {exc}") from None
        present = list(layout)
        sources: list[FeatureSource] = []
        notes: list[tuple[str, str]] = []
        for feature in self.point_features:
            candidates = self.params.field_candidates(feature)
            name = next((c for c in candidates if c in layout), None)
            if name is None:
                if feature in _XYZ:
                    raise FrameRejected(
                        "missing_xyz",
                        f"cloud has no field for {feature} (tried {candidates}; fields: {present}); set "
                        f"fields.{feature} to the field holding it")
                fill = float(self.params.fill.get(feature, 0.0))
                if candidates:
                    if self.params.missing_field == "error":
                        raise FrameRejected(
                            "missing_field",
                            f"cloud has no field for {feature} (tried {candidates}; fields: {present}) and "
                            f"missing_field is 'error'; set fields.{feature} to the field holding it, or "
                            f"missing_field to 'fill'")
                    notes.append(("filled_field",
                                  f"cloud has no field for {feature} (tried {candidates}; fields: {present}); "
                                  f"using fill.{feature} = {fill:g}; set fields.{feature} if another field "
                                  f"holds it"))
                sources.append(FeatureSource(feature, None, None, fill))
                continue
            _offset, datatype, count = layout[name]
            if count != 1:
                raise FrameRejected("bad_layout", f"field {name!r} (for {feature}) has count {count}; a "
                                                  f"scalar field is needed")
            if feature in _XYZ and datatype not in (FLOAT32, FLOAT64):
                raise FrameRejected(
                    "xyz_type",
                    f"field {name!r} (for {feature}) is {DATATYPE_NAMES[datatype]}; coordinates must be "
                    f"FLOAT32 (or FLOAT64) metres; integer coordinates have an unknown unit")
            sources.append(FeatureSource(feature, name, datatype))
        wide = [s.field for s in sources if s.feature in _XYZ and s.datatype == FLOAT64]
        if wide:
            notes.append(("xyz_float64", f"coordinate field(s) {wide} are FLOAT64: converted to float32 (works, "
                                         f"but costs a conversion; FLOAT32 is standard)"))
        if msg.is_bigendian:
            notes.append(("big_endian", "cloud is big-endian: byte-swapped on every frame (works, but slower)"))
        return sources, notes

    # --- conversion ----------------------------------------------------------------------------------
    def convert(self, msg: Any) -> Frame:
        """Model input for one message; raises :class:`FrameRejected` for unusable frames."""
        p = self.params
        frame_id = msg.header.frame_id
        if p.expected_frame_id and frame_id != p.expected_frame_id:
            raise FrameRejected(
                "wrong_frame",
                f"cloud is in frame {frame_id!r}, expected {p.expected_frame_id!r}; publish in that frame "
                f"(or transform the cloud first), or change expected_frame_id")
        num_input = int(msg.width) * int(msg.height)
        if num_input == 0:
            raise FrameRejected("empty", f"empty cloud (width {msg.width} x height {msg.height} = 0 points)")

        signature = _layout_signature(msg)
        changed = signature != self._signature
        if changed:
            sources, notes = self._resolve(msg)
            self._signature, self._sources, self._source_notes = signature, sources, notes
            self._auto_range = None
        sources = self._sources
        notes = list(self._source_notes)

        names, defaults = [], {}
        for src in sources:
            if src.field is None:
                key = f"\0fill:{src.feature}"
                defaults[key] = src.fill
                names.append(key)
            else:
                names.append(src.field)
        try:
            points = cloud_to_array(msg, names, defaults=defaults, drop_invalid=True)
        except ValueError as exc:
            self._signature = None  # re-check everything on the next frame
            raise FrameRejected("bad_layout", f"unreadable PointCloud2: {exc}") from None
        num_valid = points.shape[0]
        if num_valid == 0:
            raise FrameRejected("no_valid_points",
                                f"none of the {num_input} points has finite x, y and z (all NaN/Inf)")
        if num_valid > p.max_points:
            points = points[even_indices(num_valid, p.max_points)]
            notes.append(("capped", f"cloud has {num_valid} valid points > max_points {p.max_points}: "
                                    f"subsampled evenly to {p.max_points}"))

        # Non-coordinate columns may carry NaN/Inf (x/y/z were checked above): replace with the fill value.
        for j, src in enumerate(sources):
            if src.feature in _XYZ or src.field is None:
                continue
            col = points[:, j]
            bad = ~np.isfinite(col)
            if bad.any():
                fill = float(p.fill.get(src.feature, 0.0))
                col[bad] = fill
                notes.append(("nonfinite_features", f"{int(bad.sum())} points have non-finite {src.feature} "
                                                     f"('{src.field}'); replaced with {fill:g}"))

        stats = None
        if "intensity" in self.point_features:
            j = self.point_features.index("intensity")
            stats = self._scale_intensity(points[:, j], sources[j])
            if stats.warning:
                notes.append(("intensity_range", stats.warning))
        return Frame(points=points, num_input=num_input, num_valid=num_valid, sources=list(sources),
                     notes=notes, intensity=stats, layout_changed=changed)

    # --- intensity -------------------------------------------------------------------------------------
    def _scale_intensity(self, col: np.ndarray, src: FeatureSource) -> IntensityStats:
        model = self.model_intensity_scale
        step = max(1, col.shape[0] // _STAT_SAMPLES)
        sample = col[::step].astype(np.float64)
        if src.field is None:
            v = float(src.fill)
            return IntensityStats("fill", v, v, v, float(v == 0.0), 1.0, False, model, model, v)
        raw_p99 = float(np.percentile(sample, 99)) if sample.size else 0.0
        raw_max = float(sample.max()) if sample.size else 0.0
        raw_mean = float(sample.mean()) if sample.size else 0.0
        zero_fraction = float(np.mean(sample == 0.0)) if sample.size else 1.0
        fixed = self.params.intensity_multiplier()
        if fixed is None:
            guess = _guess_input_range(src.datatype, raw_p99)
            if self._auto_range is None or guess > self._auto_range:
                self._auto_range = guess  # only ever widened: a dark frame must not shrink the range
            input_range = self._auto_range
            multiplier = model / input_range
        else:
            multiplier = fixed
            input_range = model / fixed
        if multiplier != 1.0:
            col *= np.float32(multiplier)
        if self.params.clip_intensity:
            np.clip(col, 0.0, model, out=col)
        scaled_p99 = raw_p99 * multiplier
        warning = None
        dtype_name = DATATYPE_NAMES.get(src.datatype, str(src.datatype))
        if sample.size and raw_max == 0.0:
            warning = (f"every intensity ('{src.field}') is 0: the model was trained with intensity up to "
                       f"{model:g}; check the driver (or map another field with fields.intensity)")
        elif fixed is not None and scaled_p99 > 1.5 * model:
            looks = _guess_input_range(src.datatype, raw_p99)
            warning = (f"intensity after intensity_scale {fixed:g} reaches {scaled_p99:.3g} (p99) but the model "
                       f"expects 0..{model:g}; the cloud's intensity looks like 0..{looks:g}: set "
                       f"intensity_scale to {model / looks:.6g} or 'auto'")
        elif fixed is not None and model > 1.5 and 0.0 < scaled_p99 <= 0.02 * model:
            warning = (f"intensity after intensity_scale {fixed:g} is at most {scaled_p99:.3g} (p99) but the "
                       f"model expects 0..{model:g}; the cloud's intensity looks like 0..1: set intensity_scale "
                       f"to {model:g} or 'auto'")
        return IntensityStats(dtype_name, raw_p99, raw_max, raw_mean, zero_fraction, multiplier,
                              fixed is None, input_range, model, scaled_p99, warning)


def _guess_input_range(datatype: int | None, p99: float) -> float:
    """Full scale of a cloud's intensity: by datatype for 8-bit fields, else by magnitude (1, 255, 65535)."""
    if datatype == UINT8:
        return 255.0
    if datatype == INT8:
        return 127.0
    if p99 <= 1.0 + 1e-3:
        return 1.0
    if p99 <= 255.5:
        return 255.0
    if p99 <= 65535.5:
        return 65535.0
    return float(p99)
