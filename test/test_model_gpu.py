"""The model gives the same canvas, head maps and candidates on CUDA as on the CPU (skipped without GPU)."""

import copy

import pytest
import torch

from fastpillars_ros.model import build_model
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
    # Decode the same maps on both devices (decoding is exact given identical inputs).
    (c_cpu,) = cpu.decode(out, score_threshold=0.3)
    (c_gpu,) = gpu.decode([{k: v.cuda() for k, v in t.items()} for t in out], score_threshold=0.3)
    assert c_gpu.boxes.is_cuda and len(c_gpu) == len(c_cpu)
    torch.testing.assert_close(c_gpu.boxes.cpu(), c_cpu.boxes, rtol=1e-5, atol=1e-5)
    assert torch.equal(c_gpu.labels.cpu(), c_cpu.labels)
