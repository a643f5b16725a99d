"""The model gives the same canvas, head maps and candidates on CUDA as on the CPU (skipped without GPU)."""

import copy
from dataclasses import replace

import pytest
import torch

from fastpillars_ros.model import build_model
from fastpillars_ros.model.head import decode_head_outputs
from fastpillars_ros.model.testing import random_pillars, randomize_

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def assert_close_to_scale(got: torch.Tensor, ref: torch.Tensor, rel: float, what: str) -> None:
    """max |got - ref| <= rel * max |ref|: float32 reductions summed in another order (atomics on the GPU)
    differ by rounding relative to the tensor's scale, not to each element; a real bug is O(1) off."""
    err, scale = (got.cpu() - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rel * scale, f"{what}: max abs difference {err:.3g} vs scale {scale:.3g} (allowed {rel:g})"


@pytest.mark.parametrize("name", ["tiny", "kitti"])
@torch.no_grad()
def test_cuda_matches_cpu(name):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = randomize_(build_model(name), seed=0).eval().fuse()
    gpu = copy.deepcopy(cpu).cuda()  # randomize_ keeps the default (unseeded) conv weights: copy, not rebuild
    _, h, w = cpu.config.canvas_shape
    feats, ids, coords = random_pillars(3000, 20000, cpu.config.num_decorated_features, h, w, seed=1)
    canvas = cpu.encode(feats, ids, coords)
    canvas_gpu = gpu.encode(feats.cuda(), ids.cuda(), coords.cuda())
    assert_close_to_scale(canvas_gpu, canvas, 1e-5, "canvas")
    out = cpu.forward_dense(canvas)
    out_gpu = gpu.forward_dense(canvas.cuda())
    for a, b in zip(out, out_gpu, strict=True):
        for k in a:
            assert_close_to_scale(b[k], a[k], 1e-4, k)
    # Decode the same maps on both devices. Random heads give tied scores and topk breaks ties differently
    # on each device, so decode without the pre_max cap and compare the sets in a device-independent order.
    cfg = replace(cpu.config, decode=replace(cpu.config.decode, pre_max=h * w))
    (c_cpu,) = decode_head_outputs(out, cfg, 0.3)
    (c_gpu,) = decode_head_outputs([{k: v.cuda() for k, v in t.items()} for t in out], cfg, 0.3)
    assert c_gpu.boxes.is_cuda and 0 < len(c_gpu) == len(c_cpu)
    boxes_gpu, labels_gpu = c_gpu.boxes.cpu(), c_gpu.labels.cpu()
    order_cpu, order_gpu = canonical_order(c_cpu.boxes, c_cpu.labels), canonical_order(boxes_gpu, labels_gpu)
    torch.testing.assert_close(boxes_gpu[order_gpu], c_cpu.boxes[order_cpu], rtol=1e-5, atol=1e-5)
    assert torch.equal(labels_gpu[order_gpu], c_cpu.labels[order_cpu])


def canonical_order(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Indices sorting candidates by label, then x, then y (stable sorts, last key first)."""
    idx = torch.argsort(boxes[:, 1], stable=True)
    idx = idx[torch.argsort(boxes[idx, 0], stable=True)]
    return idx[torch.argsort(labels[idx], stable=True)]
