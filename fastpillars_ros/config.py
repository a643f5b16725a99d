"""Model configurations as data: dataclasses, YAML loading and validation.

A model config (``config/models/<name>.yaml``) fully determines the network's shapes (so that a
checkpoint can be checked against it) and how raw head outputs are decoded into boxes. Everything is
validated at load time; every error names the offending key and says how to fix it.

Units: metres for ranges and sizes, radians for angles. ``pc_range`` is
``[x_min, y_min, z_min, x_max, y_max, z_max]`` in the sensor frame the model was trained in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

#: Names a point feature column may have. ``dt`` is the time lag of a past sweep in seconds.
KNOWN_POINT_FEATURES = ("x", "y", "z", "intensity", "dt")
#: Head branches in the official order (the order matters for exported outputs).
#: ``axis`` is ours (see :class:`HeadConfig`), placed after the official ones so official exports keep their order.
HEAD_ORDER = ("reg", "height", "dim", "rot", "vel", "iou", "axis", "hm")
#: Output channels of the regression branches (``hm`` has one channel per class of the task).
HEAD_CHANNELS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2, "iou": 1, "axis": 2}
NMS_KINDS = ("rotate", "circle", "none")


class ConfigError(ValueError):
    """A model config is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class EncoderConfig:
    """MAPE pillar encoder: per-point MLP width and BatchNorm epsilon."""

    num_filters: int = 64
    bn_eps: float = 1e-3


@dataclass(frozen=True)
class BackboneConfig:
    """CRVNet: four stages of RepVGG blocks.

    ``num_blocks[i]`` counts RepDense2DBasicBlocks (two RepVGG blocks each) after the first block of
    stage i; ``strides[i]`` is the stride of that first block.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512)
    num_blocks: tuple[int, ...] = (6, 6, 3, 1)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    bn_eps: float = 1e-3


@dataclass(frozen=True)
class NeckConfig:
    """RPNV2 neck fusing the outputs of backbone stages 3 and 4."""

    layer_nums: tuple[int, ...] = (5, 5)
    ds_num_filters: tuple[int, ...] = (256, 256)
    us_num_filters: tuple[int, ...] = (128, 128)
    bn_eps: float = 1e-3


@dataclass(frozen=True)
class HeadConfig:
    """CenterPoint-style head: shared conv then one SepHead per task.

    ``axis``: add a branch regressing ``(sin 2r, cos 2r)``, the box's axis without its direction (not in the
    official model). The official ``rot = (sin r, cos r)`` must average the two readings of a car seen from
    the side whose front and back look alike; the average points nowhere and the decoded yaw is off by tens
    of degrees, which costs IoU. With ``axis`` the yaw comes from the axis branch and ``rot`` only chooses
    which of the two directions along that axis is the front.
    """

    shared_conv: int = 64
    head_conv: int = 64
    final_kernel: int = 3
    bn_eps: float = 1e-5
    iou: bool = True
    axis: bool = False


@dataclass(frozen=True)
class DecodeConfig:
    """Turning head maps into scored candidate boxes (and NMS settings used by the caller)."""

    score_threshold: float = 0.1
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    rectifier: float = 0.5
    pre_max: int = 1000
    post_max: int = 83
    nms_iou_threshold: float = 0.2
    nms_kind: str = "rotate"
    # After NMS, a box is dropped when at least this fraction of its BEV area lies inside a stronger, larger box
    # of another class (a pedestrian inside a car; ops/nms.suppress_contained). 0: off.
    nms_containment: float = 0.0


@dataclass(frozen=True)
class TerrainConfig:
    """Terrain following (:mod:`fastpillars_ros.terrain`): heights measured from the local ground, found on a
    grid of ``cell`` m squares as the median over ``window`` x ``window`` cells of each cell's lowest point within
    ``max_offset`` m of the ground plane (cells with fewer than ``min_points`` such points see no ground)."""

    cell: float = 1.0
    window: int = 3
    max_offset: float = 1.0
    min_points: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one FastPillars model variant."""

    name: str
    tasks: tuple[tuple[str, ...], ...]
    pc_range: tuple[float, ...]
    pillar_size: tuple[float, float]
    point_features: tuple[str, ...]
    intensity_scale: float
    num_sweeps: int = 1
    vel: bool = False
    out_size_factor: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    description: str = ""
    #: Height of the sensor above the ground in the training data [m], level axes (KITTI HDL-64 and the
    #: simulator: 1.73). :class:`~fastpillars_ros.mounting.Mounting` moves other mountings to it.
    sensor_height: float = 1.73
    #: Terrain following, None = off (heights from the ground plane z = -sensor_height). The network is trained
    #: with the setting it is used with.
    terrain: TerrainConfig | None = None

    # ---- derived values -------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """All classes in global label order (task by task)."""
        return tuple(c for task in self.tasks for c in task)

    @property
    def grid_size(self) -> tuple[int, int]:
        """BEV canvas size ``(nx, ny)`` in pillars, rounded like det3d (``np.round`` of range/size)."""
        return _grid_size(self.pc_range, self.pillar_size)

    @property
    def canvas_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of the pillar canvas fed to the dense part (H = rows = y)."""
        nx, ny = self.grid_size
        return (self.encoder.num_filters, ny, nx)

    @property
    def head_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the head output maps."""
        nx, ny = self.grid_size
        return (ny // self.out_size_factor, nx // self.out_size_factor)

    @property
    def num_point_features(self) -> int:
        """Raw input columns per point (x, y, z, intensity[, dt])."""
        return len(self.point_features)

    @property
    def num_decorated_features(self) -> int:
        """MAPE input width: raw columns followed by the 3 offsets to the pillar centre."""
        return len(self.point_features) + 3

    @property
    def heads(self) -> tuple[tuple[str, int], ...]:
        """Regression branches ``(name, channels)`` in export order (``hm`` excluded; it is per task)."""
        out = []
        for name in HEAD_ORDER[:-1]:
            if name == "vel" and not self.vel:
                continue
            if name == "iou" and not self.head.iou:
                continue
            if name == "axis" and not self.head.axis:
                continue
            out.append((name, HEAD_CHANNELS[name]))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict/list form, same keys as the YAML files (YAML- and ``weights_only``-safe)."""
        d = _plain(asdict(self))
        d["classes"] = d.pop("tasks")  # same spelling as the YAML files
        return d


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _grid_size(pc_range: tuple[float, ...], pillar_size: tuple[float, float]) -> tuple[int, int]:
    # det3d/PillarNet: np.round((max - min) / size). Python's round() is banker's rounding like np.round.
    nx = round((pc_range[3] - pc_range[0]) / pillar_size[0])
    ny = round((pc_range[4] - pc_range[1]) / pillar_size[1])
    return int(nx), int(ny)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------

def models_dir() -> Path:
    """Folder holding the bundled ``<name>.yaml`` model configs (source tree first, then install)."""
    src = Path(__file__).resolve().parents[1] / "config" / "models"
    if src.is_dir():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("fastpillars_ros")) / "config" / "models"
    except Exception:  # not installed through ament: report the source location in errors
        return src


def available_models() -> list[str]:
    """Names of the bundled model configs."""
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


#: The embedded default model: what ``Detector()``, the node and every command use when no model is named.
DEFAULT_MODEL = "tiny360"


def load_model_config(name_or_path: str | Path | ModelConfig) -> ModelConfig:
    """Load and validate a model config.

    Args:
        name_or_path: a bundled config name (``"tiny"``, ``"kitti"``, ``"nuscenes_official"``), a path to
            a YAML file, or an existing :class:`ModelConfig` (returned unchanged).
    Raises:
        ConfigError: unknown name, unreadable file or an invalid value (the message names the key).
    """
    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = models_dir() / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown model config {text!r}: no file {path}. Use one of {available_models()} "
                "or pass a path to a .yaml file")
    if not path.is_file():
        raise ConfigError(f"model config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"model config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must be a YAML mapping of keys to values")
    return config_from_dict(data, source=str(path))


def _section(cls: type, data: Any, key: str, source: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in '{key}'; allowed keys: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: bad '{key}': {exc}") from exc


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ModelConfig:
    """Build a validated :class:`ModelConfig` from a plain dict (the YAML content)."""
    top = {f.name for f in fields(ModelConfig)} | {"classes"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; allowed keys: {sorted(top)}")
    if "tasks" in data and "classes" not in data:
        data = {**data, "classes": data["tasks"]}
    required = ["name", "classes", "pc_range", "pillar_size", "point_features", "intensity_scale"]
    for key in required:
        if key not in data:
            raise ConfigError(f"{source}: missing required key '{key}'")
    classes = data["classes"]
    if not isinstance(classes, list) or not classes:
        raise ConfigError(f"{source}: 'classes' must be a non-empty list of tasks, each a list of class names, "
                          "e.g. classes: [[car], [pedestrian, cyclist]]")
    tasks = []
    for i, task in enumerate(classes):
        if isinstance(task, str):
            task = [task]
        if not isinstance(task, list) or not task or not all(isinstance(c, str) for c in task):
            raise ConfigError(f"{source}: 'classes[{i}]' must be a non-empty list of class name strings")
        tasks.append(tuple(task))
    cfg = ModelConfig(
        name=str(data["name"]),
        tasks=tuple(tasks),
        pc_range=tuple(float(v) for v in _list(data, "pc_range", 6, source)),
        pillar_size=tuple(float(v) for v in _list(data, "pillar_size", 2, source)),  # type: ignore[arg-type]
        point_features=tuple(str(v) for v in _list(data, "point_features", None, source)),
        intensity_scale=_number(data, "intensity_scale", source),
        num_sweeps=int(data.get("num_sweeps", 1)),
        vel=bool(data.get("vel", False)),
        out_size_factor=int(data.get("out_size_factor", 4)),
        encoder=_section(EncoderConfig, data.get("encoder"), "encoder", source),
        backbone=_section(BackboneConfig, data.get("backbone"), "backbone", source),
        neck=_section(NeckConfig, data.get("neck"), "neck", source),
        head=_section(HeadConfig, data.get("head"), "head", source),
        decode=_section(DecodeConfig, data.get("decode"), "decode", source),
        description=str(data.get("description", "")),
        sensor_height=_number(data, "sensor_height", source) if "sensor_height" in data else 1.73,
        terrain=None if data.get("terrain") is None else _section(TerrainConfig, data["terrain"], "terrain", source),
    )
    validate(cfg, source)
    return cfg


def _list(data: dict[str, Any], key: str, n: int | None, source: str) -> list[Any]:
    v = data[key]
    if not isinstance(v, list) or (n is not None and len(v) != n):
        want = f"a list of {n} values" if n else "a list"
        raise ConfigError(f"{source}: '{key}' must be {want}, got {v!r}")
    return v


def _number(data: dict[str, Any], key: str, source: str) -> float:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{source}: '{key}' must be a number, got {v!r}")
    return float(v)


def validate(cfg: ModelConfig, source: str = "<config>") -> None:
    """Check consistency; raise :class:`ConfigError` naming the key and the fix."""
    def fail(msg: str) -> None:
        raise ConfigError(f"{source}: {msg}")

    r = cfg.pc_range
    if not (r[3] > r[0] and r[4] > r[1] and r[5] > r[2]):
        fail(f"'pc_range' must be [x_min, y_min, z_min, x_max, y_max, z_max] with max > min, got {list(r)}")
    if any(s <= 0 for s in cfg.pillar_size):
        fail(f"'pillar_size' must be positive, got {list(cfg.pillar_size)}")
    if not cfg.sensor_height > 0:
        fail(f"'sensor_height' is the training sensor's height above the ground in metres, got {cfg.sensor_height}")
    for axis, i in (("x", 0), ("y", 1)):
        cells = (r[3 + i] - r[i]) / cfg.pillar_size[i]
        if abs(cells - round(cells)) > 1e-3:
            fail(f"'pc_range' {axis} extent {r[3 + i] - r[i]:g} m is not a whole number of "
                 f"'pillar_size' {cfg.pillar_size[i]:g} m cells ({cells:.4f}); adjust the range or the size")
    names = list(cfg.point_features)
    if names[:3] != ["x", "y", "z"]:
        fail(f"'point_features' must start with x, y, z, got {names}")
    bad = [n for n in names if n not in KNOWN_POINT_FEATURES]
    if bad or len(set(names)) != len(names):
        fail(f"'point_features' has unknown or repeated names {bad or names}; allowed: {list(KNOWN_POINT_FEATURES)}")
    if cfg.intensity_scale <= 0:
        fail("'intensity_scale' (max intensity value seen in training, e.g. 255 or 1) must be > 0")
    if cfg.num_sweeps < 1:
        fail("'num_sweeps' must be >= 1")
    if cfg.num_sweeps > 1 and "dt" not in names:
        fail("'num_sweeps' > 1 needs a 'dt' column in 'point_features' (time lag of each sweep)")
    if len(set(cfg.class_names)) != len(cfg.class_names):
        fail(f"'classes' repeats a class name: {list(cfg.class_names)}")
    b = cfg.backbone
    if not (len(b.widths) == len(b.num_blocks) == len(b.strides) == 4):
        fail("'backbone.widths', 'backbone.num_blocks' and 'backbone.strides' must each have 4 entries "
             "(one per CRVNet stage)")
    if any(s not in (1, 2) for s in b.strides) or b.strides[3] != 2:
        fail(f"'backbone.strides' must be 1 or 2 per stage and the last stage must be 2 (the neck "
             f"upsamples it x2), got {list(b.strides)}")
    if any(w <= 0 for w in b.widths) or any(n < 0 for n in b.num_blocks):
        fail("'backbone.widths' must be positive and 'backbone.num_blocks' non-negative")
    stride = b.strides[0] * b.strides[1] * b.strides[2]
    if cfg.out_size_factor != stride:
        fail(f"'out_size_factor' must equal the stride of backbone stage 3 w.r.t. the pillar grid "
             f"(product of backbone.strides[:3] = {stride}), got {cfg.out_size_factor}")
    nx, ny = cfg.grid_size
    total = stride * b.strides[3]
    if nx % total or ny % total:
        fail(f"grid {nx}x{ny} pillars must be divisible by the total backbone stride {total} so that the "
             "neck's upsampled stage-4 map matches stage 3; adjust 'pc_range' or 'pillar_size'")
    n = cfg.neck
    if not (len(n.layer_nums) == len(n.ds_num_filters) == len(n.us_num_filters) == 2):
        fail("'neck.layer_nums', 'neck.ds_num_filters', 'neck.us_num_filters' must have 2 entries each "
             "(index 0 = stage-3 path, 1 = stage-4 path)")
    if cfg.head.final_kernel not in (1, 3):
        fail("'head.final_kernel' must be 1 or 3")
    for flag in ("iou", "axis"):
        if not isinstance(getattr(cfg.head, flag), bool):
            fail(f"'head.{flag}' must be true or false, got {getattr(cfg.head, flag)!r}")
    d = cfg.decode
    if len(d.post_center_range) != 6:
        fail("'decode.post_center_range' must have 6 values [x_min, y_min, z_min, x_max, y_max, z_max]")
    if not 0.0 <= d.rectifier <= 1.0:
        fail(f"'decode.rectifier' (IoU weight alpha in score^(1-a) * iou^a) must be in [0, 1], got {d.rectifier}")
    if d.rectifier > 0 and not cfg.head.iou:
        fail("'decode.rectifier' > 0 needs the IoU branch ('head.iou: true'); set it to 0 otherwise")
    if not 0.0 <= d.score_threshold < 1.0:
        fail("'decode.score_threshold' must be in [0, 1)")
    if d.pre_max < 1 or d.post_max < 1:
        fail("'decode.pre_max' and 'decode.post_max' must be >= 1")
    if d.nms_kind not in NMS_KINDS:
        fail(f"'decode.nms_kind' must be one of {list(NMS_KINDS)}, got {d.nms_kind!r}")
    if not 0.0 < d.nms_iou_threshold <= 1.0:
        fail("'decode.nms_iou_threshold' must be in (0, 1]")
    if not 0.0 <= d.nms_containment <= 1.0:
        fail(f"'decode.nms_containment' must be in [0, 1] (0: off), got {d.nms_containment}")
    if not math.isfinite(cfg.intensity_scale):
        fail("'intensity_scale' must be finite")
    t = cfg.terrain
    if t is not None:
        if not (isinstance(t.cell, (int, float)) and t.cell > 0):
            fail(f"'terrain.cell' must be a positive number of metres, got {t.cell!r}")
        if not (isinstance(t.window, int) and t.window >= 1 and t.window % 2 == 1):
            fail(f"'terrain.window' must be an odd number of cells >= 1 (e.g. 3), got {t.window!r}")
        if not (isinstance(t.max_offset, (int, float)) and t.max_offset > 0):
            fail(f"'terrain.max_offset' must be a positive number of metres, got {t.max_offset!r}")
        if not (isinstance(t.min_points, int) and t.min_points >= 1):
            fail(f"'terrain.min_points' must be an integer >= 1, got {t.min_points!r}")
