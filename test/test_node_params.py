"""Detector node parameters: schema, defaults file, validation messages, launch file vs local launcher."""

from __future__ import annotations

import ast
from dataclasses import fields as dc_fields
from pathlib import Path

import pytest
import yaml

from fastpillars_ros.ros import node_params
from fastpillars_ros.ros.node_params import SPECS, NodeParams, ParamError, coerce, parse
from fastpillars_ros.ros.sweep_params import SweepParams
from fastpillars_ros.tools import launch

ROOT = Path(__file__).resolve().parents[1]


# --- schema and defaults -------------------------------------------------------------------------------

def test_dataclass_defaults_equal_the_schema_defaults():
    params = NodeParams()
    for spec in SPECS:
        assert params.get(spec.name) == spec.default, spec.name
        coerce(spec.name, spec.default)  # every default is itself valid
    params.validate()
    # Every dataclass attribute is covered by the schema (dict groups through their dotted names).
    covered = {spec.name.partition(".")[0] for spec in node_params.SPECS} | {"score_thresholds"}
    assert {f.name for f in dc_fields(NodeParams)} == covered


def test_params_file_lists_every_parameter_with_its_default():
    data = yaml.safe_load((ROOT / "config" / "fastpillars.yaml").read_text())
    flat = node_params.flatten(data["/**"]["ros__parameters"])
    assert flat == NodeParams().to_parameters()
    assert set(flat) == {s.name for s in node_params.SPECS}
    assert {"sweeps.enabled", "sweeps.ego_box.x_min", "sweeps.sensor_to_base.yaw"} <= set(flat)


def test_params_file_is_the_generated_one_with_descriptions():
    assert (ROOT / "config" / "fastpillars.yaml").read_text() == node_params.default_yaml()


def test_every_parameter_has_a_description_and_numbers_have_ranges():
    for spec in SPECS:
        assert len(spec.description) > 15, spec.name
        if spec.kind in ("double", "integer"):
            assert spec.range is not None and spec.range[0] <= spec.default <= spec.range[1], spec.name


def test_runtime_changeable_parameters_include_the_thresholds():
    runtime = {s.name for s in SPECS if s.runtime}
    assert {"score_threshold", "max_input_age_ms", "publish_markers", "intensity_scale"} <= runtime
    assert not {"model", "backend", "device", "precision", "max_points"} & runtime


# --- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "expected"), [
    ("score_threshold", 1.5, "[-1, 1]"),
    ("score_threshold", "high", "[-1, 1]"),
    ("backend", "onnx", "'auto', 'torch', 'tensorrt'"),
    ("device", "gpu", "'auto', 'cpu', 'cuda'"),
    ("precision", "int4", "'fp32', 'fp16', 'bf16', 'int8'"),
    ("on_insufficient_memory", "crash", "'error', 'fp16', 'cpu'"),
    ("nms_kind", "soft", "'rotate'"),
    ("nms_iou_threshold", 0.0, "0 is not allowed"),
    ("nms_pre_max", -5, "[0, 100000]"),
    ("nms_post_max", 2.5, "an integer"),
    ("nms_containment", 1.5, "[-1, 1]"),
    ("max_points", 10, "[1000, 10000000]"),
    ("max_input_age_ms", -1.0, "[0, 600000]"),
    ("intensity_scale", "loud", "'auto' or a number > 0"),
    ("intensity_scale", 0.0, "'auto' or a number > 0"),
    ("intensity_scale", -255, "'auto' or a number > 0"),
    ("fields.x", "", "x, y and z cannot be filled"),
    ("fields.intensity", "intensity,,reflectivity", "without empty entries"),
    ("missing_field", "zero", "'fill', 'error'"),
    ("publish_markers", "yes", "true or false"),
    ("diagnostics_period", 0.0, "[0.1, 60]"),
    ("score_thresholds.car", 2.0, "negative = use score_threshold"),
    ("model", "", "a bundled model name"),
])
def test_each_bad_value_gets_a_specific_error(name, value, expected):
    with pytest.raises(ParamError) as info:
        parse({name: value})
    (message,) = info.value.errors
    assert f"'{name}'" in message and repr(value) in message
    assert expected in message
    assert "fix:" in message and f"-p {name}:=" in message


def test_all_bad_values_are_reported_at_once():
    with pytest.raises(ParamError) as info:
        parse({"backend": "onnx", "max_points": 5, "score_threshold": 3.0, "model": "tiny"})
    assert len(info.value.errors) == 3
    text = str(info.value)
    assert "3 invalid parameter value(s)" in text and "backend" in text and "max_points" in text


def test_values_are_coerced_to_their_types():
    params, warnings = parse({"score_threshold": 0, "nms_pre_max": 200.0, "intensity_scale": "0.00392",
                              "device": "cpu", "fields.intensity": "intensity, reflectivity",
                              "score_thresholds.car": 0.4})
    assert warnings == []
    assert params.score_threshold == 0.0 and isinstance(params.score_threshold, float)
    assert params.nms_pre_max == 200 and isinstance(params.nms_pre_max, int)
    assert params.intensity_scale == pytest.approx(0.00392)
    assert params.intensity_multiplier() == pytest.approx(0.00392)
    assert params.field_candidates("intensity") == ["intensity", "reflectivity"]
    assert params.field_candidates("dt") == []
    assert params.score_thresholds == {"car": 0.4}
    assert parse({"intensity_scale": 255})[0].intensity_scale == 255.0
    assert parse({"intensity_scale": "AUTO"})[0].intensity_multiplier() is None


@pytest.mark.parametrize(("value", "kwarg"), [(-1.0, None), (0.0, 0.0), (0.6, 0.6)])
def test_nms_containment_reaches_the_detector_negative_meaning_the_model_default(value, kwarg):
    params, _ = parse({"nms_containment": value})
    assert params.detector_kwargs(["car"])["nms_containment"] == kwarg


def test_sweeps_parameters_are_parsed_validated_and_kept():
    params, warnings = parse({"sweeps.enabled": True, "sweeps.num_sweeps": 5.0, "sweeps.ego_box.x_min": -2})
    assert warnings == []
    assert params.sweeps["enabled"] == "true" and params.sweeps["num_sweeps"] == 5
    assert params.get("sweeps.ego_box.x_min") == -2.0
    sp = SweepParams.from_values(params.sweeps)
    assert sp.enabled == "true" and sp.num_sweeps == 5 and sp.ego_box[0] == -2.0
    with pytest.raises(ParamError) as info:
        parse({"sweeps.pose_source": "gps", "sweeps.num_sweep": 3})
    assert len(info.value.errors) == 1 and "sweeps.pose_source" in info.value.errors[0]
    assert "did you mean 'sweeps.num_sweeps'" in parse({"sweeps.num_sweepss": 3})[1][0]


def test_unknown_parameters_warn_with_a_suggestion_and_foreign_ones_are_ignored():
    params, warnings = parse({"score_treshold": 0.3, "use_sim_time": True, "qos_overrides./points.reliability": "x"})
    assert params.score_threshold == -1.0
    assert len(warnings) == 1 and "'score_treshold'" in warnings[0] and "did you mean 'score_threshold'" in warnings[0]


def test_class_thresholds_must_name_model_classes():
    params, _ = parse({"score_thresholds.truck": 0.3, "score_thresholds.car": 0.2})
    with pytest.raises(ParamError) as info:
        node_params.check_class_thresholds(params, ["car", "pedestrian", "cyclist"], "tiny")
    (message,) = info.value.errors
    assert "score_thresholds.truck" in message and "'tiny'" in message and "pedestrian" in message


def test_point_features_must_be_mappable():
    params = NodeParams()
    node_params.check_point_features(params, ["x", "y", "z", "intensity", "dt"], "m")  # dt/intensity fill
    with pytest.raises(ParamError, match="'ring'"):
        node_params.check_point_features(params, ["x", "y", "z", "ring"], "m")


def test_effective_score_threshold_combines_global_class_and_model_default():
    p = NodeParams()
    assert p.effective_score_threshold(["car", "ped"]) is None  # the model's own defaults
    p.score_threshold = 0.3
    assert p.effective_score_threshold(["car", "ped"]) == 0.3
    p.score_thresholds = {"car": 0.5, "ped": -1.0}
    assert p.effective_score_threshold(["car", "ped"]) == {"car": 0.5, "ped": 0.3}
    p.score_threshold = -1.0
    assert p.effective_score_threshold(["car", "ped"]) == {"car": 0.5}  # ped keeps the model's default


def test_flatten_nested_parameter_files():
    assert node_params.flatten({"a": 1, "fields": {"x": "x", "deep": {"k": 2}}}) == \
        {"a": 1, "fields.x": "x", "fields.deep.k": 2}


# --- launch file vs local launcher -----------------------------------------------------------------------

def test_launch_file_and_launcher_expose_the_same_arguments_and_defaults(launch_file):
    declared = {args[0]: kw for args, kw in launch_file.module.generate_launch_description()[:-1]}
    assert list(declared) == [a.name for a in launch.LAUNCH_ARGUMENTS]
    for arg in launch.LAUNCH_ARGUMENTS:
        assert declared[arg.name]["description"] == arg.description, arg.name
        expected = str(ROOT / "config" / "fastpillars.yaml") if arg.name == "params_file" else arg.default
        assert declared[arg.name]["default_value"] == expected, arg.name
    # The command-line flags of the launcher: one per launch argument, same defaults.
    import argparse

    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    ns = parser.parse_args([])
    for arg in launch.LAUNCH_ARGUMENTS:
        value = getattr(ns, arg.name)
        if arg.name == "params_file":
            assert Path(value) == ROOT / "config" / "fastpillars.yaml"
        elif isinstance(value, bool):
            assert str(value).lower() == arg.default, arg.name
        else:
            assert value == arg.default, arg.name


def test_launcher_builds_the_node_command_with_params_file_remap_and_overrides():
    import argparse

    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    ns = parser.parse_args(["--input-topic", "/lidar/top", "--model", "kitti", "--checkpoint", "123",
                            "--use-sim-time", "-p", "score_threshold:=0.3"])
    cmd = launch.node_command(ns)
    assert cmd[1:4] == ["-m", "fastpillars_ros.ros.node", "--ros-args"]
    text = " ".join(cmd)
    assert f"--params-file {ROOT / 'config' / 'fastpillars.yaml'}" in text
    assert "-r points:=/lidar/top" in text
    assert "-p model:=kitti" in text
    assert '-p checkpoint:="123"' in text  # stays a string for rcl's YAML parser
    assert "-p use_sim_time:=true" in text
    assert "-p score_threshold:=0.3" in text
    assert "backend" not in text  # empty = keep the parameter file's value
    assert launch.node_overrides() == {}  # use_sim_time too: the parameter file's value holds


def test_launcher_does_not_force_loopback_unless_asked(monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    assert launch._environment(False)["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"
    assert launch._environment(True)["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_launcher_rejects_a_missing_params_file(tmp_path, capsys):
    assert launch.main(["--params-file", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err


def test_rviz_config_is_valid_and_shows_cloud_markers_and_detections():
    data = yaml.safe_load((ROOT / "config" / "fastpillars.rviz").read_text())
    displays = {d["Class"]: d for d in data["Visualization Manager"]["Displays"]}
    assert displays["rviz_default_plugins/PointCloud2"]["Topic"]["Reliability Policy"] == "Best Effort"
    # Relative topics: under a namespaced launch RViz (in the same namespace) shows that detector's topics.
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "detection_markers"
    assert displays["vision_msgs_rviz_plugins/Detection3DArray"]["Topic"]["Value"] == "detections"
    text = launch.rviz_config_text("lidar/top", "velodyne")
    data = yaml.safe_load(text)
    assert data["Visualization Manager"]["Global Options"]["Fixed Frame"] == "velodyne"
    cloud = next(d for d in data["Visualization Manager"]["Displays"] if d["Class"].endswith("PointCloud2"))
    assert cloud["Topic"]["Value"] == "lidar/top"


def test_ros_descriptors_carry_ranges_choices_and_read_only():
    from rcl_interfaces.msg import ParameterType

    from fastpillars_ros.ros.node import descriptor

    d = descriptor(node_params.SPEC_BY_NAME["score_threshold"])
    assert d.type == ParameterType.PARAMETER_DOUBLE and not d.read_only
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (-1.0, 1.0)
    assert "the model's default" in d.description
    d = descriptor(node_params.SPEC_BY_NAME["max_points"])
    assert d.read_only and (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1000, 10_000_000)
    d = descriptor(node_params.SPEC_BY_NAME["backend"])
    assert d.read_only and "'tensorrt'" in d.additional_constraints
    d = descriptor(node_params.SPEC_BY_NAME["intensity_scale"])
    assert d.dynamic_typing and not d.read_only


# --- YAML typing of string values (ros2 param dump writes `fields.y: y`) ----------------------------------

def test_string_parameters_take_back_what_yaml_made_of_them():
    params, _ = parse({"fields.y": True, "checkpoint": 123, "expected_frame_id": 1.5})
    assert params.fields["y"] == "y" and params.checkpoint == "123" and params.expected_frame_id == "1.5"
    assert parse({"sweeps.fixed_frame": 7})[0].sweeps["fixed_frame"] == "7"


def test_a_boolean_that_is_not_the_default_word_asks_for_quotes():
    with pytest.raises(ParamError, match="quote the string"):
        parse({"fields.intensity": True})


# --- mounting and output frame -----------------------------------------------------------------------

def test_mounting_parameters_give_the_detector_its_mounting():
    from fastpillars_ros.mounting import AutoMounting, Mounting

    assert parse({})[0].mounting_source() is None
    assert parse({"mounting.height": 0.6, "mounting.pitch": 0.1})[0].mounting_source() == Mounting(0.6, 0.0, 0.1)
    assert isinstance(parse({"mounting.auto": True})[0].mounting_source(), AutoMounting)
    assert parse({"mounting.frame": "base_footprint"})[0].mounting_source() is None  # resolved by the node from tf


def test_two_ways_of_stating_the_mounting_are_an_error():
    with pytest.raises(ParamError, match=r"'mounting\.height' and 'mounting\.auto'"):
        parse({"mounting.height": 0.6, "mounting.auto": True})
    with pytest.raises(ParamError, match=r"'mounting\.frame' and 'mounting\.auto'"):
        parse({"mounting.frame": "base_footprint", "mounting.auto": True})


def test_the_removed_relabelling_parameter_is_an_error_naming_output_frame():
    with pytest.raises(ParamError, match=r"frame_id' was removed.*output_frame"):
        parse({"frame_id": "base_link"})


def test_node_uses_only_rclpy_api_that_humble_has():
    """Humble's rclpy has no post/pre-set parameter callbacks; private attributes may vanish in any release."""
    source = (ROOT / "fastpillars_ros" / "ros" / "node.py").read_text()
    used = {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}
    assert not used & {"add_post_set_parameters_callback", "add_pre_set_parameters_callback", "_parameter_overrides"}


# --- the launch file's decisions (launch itself is not installed here: its API is stubbed) ------------------

@pytest.fixture
def launch_file(monkeypatch, tmp_path):
    """launch/detect.launch.py loaded against stub launch modules; ``setup(**arguments)`` runs its _setup and
    returns the Node actions it made (a list of their keyword arguments)."""
    import importlib.util
    import sys
    import types

    made: list[dict] = []

    class Config:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    stubs = {
        "launch": types.ModuleType("launch"), "launch.actions": types.ModuleType("launch.actions"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"), "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    stubs["launch"].LaunchDescription = list
    stubs["launch.actions"].DeclareLaunchArgument = lambda *a, **k: (a, k)
    stubs["launch.actions"].OpaqueFunction = lambda function: function
    stubs["launch.substitutions"].LaunchConfiguration = Config
    stubs["launch_ros.actions"].Node = lambda **kwargs: made.append(kwargs) or kwargs
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("detect_launch_stubbed", ROOT / "launch" / "detect.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_share", lambda *parts: str(ROOT.joinpath(*parts)))  # the source tree's share
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    use_sim_time: true\n")

    def setup(**arguments):
        context = {a.name: a.default for a in launch.LAUNCH_ARGUMENTS} | {"params_file": str(params)}
        module._setup(context | arguments)
        return made

    setup.module = module
    return setup


def test_launch_file_with_a_mistyped_params_file_starts_nothing(launch_file, tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        launch_file(params_file=str(tmp_path / "typo.yaml"))
    assert [m["executable"] for m in launch_file()] == ["detector_node"]  # the failed launch made nothing


def test_launch_file_without_rviz2_starts_nothing_so_no_detector_is_orphaned(launch_file, monkeypatch):
    monkeypatch.setattr(launch_file.module, "rviz_problem", lambda: "rviz:=true but rviz2 is not installed")
    with pytest.raises(RuntimeError, match="rviz2 is not installed"):
        launch_file(rviz="true")
    assert [m["executable"] for m in launch_file()] == ["detector_node"]  # the failed launch made nothing


def test_use_sim_time_from_the_parameter_file_is_not_overridden_by_the_launch_default(launch_file, monkeypatch):
    monkeypatch.setattr(launch_file.module, "rviz_problem", lambda: None)
    node, rviz = launch_file(rviz="true")
    assert all("use_sim_time" not in layer for layer in node["parameters"] if isinstance(layer, dict))
    assert rviz["parameters"] == [{"use_sim_time": True}]  # RViz follows the file's clock too


def test_launch_backend_choices_are_the_nodes():
    import argparse

    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    assert parser.parse_args(["--backend", "onnxruntime"]).backend == "onnxruntime"
    description = next(a.description for a in launch.LAUNCH_ARGUMENTS if a.name == "backend")
    assert all(b in description for b in node_params.BACKENDS)


def test_parameter_files_are_read_from_the_any_node_section_and_the_nodes_own():
    tree = {"/**": {"ros__parameters": {"model": "kitti", "fields": {"y": "yy"}}},
            "fastpillars_detector": {"ros__parameters": {"model": "tiny"}}, "other_node": {"ros__parameters": {"x": 1}}}
    assert node_params.file_values(tree) == {"model": "tiny", "fields.y": "yy"}
    shipped = node_params.file_values(yaml.safe_load((ROOT / "config" / "fastpillars.yaml").read_text()))
    assert parse(shipped)[0] == NodeParams()
