"""ONNX export of the fused dense part matches torch under onnxruntime (CPU)."""

import onnx
import pytest

from fastpillars_ros.model import build_model, check_onnx, export_onnx, output_names
from fastpillars_ros.model.testing import randomize_


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    model = randomize_(build_model("tiny"), seed=2).eval()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_tiny_onnx_matches_torch_at_full_canvas(tiny_onnx):
    model, path = tiny_onnx
    assert model.fusion_level == "train"  # the caller's model is left alone
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == output_names(model.config)
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *model.config.canvas_shape]
    ops = {n.op_type for n in graph.node}
    assert "BatchNormalization" not in ops and ops <= {"Conv", "ConvTranspose", "LeakyRelu", "Relu", "Concat", "Pad"}
    assert check_onnx(model, path) <= 1e-4


def test_kitti_onnx_matches_torch(tmp_path):
    # Full 496x432 export + run costs ~90 s on 2 busy cores; the graph is fully convolutional, so the same
    # layers are checked on a reduced static canvas. (Full size is measured in test/bench/bench_model.py.)
    model = randomize_(build_model("kitti"), seed=3).eval()
    path = export_onnx(model, tmp_path / "kitti.onnx", canvas_hw=(64, 48))
    names = output_names(model.config)
    assert names[:6] == ["task0_reg", "task0_height", "task0_dim", "task0_rot", "task0_iou", "task0_hm"]
    assert len(names) == 18
    assert check_onnx(model, path) <= 1e-4


def test_nuscenes_output_names_order():
    names = output_names(build_model("nuscenes_official").config)
    assert len(names) == 42 and names[4] == "task0_vel" and names[-1] == "task5_hm"


def test_check_onnx_reports_a_mismatch(tiny_onnx):
    _, path = tiny_onnx
    other = randomize_(build_model("tiny"), seed=5).eval()
    with pytest.raises(ValueError, match="differs from torch"):
        check_onnx(other, path)
