"""FastPillars model numbers per config: parameters, dense GMACs, CPU forward time (``make bench``).

Anchor for the timing ratio: the unfused (training-form) model vs the fused model, side by side, on the
same real KITTI scan cropped to each config's range (MAPE + dense part; pillarization and decoding are
not included). Weights are random with randomised BN statistics: timing does not depend on values.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_header, print_ratio

from fastpillars_ros.model import build_model
from fastpillars_ros.model.testing import randomize_
from fastpillars_ros.runtime.malloc import keep_freed_memory
from fastpillars_ros.runtime.onnxruntime_backend import OnnxRuntimeDense

KITTI_SCAN = Path("/work/shared/data/real/kitti/training/velodyne/000000.bin")


def _time(fn, repeat: int) -> tuple[float, float]:
    """(median, min) wall time in ms over ``repeat`` runs after one warm-up. The median is the headline
    number; the min is closer to the uncontended time when other processes share the 2 cores (the load
    average is printed next to it)."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), min(samples)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}"


def dense_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of one dense forward pass at the config's canvas (shape propagation on the
    meta device, so even the 720x720 nuScenes canvas costs nothing)."""
    meta = build_model(model.config).to("meta").eval()
    if model.fusion_level != "train":
        meta.fuse(model.fusion_level)
    total = 0

    def hook(mod, inputs, output):
        nonlocal total
        w = mod.weight
        if isinstance(mod, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
        else:  # Conv2d: every output element costs Cin/groups * kH * kW MACs
            total += output.numel() * w.shape[1] * w.shape[2] * w.shape[3]

    for m in meta.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        meta.forward_dense(torch.zeros(1, *model.config.canvas_shape, device="meta"))
    return total


def _pillarize(points: np.ndarray, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decorated points, pillar ids and pillar cells; uses fastpillars_ros.ops.pillarize when present."""
    try:
        from fastpillars_ros.ops.pillarize import decorate, pillarize

        p = pillarize(points, cfg.pc_range, cfg.pillar_size)
        feats = decorate(points, p, cfg.pc_range, cfg.pillar_size)
        return (torch.from_numpy(np.ascontiguousarray(feats)), torch.from_numpy(p.point_pillar).long(),
                torch.from_numpy(p.coords).long())
    except ImportError:  # simple numpy fallback (floor instead of truncation; no sliver column)
        x0, y0, z0 = cfg.pc_range[:3]
        px, py = cfg.pillar_size
        nx, ny = cfg.grid_size
        ix = np.floor((points[:, 0] - x0) / px).astype(np.int64)
        iy = np.floor((points[:, 1] - y0) / py).astype(np.int64)
        keep = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        pts, ix, iy = points[keep], ix[keep], iy[keep]
        cells, ids = np.unique(iy * nx + ix, return_inverse=True)
        zc = (cfg.pc_range[5] - z0) / 2
        off = np.stack([pts[:, 0] - x0 - (ix + 0.5) * px, pts[:, 1] - y0 - (iy + 0.5) * py, pts[:, 2] - z0 - zc], 1)
        feats = np.concatenate([pts, off], 1).astype(np.float32)
        coords = np.stack([cells // nx, cells % nx], 1)
        return torch.from_numpy(feats), torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(coords)


def _scan(cfg) -> np.ndarray:
    if KITTI_SCAN.is_file():
        pts = np.fromfile(KITTI_SCAN, np.float32).reshape(-1, 4)
    else:  # synthetic stand-in with a KITTI-like size
        g = np.random.default_rng(0)
        pts = np.concatenate([g.uniform(-70, 70, (120000, 2)), g.uniform(-2, 1, (120000, 1)),
                              g.uniform(0, 1, (120000, 1))], 1).astype(np.float32)
    cols = [pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3] * cfg.intensity_scale]
    if "dt" in cfg.point_features:
        cols.append(np.zeros(len(pts), np.float32))
    return np.stack(cols, 1).astype(np.float32)


def sizes(name: str) -> None:
    model = build_model(name).eval()
    train_params = sum(p.numel() for p in model.parameters())
    macs_train = dense_macs(model)
    model.fuse("full")
    fused_params = sum(p.numel() for p in model.parameters())
    macs = dense_macs(model)
    c, h, w = model.config.canvas_shape
    print(f"{name:<18s} canvas {c}x{h}x{w}  params train {train_params / 1e6:7.3f} M  fused {fused_params / 1e6:7.3f} M"
          f"  dense GMAC fused {macs / 1e9:8.2f}  (training form {macs_train / 1e9:8.2f})")


@torch.no_grad()
def timing(name: str, repeat: int) -> None:
    unfused = randomize_(build_model(name), seed=0).eval()
    fused = randomize_(build_model(name), seed=0).eval().fuse("full")
    cfg = unfused.config
    points = _scan(cfg)
    feats, ids, coords = _pillarize(points, cfg)
    print(f"{name}: {len(points)} points in the scan, {len(feats)} in range, {len(coords)} pillars")

    def full(m):
        return lambda: m.forward_dense(m.encode(feats, ids, coords))

    canvas = fused.encode(feats, ids, coords)
    t_mape = _time(lambda: fused.encode(feats, ids, coords), repeat)
    t_dense_u = _time(lambda: unfused.forward_dense(canvas), repeat)
    t_dense_f = _time(lambda: fused.forward_dense(canvas), repeat)
    t_u = _time(full(unfused), repeat)
    t_f = _time(full(fused), repeat)
    goal = 120.0 if name == "tiny" else None
    print(f"{'  MAPE + scatter (' + name + ')':<44s} {t_mape[0]:9.3f} ms")
    print_ratio(f"  dense fused ({name})", "unfused", t_dense_u[0], t_dense_f[0])
    print_ratio(f"  MAPE + dense fused ({name})", "unfused", t_u[0], t_f[0], goal)
    print(f"  min over runs: MAPE {t_mape[1]:.1f} ms, dense unfused {t_dense_u[1]:.1f} / fused {t_dense_f[1]:.1f} ms,"
          f" MAPE + dense unfused {t_u[1]:.1f} / fused {t_f[1]:.1f} ms   ({_load()})")


@torch.no_grad()
def cpu_time_one_thread(name: str, repeat: int) -> None:
    """Contention-robust companion of :func:`timing`: CPU time of the calling thread with torch limited
    to 1 thread (``time.thread_time`` does not count time spent waiting for a core). With 2 idle cores
    the 2-thread wall time is roughly 0.5-0.6x of this."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for level in ("train", "full"):
            model = randomize_(build_model(name), seed=0).eval()
            if level != "train":
                model.fuse(level)
            feats, ids, coords = _pillarize(_scan(model.config), model.config)

            def run(m=model, f=feats, i=ids, c=coords):
                return m.forward_dense(m.encode(f, i, c))

            run()
            samples = []
            for _ in range(repeat):
                t0 = time.thread_time()
                run()
                samples.append((time.thread_time() - t0) * 1e3)
            rows.append(statistics.median(samples))
        print_ratio(f"  1-thread CPU time, MAPE + dense fused ({name})", "unfused", rows[0], rows[1])
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def onnx_timing(name: str, repeat: int) -> None:
    """The CPU default path (Detector backend "onnxruntime": MAPE in torch, dense part in onnxruntime)
    against torch's fused network, dense part alone and MAPE + dense on the real scan."""
    fused = randomize_(build_model(name), seed=0).eval().fuse("full")
    ort_dense = OnnxRuntimeDense(fused)
    feats, ids, coords = _pillarize(_scan(fused.config), fused.config)
    canvas = fused.encode(feats, ids, coords)
    pairs = zip(ort_dense.forward_dense(canvas), fused.forward_dense(canvas), strict=True)
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in pairs for k in a)
    t_ort = _time(lambda: ort_dense.forward_dense(canvas), repeat)
    t_torch = _time(lambda: fused.forward_dense(canvas), repeat)
    t_full_ort = _time(lambda: ort_dense.forward_dense(fused.encode(feats, ids, coords)), repeat)
    t_full_torch = _time(lambda: fused.forward_dense(fused.encode(feats, ids, coords)), repeat)
    goal = 120.0 if name == "tiny" else None
    print_ratio(f"  dense onnxruntime CPU ({name}, max diff {diff:.1e})", "torch fused", t_torch[0], t_ort[0])
    print_ratio(f"  MAPE + dense onnxruntime ({name})", "torch fused", t_full_torch[0], t_full_ort[0], goal)
    print(f"  min over runs: dense onnxruntime {t_ort[1]:.1f} / torch fused {t_torch[1]:.1f} ms, MAPE + dense "
          f"onnxruntime {t_full_ort[1]:.1f} / torch fused {t_full_torch[1]:.1f} ms   ({_load()})")


def main() -> None:
    torch.set_grad_enabled(False)
    keep_freed_memory()  # as the Detector does: the deployed forward reuses freed memory (runtime/malloc.py)
    print_header("FastPillars model: size and dense compute (fused = RepVGG + Conv/BN folded)")
    for name in ("tiny", "kitti", "nuscenes_official"):
        sizes(name)
    print_header("FastPillars model: CPU forward (MAPE + dense), unfused vs fused, real KITTI scan 000000")
    print(_load())
    timing("tiny", repeat=20)
    if "--quick" not in sys.argv:
        timing("kitti", repeat=3)
    print_header("FastPillars model: 1-thread CPU time (robust to other processes on the machine)")
    cpu_time_one_thread("tiny", repeat=10)
    if "--quick" not in sys.argv:
        cpu_time_one_thread("kitti", repeat=2)
    print_header("FastPillars model: onnxruntime (the CPU default back end) vs torch, real KITTI scan 000000")
    onnx_timing("tiny", repeat=20)


if __name__ == "__main__":
    main()
