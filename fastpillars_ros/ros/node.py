"""The ROS 2 detector node ``fastpillars_detector`` (executable ``detector_node``): a thin layer over the
library.

Topics (all remappable):

* ``points`` (in, ``sensor_msgs/PointCloud2``): sensor-data QoS (best effort, volatile), depth 1.
  The callback only stores the newest cloud; a worker thread processes it. A cloud replaced before the
  worker took it is counted as ``dropped_superseded``; one older than ``max_input_age_ms`` (header stamp
  vs the node's clock, i.e. sim time with ``use_sim_time``) when its turn comes is dropped and counted
  as ``dropped_stale``. So the node always works on the newest frame and never builds a backlog.
* ``detections`` (out, ``vision_msgs/Detection3DArray``): header copied from the cloud; with ``output_frame``
  the boxes are transformed into that frame (tf2 at the cloud's stamp) and the header says so. Rejected or
  empty clouds, and frames whose inference failed, give an empty array with the input header.
* ``detection_markers`` (out, ``visualization_msgs/MarkerArray``): boxes, headings, labels; a DELETEALL
  first, so rejected frames clear the display (``publish_markers`` switches them off).
* ``/diagnostics`` (out, ``diagnostic_msgs/DiagnosticArray``) every ``diagnostics_period`` s.
* with multi-sweep input (``sweeps.*``, on by default for models trained on several sweeps): sensor poses
  from tf2 or from ``nav_msgs/Odometry`` on ``sweeps.odometry_topic``; a cloud without a pose is answered
  like a rejected one.

Mounting (``mounting.*``): the cloud is moved into the model's frame (its training height, level) before
detection and the boxes are moved back (:mod:`fastpillars_ros.mounting`); stated, looked up from tf
(``mounting.frame``) or estimated from the ground (``mounting.auto``, reported in ``/diagnostics``).

Parameters: :mod:`fastpillars_ros.ros.node_params` (schema, defaults, validation). Per-frame input work:
:mod:`fastpillars_ros.ros.frame_input`; counters: :mod:`fastpillars_ros.ros.diagnostics`.

Exit codes: 0 after a normal shutdown, 2 for invalid parameters, 1 when the detector cannot start.
"""

from __future__ import annotations

import copy
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from fastpillars_ros.mounting import AutoMounting, Mounting, transform_boxes
from fastpillars_ros.ros import node_params
from fastpillars_ros.ros.diagnostics import NodeStats, Throttle
from fastpillars_ros.ros.frame_input import FrameInput, FrameRejected
from fastpillars_ros.ros.messages import detections_to_markers, detections_to_msg
from fastpillars_ros.ros.node_params import (
    CLASS_THRESHOLD_PREFIX,
    NODE_NAME,
    NodeParams,
    ParamError,
    ParamSpec,
)
from fastpillars_ros.ros.pose_sources import tf2_available, transform_msg_to_matrix
from fastpillars_ros.ros.sweep_params import SweepParams, build_sweep_input, startup_notes

#: Sensor-data QoS with a queue of one: only the newest cloud waits, older ones are superseded.
INPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
#: Parameters whose change affects the frame converter.
_INPUT_PARAMS = ("intensity_scale", "clip_intensity", "expected_frame_id")
_NO_TF2 = ("parameter '{name}' needs tf2 (the tf2_ros Python package), which is not installed here; fix: install "
           "ros-$ROS_DISTRO-tf2-ros, or leave {name} empty")
#: A cloud stamped further ahead of the node's clock than this is reported (the sensor's clock runs ahead).
_FUTURE_TOLERANCE_NS = 50_000_000
#: Parameters rclpy declares itself on every node (not the user's, not ours).
_RCLPY_OWN = ("use_sim_time", "start_type_description_service")
_TYPES = {"string": ParameterType.PARAMETER_STRING, "double": ParameterType.PARAMETER_DOUBLE,
          "integer": ParameterType.PARAMETER_INTEGER, "bool": ParameterType.PARAMETER_BOOL,
          "scale": ParameterType.PARAMETER_NOT_SET}


class StartupError(Exception):
    """The node cannot start; ``exit_code`` 2 for bad parameters, 1 otherwise."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ROS descriptor of one parameter: type, description with the allowed values, range, read-only."""
    d = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind],
                            description=f"{spec.description} Allowed: {spec.allowed()}.",
                            read_only=not spec.runtime)
    if spec.choices is not None:
        d.additional_constraints = "one of: " + ", ".join(repr(c) for c in spec.choices)
    if spec.kind == "scale":
        d.dynamic_typing = True
        d.additional_constraints = "'auto' or a number > 0"
    if spec.range is not None and spec.kind == "double":
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    if spec.range is not None and spec.kind == "integer":
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d


def _class_spec(name: str) -> ParamSpec:
    return ParamSpec(CLASS_THRESHOLD_PREFIX + name, -1.0, "double",
                     f"Minimum score of a published {name} detection.", range=(-1.0, 1.0), runtime=True,
                     note="negative = use score_threshold")


def _stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class DetectorNode(Node):
    """See the module docstring. ``detector_factory(params, model_config) -> Detector`` replaces the real one."""

    def __init__(self, *, detector_factory=None, **node_kwargs: Any):
        # The user's values (parameter files, -p) through public API that exists from Humble on: rclpy
        # declares every override with the type YAML gave it; they are read, validated by our schema and
        # declared again below with their descriptors and canonical types.
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **node_kwargs)
        t_start = time.perf_counter()
        log = self.get_logger()
        overrides = {name: p.value for name, p in self.get_parameters_by_prefix("").items()
                     if name not in _RCLPY_OWN}
        for name in overrides:
            self.undeclare_parameter(name)
        try:
            params, unknown = node_params.parse(overrides)
        except ParamError as exc:
            raise StartupError(str(exc), 2) from None
        for text in unknown:
            log.warning(text)
        self.throttle = Throttle(params.warning_period)
        self._log_bridge = LogBridge(self)

        from fastpillars_ros.config import ConfigError, load_model_config

        try:
            cfg = load_model_config(params.model)
        except ConfigError as exc:
            raise StartupError(f"parameter 'model' = {params.model!r} is invalid: {exc}", 2) from None
        sweep_settings = SweepParams.from_values(params.sweeps)
        try:
            node_params.check_class_thresholds(params, cfg.class_names, params.model)
            node_params.check_point_features(params, cfg.point_features, params.model)
            sweep_settings.resolve(cfg.num_sweeps, cfg.point_features, f"model {cfg.name!r}")
        except ParamError as exc:
            raise StartupError(str(exc), 2) from None

        try:
            self.detector = (detector_factory or _build_detector)(params, cfg)
        except Exception as exc:  # any start-up failure ends the node with its message
            raise StartupError(f"cannot start the detector: {type(exc).__name__}: {exc}", 1) from None
        det = self.detector
        self.class_names = list(det.class_names)

        # Declare everything with descriptors (values already validated; overrides applied by us).
        for spec in node_params.SPECS:
            self.declare_parameter(spec.name, params.get(spec.name), descriptor(spec), ignore_override=True)
        for name in self.class_names:
            spec = _class_spec(name)
            params.score_thresholds.setdefault(name, -1.0)
            self.declare_parameter(spec.name, params.score_thresholds[name], descriptor(spec), ignore_override=True)
        self.params = params
        # Humble has only the on-set callback: it validates every change and applies them when all are valid.
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = NodeStats()
        self.frame_input = FrameInput(det.point_features, det.intensity_scale, params)
        self._cv = threading.Condition()
        self._pending: tuple[PointCloud2, float] | None = None
        self._stopping = False

        self.sweeps = self._make_sweeps(sweep_settings, cfg)
        for note in startup_notes(sweep_settings, cfg.num_sweeps, f"model {cfg.name!r}"):
            log.warning(note)
        # Frames the worker will not run on (superseded while it was busy): still past sweeps for the next one.
        self._superseded: deque[PointCloud2] = deque(maxlen=max(self.sweeps.buffer.num_sweeps - 1, 1)
                                                     if self.sweeps is not None else 1)
        self._tf_buffer: Any = None
        self._mounting_frames: dict[str, Mounting] = {}  # cloud frame -> mounting from tf (mounting.frame)
        if params.output_frame or params.mounting["frame"]:
            if not tf2_available():
                raise StartupError(_NO_TF2.format(name="output_frame" if params.output_frame else "mounting.frame"), 2)
            self._tf()  # start listening now, so the transforms are there when the first cloud comes

        self.det_pub = self.create_publisher(Detection3DArray, "detections", 10)
        self.marker_pub = self.create_publisher(MarkerArray, "detection_markers", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.sub = self.create_subscription(PointCloud2, "points", self._on_cloud, INPUT_QOS)
        self.diag_timer = self.create_timer(params.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name="fastpillars_worker", daemon=True)
        self._worker.start()

        warm = getattr(det, "warmup_ms", None)
        warm_text = f"{warm:.0f} ms" if warm is not None else "off"
        ckpt = getattr(det, "checkpoint", None) or params.checkpoint or None
        fields = ", ".join(
            f"{f}<-{'|'.join(params.field_candidates(f)) or 'fill'}"
            + (f" (fill {params.fill[f]:g})" if f in params.fill and params.missing_field == "fill" else "")
            for f in det.point_features)
        if self.sweeps is None:
            sweeps_text = "sweeps off"
        else:
            describe = getattr(self.sweeps.pose_source, "describe", None)
            sweeps_text = (f"{self.sweeps.buffer.num_sweeps} sweeps (poses: "
                           f"{describe() if describe else type(self.sweeps.pose_source).__name__})")
        weights = str(ckpt) if ckpt else "RANDOM WEIGHTS"
        kernels = f", CPU kernels {det.cpu_kernels}" if getattr(det, "cpu_kernels", None) else ""
        if ckpt:
            weights += f", weights licence: {getattr(det, 'weights_licence', None) or 'not stated'}"
        log.info(
            f"ready: model {cfg.name} ({weights}), backend {det.backend}, device {det.device}, "
            f"precision {det.precision}{kernels}, classes {self.class_names}, score thresholds "
            f"{_thresholds_text(det, params, self)}, input {self.sub.topic_name} "
            f"fields [{fields}], intensity_scale {params.intensity_scale} (model 0..{det.intensity_scale:g}), "
            f"{sweeps_text}, warm-up {warm_text}, start-up {time.perf_counter() - t_start:.1f} s")

    def _make_sweeps(self, settings: Any, cfg: Any) -> Any:
        """Multi-sweep accumulation (None when off); subscribes odometry for the odometry pose source."""
        try:
            sweeps = build_sweep_input(settings, model_num_sweeps=cfg.num_sweeps,
                                       point_features=self.detector.point_features, device=self.detector.device,
                                       node=self, model=f"model {cfg.name!r}")
        except ValueError as exc:  # ParamError, PoseSourceError
            raise StartupError(f"cannot set up sweeps: {exc}", 2) from None
        if sweeps is None:
            return None
        from fastpillars_ros.ros.pose_sources import OdometryPoseSource, make_odometry_callback, odometry_qos

        if isinstance(sweeps.pose_source, OdometryPoseSource):
            from nav_msgs.msg import Odometry

            callback = make_odometry_callback(
                sweeps.pose_source, on_reject=lambda reason: self._warn("odometry", f"odometry not used: {reason}"))
            self.odom_sub = self.create_subscription(Odometry, settings.odometry_topic, callback, odometry_qos())
        return sweeps

    # --- parameters at runtime ------------------------------------------------------------------------
    def _on_set_parameters(self, changes: Sequence[rclpy.parameter.Parameter]) -> SetParametersResult:
        result = self._validate_change(changes)
        if result.successful:
            self._apply_change(changes)
        return result

    def _validate_change(self, changes: Sequence[rclpy.parameter.Parameter]) -> SetParametersResult:
        reasons = []
        for p in changes:
            if p.name not in node_params.SPEC_BY_NAME and not p.name.startswith(CLASS_THRESHOLD_PREFIX):
                continue  # rclpy's own (use_sim_time, ...): rclpy validates and applies them
            spec = node_params.SPEC_BY_NAME.get(p.name)
            if spec is not None and not spec.runtime:
                reasons.append(f"parameter '{p.name}' cannot change while the node runs; restart the node")
                continue
            try:
                node_params.coerce(p.name, p.value)
            except ValueError as exc:
                reasons.append(str(exc))
            if p.name == "output_frame" and p.value and not tf2_available():
                reasons.append(_NO_TF2.format(name="output_frame"))
        return SetParametersResult(successful=not reasons, reason="; ".join(reasons))

    def _apply_change(self, changes: Sequence[rclpy.parameter.Parameter]) -> None:
        new = copy.deepcopy(self.params)
        for p in changes:
            if p.name in node_params.SPEC_BY_NAME or p.name.startswith(CLASS_THRESHOLD_PREFIX):
                new.set(p.name, node_params.coerce(p.name, p.value))
        names = {p.name for p in changes}
        if any(n == "score_threshold" or n.startswith(CLASS_THRESHOLD_PREFIX) for n in names):
            self.detector.set_score_threshold(new.effective_score_threshold(self.class_names))
        if names & set(_INPUT_PARAMS):
            self.frame_input.update_params(new)
        else:
            self.frame_input.params = new
        self.throttle.period = new.warning_period
        self.params = new
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value!r}" for p in changes))

    # --- frames ---------------------------------------------------------------------------------------
    def _on_cloud(self, msg: PointCloud2) -> None:
        self.stats.count("received")
        with self._cv:
            if self._pending is not None:
                self.stats.count("dropped_superseded")
                if self.sweeps is not None:
                    self._superseded.append(self._pending[0])
            self._pending = (msg, time.monotonic())
            self._cv.notify()

    def _work(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._cv.wait(0.5)
                if self._stopping:
                    return
                msg, t_received = self._pending
                self._pending = None
                history = list(self._superseded)
                self._superseded.clear()
            try:
                for old in history:
                    self._add_to_history(old)
                self._process(msg, t_received)
            except Exception as exc:  # the worker must survive anything a frame does
                if self._stopping or not self.context.ok():
                    return  # Ctrl-C shut the context down under this frame: nothing to report
                self.stats.error(f"{type(exc).__name__}: {exc}")
                self._warn("internal", f"unexpected error while processing a frame: {type(exc).__name__}: {exc}",
                           error=True)

    def _add_to_history(self, msg: PointCloud2) -> None:
        """Keep a cloud the detector does not run on as a past sweep (training had no holes in the history)."""
        if self.sweeps is None:
            return
        try:
            self.sweeps.add(self.frame_input.convert(msg).points, msg.header)
        except FrameRejected:
            pass  # a cloud that cannot be read is not history either; the frames that run report the layout

    def _warn(self, key: str, text: str, *, error: bool = False) -> None:
        ok, held = self.throttle.ready(key)
        if ok:
            suffix = f" ({held} similar message(s) suppressed)" if held else ""
            # Two call sites: rclpy refuses one call site logging at two severities ("Logger severity
            # cannot be changed between calls"), which would end the worker thread.
            if error:
                self.get_logger().error(text + suffix)
            else:
                self.get_logger().warning(text + suffix)

    def _listeners(self, p: NodeParams) -> int:
        n = self.det_pub.get_subscription_count()
        if p.publish_markers:
            n += self.marker_pub.get_subscription_count()
        return n

    def _process(self, msg: PointCloud2, t_received: float) -> None:
        p = self.params
        t0 = time.perf_counter()
        if p.skip_when_unsubscribed and self._listeners(p) == 0:
            self.stats.count("skipped_unsubscribed")
            self._add_to_history(msg)
            return
        stamp_ns = _stamp_ns(msg.header)
        now_ns = self.get_clock().now().nanoseconds
        if stamp_ns > 0 and p.max_input_age_ms > 0:
            age_ms = (now_ns - stamp_ns) / 1e6
            if age_ms > p.max_input_age_ms:
                self.stats.count("dropped_stale")
                self._warn("stale", f"dropped a frame {age_ms:.0f} ms old (max_input_age_ms "
                                    f"{p.max_input_age_ms:g}): it arrived late, or the sensor's clock "
                                    f"differs from this node's (check time sync and use_sim_time, or raise "
                                    f"max_input_age_ms; 0 disables the check)")
                return
        elif stamp_ns == 0:
            self.stats.note("unstamped", "cloud has a zero header stamp: its age cannot be checked")
        if stamp_ns > now_ns + _FUTURE_TOLERANCE_NS:
            ahead_ms = (stamp_ns - now_ns) / 1e6
            text = (f"cloud stamped {ahead_ms:.0f} ms in the future: the sensor's clock is ahead of this node's "
                    f"(check time sync: PTP/chrony, and use_sim_time)")
            self.stats.note("future_stamp", text)
            self._warn("future_stamp", text)

        header = Header(stamp=msg.header.stamp, frame_id=p.output_frame or msg.header.frame_id)
        queue_ms = (time.monotonic() - t_received) * 1e3
        try:
            frame = self.frame_input.convert(msg)
        except FrameRejected as rej:
            self.stats.reject(rej.kind, rej.message)
            self._warn(f"reject:{rej.kind}", f"rejected a frame ({rej.kind}): {rej.message}")
            self._publish_empty(header, p)
            self.stats.count("processed")
            return
        t_conv = time.perf_counter()
        for kind, text in frame.notes:
            self.stats.note(kind, text)
            self._warn(f"note:{kind}", text)
        if frame.layout_changed:
            scale = f"; intensity {frame.intensity.summary()}" if frame.intensity else ""
            self.get_logger().info(f"input layout of {self.sub.topic_name} ({msg.header.frame_id!r}, "
                                   f"{msg.point_step}-byte points): {frame.mapping}{scale}")

        points = frame.points
        if self.sweeps is not None:
            accumulated = self.sweeps.process(points, msg.header)
            if accumulated is None:
                reason = self.sweeps.buffer.last_info.skipped or "no pose for the cloud"
                self.stats.reject("no_pose", reason)
                self._warn("reject:no_pose", f"skipped a frame (sweeps): {reason}")
                self._publish_empty(header, p)
                self.stats.count("processed")
                return
            points = accumulated

        if p.mounting["frame"] and not self._resolve_mounting(msg.header.frame_id, p):
            self._publish_empty(header, p)
            self.stats.count("processed")
            return
        try:
            result = self.detector.detect(points)
        except Exception as exc:  # reported and answered (one answer per cloud); the next frame is processed
            self.stats.error(f"{type(exc).__name__}: {exc}")
            self._warn("detect", f"inference failed: {type(exc).__name__}: {exc}", error=True)
            self._publish_empty(header, p)
            return
        t_det = time.perf_counter()
        boxes = result.boxes
        if p.output_frame and p.output_frame != msg.header.frame_id:
            moved = self._to_output_frame(boxes, msg.header, p)
            if moved is None:
                self._publish_empty(header, p)
                self.stats.count("processed")
                return
            boxes = moved
        self.det_pub.publish(detections_to_msg(boxes, result.scores, result.labels, self.class_names, header))
        t_pub = time.perf_counter()
        output_ns = self.get_clock().now().nanoseconds
        # Markers cost more to build than the detections (3 markers, 26 points per box): only for listeners.
        if p.publish_markers and self.marker_pub.get_subscription_count():
            self.marker_pub.publish(detections_to_markers(boxes, result.scores, result.labels,
                                                          self.class_names, header, lifetime_s=p.marker_lifetime))
        t_markers = time.perf_counter()
        timings = dict(result.timings)
        timings.update(queue=queue_ms, convert=(t_conv - t0) * 1e3, publish=(t_pub - t_det) * 1e3,
                       markers=(t_markers - t_pub) * 1e3, node_total=(t_markers - t0) * 1e3)
        if stamp_ns > 0:
            timings["stamp_to_output"] = (output_ns - stamp_ns) / 1e6
        self.stats.latency(timings)
        st = result.stats
        self.stats.frame(
            frame_id=msg.header.frame_id, mapping=frame.mapping,
            points={"input": frame.num_input, "valid": frame.num_valid, "used": int(frame.points.shape[0]),
                    "accumulated": int(points.shape[0]), "dropped_cap": int(st.get("dropped_points", 0)),
                    "in_range": int(st.get("num_points_in_range", -1)), "detections": len(result.scores)},
            intensity=frame.intensity.summary() if frame.intensity else "",
            intensity_warning=(frame.intensity.warning or "") if frame.intensity else "",
            num_pillars=st.get("num_pillars"))
        self.stats.count("processed")
        self.stats.count("published")

    # --- frames: tf ------------------------------------------------------------------------------------
    def _tf(self) -> Any:
        """The node's tf2 buffer (with its listener), made on first use."""
        if self._tf_buffer is None:
            import tf2_ros

            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        return self._tf_buffer

    def _lookup(self, target: str, source: str, stamp: Any, p: NodeParams) -> Any:
        """``numpy`` 4x4 of ``target <- source`` at ``stamp`` (a ``rclpy.time.Time``), or None after a counted,
        throttled rejection."""
        from rclpy.duration import Duration

        try:
            tf = self._tf().lookup_transform(target, source, stamp,
                                             timeout=Duration(nanoseconds=round(p.transform_timeout_s * 1e9)))
        except Exception as exc:  # tf2 raises several exception types; all mean "no transform"
            reason = f"tf2 lookup {target} <- {source} failed: {type(exc).__name__}: {exc}"
            self.stats.reject("no_transform", reason)
            self._warn("reject:no_transform", f"answered a frame with no detections: {reason}")
            return None
        return transform_msg_to_matrix(tf.transform)

    def _resolve_mounting(self, cloud_frame: str, p: NodeParams) -> bool:
        """Give the detector the mounting of ``cloud_frame`` from tf (``mounting.frame``); False when unknown."""
        from rclpy.time import Time

        mounting = self._mounting_frames.get(cloud_frame)
        if mounting is None:
            m = self._lookup(p.mounting["frame"], cloud_frame, Time(), p)  # latest: a mounting is static
            if m is None:
                return False
            try:
                mounting = Mounting.from_transform(m[:3, :3], m[:3, 3])
            except ValueError as exc:
                self.stats.reject("no_transform", str(exc))
                self._warn("reject:mounting", f"mounting.frame {p.mounting['frame']!r}: {exc}")
                return False
            self._mounting_frames[cloud_frame] = mounting
            self.get_logger().info(f"mounting of {cloud_frame!r} from tf ({p.mounting['frame']}): "
                                   f"{_describe_mounting(mounting)}")
        self.detector.mounting_source = mounting
        return True

    def _to_output_frame(self, boxes: Any, header: Header, p: NodeParams) -> Any:
        from rclpy.time import Time

        m = self._lookup(p.output_frame, header.frame_id, Time.from_msg(header.stamp), p)
        if m is None:
            return None
        return transform_boxes(boxes, m[:3, :3], m[:3, 3])[0]

    def _publish_empty(self, header: Header, p: NodeParams) -> None:
        self.det_pub.publish(Detection3DArray(header=header))
        if p.publish_markers:
            self.marker_pub.publish(detections_to_markers(_EMPTY_BOXES, _EMPTY, _EMPTY_LABELS, self.class_names,
                                                          header))
        self.stats.count("published")

    # --- diagnostics ----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        det, p = self.detector, self.params
        static = {
            "model": det.config.name if hasattr(det, "config") else p.model,
            "checkpoint": str(getattr(det, "checkpoint", None) or p.checkpoint or "RANDOM WEIGHTS"),
            "backend": det.backend, "device": det.device, "precision": det.precision,
            "classes": ",".join(self.class_names),
            "point_features": ",".join(det.point_features),
            "score_thresholds": _thresholds_text(det, p, self),
            "model_intensity_scale": f"{det.intensity_scale:g}",
            "intensity_scale_param": str(p.intensity_scale),
            "max_points": p.max_points, "max_input_age_ms": f"{p.max_input_age_ms:g}",
            "cpu_threads": _torch_threads(),
            "input_topic": self.sub.topic_name,
        }
        if kernels := getattr(det, "cpu_kernels", None):
            static["cpu_kernels"] = kernels
        cap = getattr(det, "max_pillars", None) or None
        now = self.get_clock().now().to_msg()
        out = DiagnosticArray()
        out.header.stamp = now
        extra = {}
        if self.sweeps is not None:
            extra = {f"sweeps.{k}": v for k, v in self.sweeps.status().items()}
        extra.update(self._mounting_status(p))
        for s in self.stats.statuses(self.get_name(), static, pillar_cap=cap, extra_input=extra):
            out.status.append(DiagnosticStatus(
                level=bytes([s.level]), name=s.name, message=s.message, hardware_id=f"{det.device}",
                values=[KeyValue(key=k, value=v) for k, v in s.values]))
        self.diag_pub.publish(out)

    def _mounting_status(self, p: NodeParams) -> dict[str, str]:
        """``mounting.*`` diagnostics values: the mounting in force, where it comes from, the auto fit's quality."""
        source = getattr(self.detector, "mounting_source", None)
        current = getattr(self.detector, "mounting", None)
        kind = "auto" if p.mounting["auto"] else "tf " + p.mounting["frame"] if p.mounting["frame"] else "parameters"
        out = {"mounting.source": kind,
               "mounting.in_force": _describe_mounting(current) if current else "model's own (level, no change)"}
        if isinstance(source, AutoMounting):
            last = source.last
            out.update({"mounting.auto.fits": str(source.fits), "mounting.auto.rejected": str(source.rejected),
                        "mounting.auto.last_quality": f"{last.quality:.2f}" if last else "",
                        "mounting.auto.last_inlier_fraction": f"{last.inlier_fraction:.2f}" if last else "",
                        "mounting.auto.last_rms_m": f"{last.rms:.3f}" if last else "",
                        "mounting.auto.last_fit": _describe_mounting(last.mounting) if last else "no fit yet"})
        return out

    def close(self) -> None:
        """Stop the worker thread (waits for the frame in progress); library records go back to ``logging``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._worker.join(timeout=10.0)
        self._log_bridge.remove()


class LogBridge(logging.Handler):
    """Library records (``fastpillars_ros.*`` loggers: caps exceeded, CPU fall-back, engine builds) into the node's
    logger, so they reach /rosout; throttled per message kind like the node's own warnings (same
    ``warning_period``). INFO and up are forwarded (Python's default would drop INFO)."""

    def __init__(self, node: DetectorNode) -> None:
        super().__init__(logging.INFO)
        self.node = node
        self.library = logging.getLogger("fastpillars_ros")
        self._saved = (self.library.level, self.library.propagate)
        self.library.setLevel(logging.INFO)
        self.library.propagate = False  # else Python's last-resort handler prints the warnings a second time
        self.library.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ok, held = self.node.throttle.ready(f"lib:{record.name}:{record.msg}")
            if not ok:
                return
            text = record.getMessage() + (f" ({held} similar message(s) suppressed)" if held else "")
            log = self.node.get_logger()
            # One call site per severity: rclpy refuses one site logging at two severities.
            if record.levelno >= logging.ERROR:
                log.error(text)
            elif record.levelno >= logging.WARNING:
                log.warning(text)
            else:
                log.info(text)
        except Exception:  # logging must never break the caller
            self.handleError(record)

    def remove(self) -> None:
        self.library.removeHandler(self)
        self.library.setLevel(self._saved[0])
        self.library.propagate = self._saved[1]


def _describe_mounting(m: Mounting) -> str:
    import math

    return (f"height {m.height:.3f} m, roll {math.degrees(m.roll):.2f} deg, "
            f"pitch {math.degrees(m.pitch):.2f} deg")


def _thresholds_text(det: Any, p: NodeParams, node: DetectorNode) -> str:
    """The published score per class, "car=0.504, pedestrian=0.491, ..." (the user's, else the weights' calibrated
    defaults for the precision that runs)."""
    current = getattr(det, "score_thresholds", None)
    if isinstance(current, dict):
        chosen = current
    elif (eff := p.effective_score_threshold(node.class_names)) is None:
        chosen = dict(getattr(det, "default_score_thresholds", {}))
    else:
        chosen = eff if isinstance(eff, dict) else {c: eff for c in node.class_names}
    return ", ".join(f"{k}={v:.3g}" for k, v in chosen.items())


def _torch_threads() -> int | str:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else ""


def _numpy_empty():
    import numpy as np

    return np.zeros((0, 7), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)


_EMPTY_BOXES, _EMPTY, _EMPTY_LABELS = _numpy_empty()


def _build_detector(params: NodeParams, cfg: Any) -> Any:
    from fastpillars_ros.detector import Detector

    if params.cpu_threads:
        import torch

        torch.set_num_threads(params.cpu_threads)

    kwargs = params.detector_kwargs(cfg.class_names)
    sweeps = SweepParams.from_values(params.sweeps)
    if sweeps.resolve(cfg.num_sweeps, cfg.point_features)[0] and sweeps.max_points:
        # The accumulated cloud is already capped, oldest sweeps first; a second, even subsample by the
        # Detector would undo that order.
        kwargs["max_points"] = max(kwargs["max_points"], sweeps.max_points)
    return Detector(cfg, **kwargs)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``detector_node``; returns the exit code (see the module docstring)."""
    try:
        return _run(args)
    except KeyboardInterrupt:  # a further Ctrl-C that came before the clean-up ignored them: still a normal stop
        return 0


def _run(args: Sequence[str] | None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = DetectorNode()
        except StartupError as exc:
            # The logger goes to stderr (and /rosout); print too, in case logging is configured away.
            rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
            print(f"[{NODE_NAME}] FATAL: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        except KeyboardInterrupt:  # Ctrl-C while the model loads or warms up
            print(f"[{NODE_NAME}] interrupted during start-up", file=sys.stderr, flush=True)
            return 130
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        # Shutting down: a second Ctrl-C (a supervisor signalling the whole process group, then the launcher
        # forwarding its own) must not break the clean-up with a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # shutdown put rclpy's predecessor handler back


if __name__ == "__main__":
    sys.exit(main())
