"""Quantisation-aware fine-tuning (train/qat.py): the weights it trains through are the INT8 graph's weights, its
forward pass is the fused network with those weights, batch norm stays frozen, and `train --qat` runs and resumes
only as it started."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_train import _opts, frames

from fastpillars_ros.model.export import export_onnx
from fastpillars_ros.model.fastpillars import build_model
from fastpillars_ros.model.repvgg import RepVGGBlock
from fastpillars_ros.model.testing import randomize_
from fastpillars_ros.runtime.quantize import quantize_dense
from fastpillars_ros.train import qat
from fastpillars_ros.train.engine import train


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return randomize_(build_model("tiny"), seed=3).eval()


def _int8_graph_weights(model: torch.nn.Module, tmp: Path) -> dict[str, tuple[np.ndarray, int | None]]:
    """The dequantised weights of the INT8 graph quantize_dense builds: name -> (weights, per-channel axis)."""
    graph = export_onnx(model, tmp / "dense.onnx")
    canvas = np.random.default_rng(0).random((1, *model.config.canvas_shape), np.float32)
    quantised = onnx.load_from_string(quantize_dense(graph, [canvas]))
    consts = {t.name: numpy_helper.to_array(t) for t in quantised.graph.initializer}
    out = {}
    for node in quantised.graph.node:
        name = node.input[0]
        if node.op_type != "DequantizeLinear" or not name.endswith(("weight_quantized", "weight_identity_quantized")):
            continue
        q, scale, zero = (consts[i].astype(np.float64) for i in node.input)
        axis = None
        shape = [1] * q.ndim
        if scale.ndim:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX's default axis is 1
            shape[axis] = -1
        out[name.removeprefix("model.").removesuffix("_quantized")] = ((q - zero.reshape(shape)) * scale.reshape(shape),
                                                                       axis)
    return out


def test_qat_trains_through_exactly_the_weights_of_the_int8_graph(model, tmp_path) -> None:
    graph = _int8_graph_weights(model, tmp_path)
    ours = qat.rounded_weights(model)
    assert set(ours) == set(graph)
    assert len(graph) == 32 + 8  # every convolution but the first; the identity diagonals of 8 RepVGG blocks
    for name, (weights, axis) in graph.items():
        mine = ours[name].double().numpy()
        if axis is None:  # an identity diagonal: the same values
            np.testing.assert_allclose(mine, weights, rtol=0, atol=1e-6, err_msg=name)
        else:  # per channel the same levels (the neck's and head's batch norm scale each channel after rounding)
            dims = tuple(d for d in range(weights.ndim) if d != axis)
            levels = [127 * w / np.abs(w).max(axis=dims, keepdims=True) for w in (mine, weights)]
            np.testing.assert_allclose(levels[0], levels[0].round(), atol=1e-4, err_msg=name)
            # A weight within float noise of half a level may round either way on the two paths (fused in float64
            # vs folded in float32): one level apart, at most one weight in ten thousand.
            apart = np.abs(levels[0] - levels[1])
            assert apart.max() < 1 + 1e-4 and (apart > 1e-4).mean() < 1e-4, name


def test_fake_quant_keeps_255_levels_per_channel_and_passes_the_gradient_through() -> None:
    w = torch.randn(4, 8, 3, 3, requires_grad=True)
    rounded = qat.fake_quant_int8(w, 0)
    for c in range(4):
        levels = rounded[c].detach() / (w[c].detach().abs().max() / 127)
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.abs().max() == pytest.approx(127, abs=1e-4)
    assert 0 < (rounded - w).abs().max() <= w.abs().max() / 127 / 2 + 1e-6
    rounded.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_prepared_model_computes_the_fused_network_with_rounded_weights(model) -> None:
    fused = copy.deepcopy(model).fuse("full")
    with torch.no_grad():
        for name, module in fused.named_modules():
            transposed = isinstance(module, torch.nn.ConvTranspose2d)
            if name.startswith(("neck.", "bbox_head.")) and (transposed or isinstance(module, torch.nn.Conv2d)):
                module.weight.copy_(qat.fake_quant_int8(module.weight, int(transposed)))
    prepared = copy.deepcopy(model)
    rounded = qat.rounded_weights(prepared)
    with torch.no_grad():  # the fused blocks hold their diagonal back in the kernel, as the unsplit graph does
        for name, module in fused.named_modules():
            key = f"{name}.rbr_reparam.weight"
            if isinstance(module, RepVGGBlock) and key in rounded:
                kernel = rounded[key].clone()
                if f"{key}_identity" in rounded:
                    idx = torch.arange(kernel.shape[0])
                    kernel[idx, idx, 1, 1] = rounded[f"{key}_identity"].flatten()
                module.rbr_reparam.weight.copy_(kernel)
    qat.prepare(prepared)
    canvas = torch.rand(1, *model.config.canvas_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got, plain = fused(canvas), prepared(canvas), model(canvas)
    for w_task, g_task, p_task in zip(want, got, plain, strict=True):
        for key in w_task:
            torch.testing.assert_close(g_task[key], w_task[key], rtol=1e-4, atol=1e-4)
            assert not torch.allclose(g_task[key], p_task[key], rtol=1e-5, atol=1e-5), f"{key}: nothing was rounded"


def test_batch_norm_statistics_stay_frozen_while_the_weights_learn(model) -> None:
    prepared = copy.deepcopy(model)
    qat.prepare(prepared)
    prepared.train()
    before = {k: v.clone() for k, v in prepared.state_dict().items() if "running" in k}
    canvas = torch.rand(2, *model.config.canvas_shape)
    sum(t["hm"].square().mean() for t in prepared(canvas)).backward()
    after = prepared.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    grad = prepared.backbone.conv3[0].conv1.rbr_dense.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_fused_model_is_refused() -> None:
    with pytest.raises(ValueError, match="training form"):
        qat.prepare(build_model("tiny").fuse("full"))


def test_training_with_qat_runs_and_resuming_without_it_is_an_error(tmp_path: Path) -> None:
    summary = train(_opts(tmp_path / "run", epochs=2, max_steps=1, qat=True), train_source=frames(4))
    assert np.isfinite(summary["history"][0]["loss"])
    with pytest.raises(ValueError, match="use the same --qat"):
        train(_opts(tmp_path / "run", epochs=2, resume=True), train_source=frames(4))
