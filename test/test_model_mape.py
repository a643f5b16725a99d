"""MAPE pillar encoder against a plain per-pillar loop, and canvas scattering."""

import pytest
import torch
from real_data import real_file
from torch.profiler import ProfilerActivity, profile

from fastpillars_ros.detector import Detector
from fastpillars_ros.model import build_model
from fastpillars_ros.model.mape import MAPE, scatter_to_canvas
from fastpillars_ros.model.testing import random_pillars, randomize_
from fastpillars_ros.ops import decorate, mape_cpu, pillarize
from fastpillars_ros.pointcloud import read_points


def _reference(mape: MAPE, features, ids, num_pillars):
    """Per-pillar loop in float64, using the training-form layers (Linear, BN1d, LeakyReLU) in eval mode."""
    f = mape.shared_mlps(features).double()
    s = mape.score_fn(f.float()).double()
    out = torch.zeros(num_pillars, f.shape[1], dtype=torch.float64)
    for p in range(num_pillars):
        fp, sp = f[ids == p], s[ids == p]
        if len(fp) == 0:
            continue
        weights = torch.softmax(sp, dim=0)  # per channel, over the points of the pillar
        attention = (weights * fp).sum(0)
        maximum = fp.max(0).values.clamp_min(0.0)  # official zero-initialised atomic max
        out[p] = (attention + maximum) / 2
    return out


@torch.no_grad()
def test_mape_matches_per_pillar_loop():
    mape = randomize_(MAPE(8, 16), seed=3).eval()
    feats, ids, _ = random_pillars(40, 300, 8, 10, 10, seed=0)
    got = mape(feats, ids, 40)
    ref = _reference(mape, feats, ids, 40)
    assert got.shape == (40, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_mape_max_branch_is_floored_at_zero():
    mape = randomize_(MAPE(4, 8), seed=5).eval()
    # Strongly negative inputs give negative (leaky) features in many channels.
    feats = -torch.rand(20, 4) * 50
    ids = torch.arange(20) // 5
    f = mape.point_features(feats)
    assert (f < 0).any()
    torch.testing.assert_close(mape(feats, ids, 4).double(), _reference(mape, feats, ids, 4), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_mape_softmax_is_stable_for_large_logits():
    mape = randomize_(MAPE(8, 16), seed=4).eval()
    mape.score_fn[0].weight.mul_(1e3)  # logits in the thousands: a naive exp overflows
    feats, ids, _ = random_pillars(10, 100, 8, 5, 5, seed=1)
    got = mape(feats, ids, 10)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), _reference(mape, feats, ids, 10), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_point_order_within_pillars_does_not_matter():
    mape = randomize_(MAPE(8, 16), seed=6).eval()
    feats, ids, _ = random_pillars(50, 400, 8, 10, 10, seed=2)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(mape(feats, ids, 50), mape(feats[perm], ids[perm], 50), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_encode_scatters_pillars_and_leaves_empty_cells_zero():
    model = randomize_(build_model("tiny"), seed=7).eval()
    c, h, w = model.config.canvas_shape
    feats, ids, coords = random_pillars(200, 1500, model.config.num_decorated_features, h, w, seed=3)
    canvas = model.encode(feats, ids, coords.int())
    assert canvas.shape == (1, c, h, w)
    pillars = model.backbone.pillar_pooling1(feats, ids, 200)
    torch.testing.assert_close(canvas[0, :, coords[:, 0], coords[:, 1]].t(), pillars)
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[coords[:, 0], coords[:, 1]] = False
    assert (canvas[0][:, mask] == 0).all()


def test_scatter_batches_by_batch_index():
    feats = torch.arange(12, dtype=torch.float32).view(4, 3)
    coords = torch.tensor([[0, 0], [1, 2], [0, 0], [2, 1]])
    batch = torch.tensor([0, 0, 1, 1])
    canvas = scatter_to_canvas(feats, coords, 3, 4, batch_size=2, batch_index=batch)
    assert canvas.shape == (2, 3, 3, 4) and canvas.is_contiguous()
    assert canvas[0, :, 1, 2].tolist() == [3, 4, 5] and canvas[1, :, 0, 0].tolist() == [6, 7, 8]
    assert canvas[1, :, 2, 1].tolist() == [9, 10, 11] and canvas.sum() == feats.sum()


@torch.no_grad()
def test_empty_cloud_gives_zero_canvas():
    model = build_model("tiny").eval()
    c, h, w = model.config.canvas_shape
    canvas = model.encode(torch.zeros(0, model.config.num_decorated_features), torch.zeros(0, dtype=torch.int64),
                          torch.zeros(0, 2, dtype=torch.int32))
    assert canvas.shape == (1, c, h, w) and not canvas.any()


def test_inference_path_gives_the_autograd_path_result():
    mape = randomize_(MAPE(8, 16), seed=8).eval()
    feats, ids, _ = random_pillars(60, 500, 8, 10, 10, seed=4)
    with torch.no_grad():
        fast = mape(feats, ids, 60)
    reference = mape(feats, ids, 60)  # grad enabled: the autograd-friendly path
    assert reference.requires_grad
    torch.testing.assert_close(fast, reference.detach(), rtol=0, atol=1e-6)


def test_inference_paths_give_the_autograd_path_result_on_a_real_scan():
    # The shipped default's weights on a 118k-point KITTI scan: logits up to ~90, 10k pillars, points in scan order.
    det = Detector("tiny360", device="cpu", precision="fp32")
    cfg, mape = det.config, det.model.backbone.pillar_pooling1
    scan = read_points(real_file("kitti/training/velodyne/000001.bin"))
    pillars = pillarize(scan, cfg.pc_range, cfg.pillar_size)
    feats = torch.from_numpy(decorate(scan, pillars, cfg.pc_range, cfg.pillar_size))
    ids, num_pillars = torch.from_numpy(pillars.point_pillar), len(pillars.coords)
    with torch.no_grad():
        fast, pure_torch = mape(feats, ids, num_pillars), mape._forward_torch(feats, ids, num_pillars)
    for p in mape.parameters():
        p.requires_grad_(False)
    with torch.enable_grad():  # nothing requires grad: only the path changes
        reference = MAPE.forward(mape, feats, ids, num_pillars)
    torch.testing.assert_close(pure_torch, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)  # the CPU kernel's own expf


@torch.no_grad()
def test_inference_path_gives_zero_for_pillars_without_points():
    mape = randomize_(MAPE(8, 16), seed=9).eval()
    feats, ids, _ = random_pillars(20, 200, 8, 10, 10, seed=6)
    ids = torch.where(ids == 7, 3, ids)  # pillar 7 loses its points
    got = mape(feats, ids, 20)
    assert not got[7].any() and got[3].any()
    torch.testing.assert_close(got.double(), _reference(mape, feats, ids, 20), rtol=1e-5, atol=1e-5)


def _point_sized_allocations(forward) -> list[int]:
    """Bytes of each allocation of at least one ``[L, C]`` float32 tensor during ``forward`` (6000 points, C = 16),
    in units of ``[L, C]``."""
    num_points, channels = 6000, 16
    mape = randomize_(MAPE(8, channels), seed=3).eval()
    feats, ids, _ = random_pillars(300, num_points, 8, 40, 40, seed=5)
    with torch.no_grad():
        forward(mape, feats, ids, 300)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            forward(mape, feats, ids, 300)
    point_tensor = num_points * channels * 4
    return sorted(e.self_cpu_memory_usage / point_tensor for e in prof.events()
                  if e.self_cpu_memory_usage >= point_tensor)


# Point-sized ([L, *]) blocks are what glibc must find room for every frame; fewer and fewer distinct sizes keep its
# heap from fragmenting and growing (test/test_malloc.py, #17). Before #17: six [L, C] blocks.
def test_pure_torch_inference_path_allocates_one_point_block_per_frame():
    # features, logits and gathered maxima: planes of one [3, L, C] block
    assert _point_sized_allocations(MAPE._forward_torch) == [3]


def test_cpu_kernel_path_allocates_no_point_block_per_frame():
    if mape_cpu.kernel() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    assert _point_sized_allocations(MAPE._forward_inference) == []  # features and logits stay in the kernel
