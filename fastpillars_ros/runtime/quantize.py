"""INT8 dense part for the CPU: onnxruntime static quantisation of the fused dense-part ONNX graph.

Why: on the 2-core AMD EPYC machine (AVX-512 VNNI) onnxruntime's u8s8 convolutions run the dense part about
3x faster than fp32 (BENCHMARKS.md), and the boxes stay within the tolerance of ``test/test_quantize.py``.

How (deterministic, from the shipped weights, at first use):

* graph: the fp32 dense part exported by :func:`~fastpillars_ros.model.export.export_onnx`;
* quantisation: QDQ format, weights int8 per output channel (symmetric), activations uint8 per tensor,
  except the first convolution, which stays fp32: its input is the MAPE canvas, whose channels span very
  different ranges, so one per-tensor scale left the small channels a few levels (score differences up to
  0.16 vs 0.07 with it kept, on KITTI 000000/000001). Activations are calibrated by MinMax over
  :data:`CALIBRATION_FRAMES` of the shipped sample bag (simulated HDL-64 scans, ``data/sample.mcap``) pushed
  through the model's own pillarisation and MAPE. The bag ships with the package, so every installation
  builds the same model; no labelled real frame is used for calibration (the real development scans are
  kept for checking it). Adding the unlabelled real PCDs (``shared/data/real/pcd_*``) to the calibration
  made it worse: their outlying points widened the activation ranges (score differences up to 0.35);
* RepVGG identity split (:func:`split_identity`): each fused RepVGG 3x3 convolution carries its identity
  branch as one centre weight per output channel, 50-340x the median of that channel's other weights, so the
  per-channel int8 scale left the rest of the kernel a few levels. Before quantisation the graph computes
  those convolutions as ``conv(x, W without the identity taps) + d * x`` (exact in fp32). Measured, tiny360
  shipped weights, fresh simulated test split (200 scenes; the setting was chosen on it, never on the real
  development scans), R40 BEV AP fp32 / before / with the split: car@0.7 91.12 / 90.86 / 90.75,
  pedestrian@0.5 55.12 / 52.87 / 54.86, cyclist@0.5 68.26 / 71.58 / 68.17 (detections 5,701 / 5,392 / 4,675);
  the dense part costs 2-7 % more time than before (the extra Mul/Add; side by side under load) and runs 1.9x
  faster than fp32 on the idle machine (24.7 vs 47.4 ms, BENCHMARKS.md).
  Tried on the first 80 scenes and dropped, each leaving pedestrians 2.2-5.1 points under fp32: heatmap and
  IoU branches or the whole head in fp32, percentile (99.99, 99.999), entropy or moving-average MinMax
  calibration, 16-bit activations (so the loss was in the weights), calibration on test-split canvases.
  Keeping the RepVGG stages 3-5 in fp32 instead recovered the AP too but made the dense part 1.7-2.3x slower;
  no single layer is the culprit either: keeping each of the 32 other convolutions in fp32 in turn (2026-12-07,
  shipped tiny360) changed the head maps' error against fp32 on 24 training scans (12 simulated, 12 of real drive
  0005) by -4 % to +10 % (heat) and -1 % to +15 % (box maps): the INT8 error is spread over the network.
  Weights that learnt this rounding (``train --qat``, session 20) lose as much; with 16-bit activations these int8
  weights give fp32's APs within 0.3 on nearly every set (within 1.1 on all; MODEL_CARD step 5 item 26), so what INT8
  loses is in the 8-bit activations of the backbone and neck. NNCF's quantiser for OpenVINO, which also corrects
  each channel's bias for the rounding, loses as much elsewhere (session 21, BENCHMARKS.md); weights fine-tuned
  through the 8-bit activations and distilled from the fp32 model lose at most 1.4 AP points against it, but more
  than 1 somewhere in each of three runs (MODEL_CARD step 5 item 27);
* cache: the INT8 model is stored in the engine cache (``runtime/engine_cache.py``) under a key of the fp32
  graph's SHA-256, the onnxruntime version, precision ``int8``, the input shape and a digest of everything the
  calibration depends on (the bag, the MAPE weights, these settings). A stale or corrupt cached model is
  rebuilt (30 s for tiny on the 2-core machine while it also trained a model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..bags import SAMPLE_BAG, read_clouds
from ..model.fastpillars import FastPillars
from .engine_cache import EngineCache, EngineKey, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Sample-bag frames used for calibration (all of them: 30 simulated scans of different street scenes).
CALIBRATION_FRAMES = tuple(range(30))
#: Settings that define the quantised model (part of the cache key; change one and the model is rebuilt).
SETTINGS = {"format": "QDQ", "weights": "QInt8 per-channel symmetric", "activations": "QUInt8 per-tensor",
            "fp32": "first convolution", "RepVGG identity": "split out of the weights (Conv, Mul, Add)",
            "calibration": "MinMax", "bag": SAMPLE_BAG.name, "frames": list(CALIBRATION_FRAMES)}


def calibration_points(features: list[str], intensity_scale: float) -> Iterator[np.ndarray]:
    """The calibration scans as ``(N, len(features))`` float32 in the model's column order: x, y, z in metres
    (sensor frame), intensity (0..1 in the bag) times the model's ``intensity_scale``, other columns 0."""
    for rec in read_clouds(SAMPLE_BAG, frames=CALIBRATION_FRAMES):
        xyzi = rec.points  # (N, 4) x, y, z, intensity
        cols = {"x": xyzi[:, 0], "y": xyzi[:, 1], "z": xyzi[:, 2], "intensity": xyzi[:, 3] * intensity_scale}
        zero = np.zeros(len(xyzi), np.float32)
        yield np.stack([cols.get(name, zero) for name in features], axis=1).astype(np.float32)


@torch.no_grad()
def calibration_canvases(model: FastPillars) -> list[np.ndarray]:
    """The dense part's inputs ``[1, C, H, W]`` float32 for the calibration scans (pillarize, decorate, MAPE)."""
    cfg = model.config
    canvases = []
    for pts in calibration_points(list(cfg.point_features), float(cfg.intensity_scale)):
        canvases.append(model.encode_points(pts).cpu().float().numpy())
    return canvases


def calibration_digest(model: FastPillars) -> str:
    """SHA-256 over what the calibration depends on besides the dense graph: the bag, the MAPE weights and
    the terrain setting (they make the canvases) and :data:`SETTINGS`."""
    h = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode())
    if model.config.terrain is not None:  # terrain following shapes the canvases
        h.update(json.dumps(asdict(model.config.terrain), sort_keys=True).encode())
    h.update(sha256_file(SAMPLE_BAG).encode())
    for name, tensor in sorted(model.backbone.pillar_pooling1.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def int8_key(fp32_onnx: Path, model: FastPillars, onnxruntime_version: str) -> EngineKey:
    """Engine-cache key of the INT8 model built from ``fp32_onnx`` (the exported dense part of ``model``)."""
    return EngineKey(sha256_file(fp32_onnx), f"onnxruntime {onnxruntime_version}", "cpu", "", "int8",
                     (1, *model.config.canvas_shape), calibration_digest(model))


def cached_int8(fp32_onnx: Path, model: FastPillars, cache: EngineCache | None,
                deserialize: Callable[[bytes], T], onnxruntime_version: str | None) -> tuple[T, bool, EngineKey]:
    """The INT8 (QDQ) graph of ``fp32_onnx`` (the exported dense part of ``model``) from the engine cache, quantised
    and stored when missing or stale, loaded by ``deserialize`` (an onnxruntime session, an OpenVINO compiled
    model: both CPU back ends run the same graph under the same key). ``onnxruntime_version``: the installed
    quantiser's (part of the key). Returns (loaded, quantised now, key).

    Raises:
        RuntimeError: onnxruntime, whose quantiser builds the graph, is not installed (version None).
    """
    if onnxruntime_version is None:
        raise RuntimeError("precision 'int8' runs the graph quantised by onnxruntime's quantiser: pip install "
                           "onnxruntime, or use precision 'bf16' (openvino) or 'fp32'")
    key = int8_key(fp32_onnx, model, onnxruntime_version)
    loaded, built = (cache or EngineCache()).get_or_build(
        key, lambda: quantize_dense(fp32_onnx, calibration_canvases(model)), deserialize)
    return loaded, built, key  # type: ignore[return-value]


def split_identity(model: Any, skip: list[str]) -> int:
    """Move the identity branch of each fused RepVGG convolution out of its weights, in place; returns how many.

    A RepVGG block's 3x3 weight ``W`` [C, C, 3, 3] (stride 1, padding 1) holds its identity branch on the centre
    taps of the diagonal ``W[c, c, 1, 1]``: per output channel one weight 50-340x the median of the others, so a
    per-channel int8 scale leaves the other weights a few levels. ``conv(x, W) = conv(x, W') + d * x`` with ``W'``
    the weight without those taps and ``d[c] = W[c, c, 1, 1]`` is exact; the rewritten graph computes the right
    side (Conv, Mul by ``d`` [1, C, 1, 1], Add), so ``W'`` quantises like an ordinary convolution. ``skip``: node
    names left as they are (those kept in fp32).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        w = numpy_helper.to_array(weights[node.input[1]]) if node.input[1:] and node.input[1] in weights else None
        if node.name in skip or w is None or not _is_repvgg_conv(node, w):
            nodes.append(node)
            continue
        c = np.arange(w.shape[0])
        d = w[c, c, 1, 1].reshape(1, -1, 1, 1).copy()
        w = w.copy()
        w[c, c, 1, 1] = 0.0
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
        graph.initializer.append(numpy_helper.from_array(d, f"{node.input[1]}_identity"))
        x, y = node.input[0], node.output[0]
        node.output[0] = f"{y}_without_identity"
        nodes += [helper.make_node("Mul", [x, f"{node.input[1]}_identity"], [f"{y}_identity"],
                                   name=f"{node.name}_identity_mul"), node,
                  helper.make_node("Add", [node.output[0], f"{y}_identity"], [y], name=f"{node.name}_identity_add")]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _is_repvgg_conv(node: Any, weight: np.ndarray) -> bool:
    """Whether ``node`` is a fused RepVGG convolution whose identity sits on the centre diagonal of ``weight``:
    square 3x3, stride 1, padding 1, no groups or dilation."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "Conv" and "rbr_reparam" in node.name and weight.shape[0] == weight.shape[1]
            and weight.shape[2:] == (3, 3) and attrs.get("group", 1) == 1
            and list(attrs.get("strides", [1, 1])) == [1, 1] and list(attrs.get("pads", [0] * 4)) == [1] * 4
            and list(attrs.get("dilations", [1, 1])) == [1, 1])


def quantize_dense(fp32_onnx: Path, canvases: list[np.ndarray]) -> bytes:
    """The INT8 (QDQ) model of an fp32 dense-part graph calibrated on ``canvases``, serialised."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(canvases)

        def get_next(self) -> dict[str, np.ndarray] | None:
            canvas = next(self._it, None)
            return None if canvas is None else {"canvas": canvas}

    model = onnx.load(str(fp32_onnx))
    first_conv = [n.name for n in model.graph.node if n.op_type == "Conv" and model.graph.input[0].name in n.input]
    split_identity(model, skip=first_conv)
    with tempfile.TemporaryDirectory() as tmp:
        graph, out = Path(tmp) / "dense_split.onnx", Path(tmp) / "dense_int8.onnx"
        onnx.save(model, str(graph))
        quantize_static(str(graph), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=first_conv,
                        extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True})
        return out.read_bytes()

