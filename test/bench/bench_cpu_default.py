"""The CPU default path stage by stage, today's default against the new one, side by side (``make bench``).

Anchor ("before"): the tiny model (front 51.2 m square) with the dense part in fp32 onnxruntime and MAPE in
its autograd-friendly form (two scatter-max and two index_add passes). Candidate: the embedded default
(tiny360, 81.6 m square around the sensor) with the INT8 dense part and MAPE's inference path.
Both run on the same real scans in one process, interleaved, with the same thread count. Goal (issue 17):
end to end at least 2.5x faster than the anchor. Other stages have their own anchors elsewhere:
PointCloud2 conversion (bench_pointcloud.py), pillarize vs spconv (bench_pillarize.py), NMS vs shapely
(bench_nms.py); the NMS + thresholds row compares the CPU path's pre-filter with NMS over every
candidate. tiny360 runs with the tiny weights until its own are installed: the compute is the same.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_header, print_ratio, time_interleaved, time_ms
from real_data import real_file
from std_msgs.msg import Header

from fastpillars_ros.config import ModelConfig, TerrainConfig
from fastpillars_ros.detector import STAGES, Detector, default_checkpoint
from fastpillars_ros.model.head import Candidates, decode_dense
from fastpillars_ros.model.mape import MAPE, scatter_to_canvas
from fastpillars_ros.ops import decorate, mape_cpu, pillarize
from fastpillars_ros.pointcloud import read_points
from fastpillars_ros.ros.messages import detections_to_msg
from fastpillars_ros.terrain import follow_terrain

logging.basicConfig(level=logging.ERROR)
DEFAULT = "tiny360"
GOAL_SPEEDUP = 2.5


def _checkpoint(config: str) -> Path | None:
    return default_checkpoint(config) or default_checkpoint("tiny")


def _with_todays_mape(det: Detector) -> Detector:
    """Make ``det`` encode with MAPE's autograd-friendly path (the default's MAPE before issue 17)."""
    mape = det.model.backbone.pillar_pooling1
    for p in mape.parameters():
        p.requires_grad_(False)

    def reference(features: torch.Tensor, idx: torch.Tensor, num_pillars: int) -> torch.Tensor:
        with torch.enable_grad():  # nothing requires grad: no graph is recorded, only the path changes
            return MAPE.forward(mape, features, idx, num_pillars)

    mape._forward_inference = reference
    return det


def _scans() -> dict[str, np.ndarray]:
    scans = {f"kitti {i}": read_points(real_file(f"kitti/training/velodyne/00000{i}.bin")) for i in (0, 1)}
    p64 = read_points(real_file("pcd_sensorscalibration/p64.pcd"))
    p64[:, 3] /= 255.0
    scans["p64 (64-beam, 77k)"] = p64
    return scans


def _stages(det: Detector, pts: np.ndarray, repeat: int) -> dict[str, float]:
    runs = [det.detect(pts).timings for _ in range(repeat)]
    return {k: float(np.median([r[k] for r in runs])) for k in (*STAGES, "total")}


def bench_mape(model: torch.nn.Module, feats: torch.Tensor, ids: torch.Tensor, coords: torch.Tensor, repeat: int
               ) -> None:
    """MAPE + scatter: the inference path (CPU kernel, ops/mape_cpu.py) and its pure-torch fallback against the
    autograd path (the MAPE of today's default), interleaved, as wall time with the configured torch threads and as
    CPU time with one thread (robust to other load)."""
    mape = model.backbone.pillar_pooling1
    for q in mape.parameters():
        q.requires_grad_(False)
    _, height, width = model.config.canvas_shape

    def autograd_path() -> torch.Tensor:
        with torch.enable_grad():  # nothing requires grad: no graph is recorded, only the path changes
            return model.encode(feats, ids, coords)

    def pure_torch_path() -> torch.Tensor:
        return scatter_to_canvas(mape._forward_torch(feats, ids, len(coords)), coords, height, width)

    paths = {"autograd": autograd_path, "pure torch": pure_torch_path,
             "inference": lambda: model.encode(feats, ids, coords)}
    wall = time_interleaved(paths, repeat=repeat)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = time_interleaved(paths, repeat=repeat, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)
    kernel = "CPU kernel" if mape_cpu.kernel() is not None else "no compiler: torch"
    for label, times in (("", wall), (" (1 thread, CPU time)", cpu)):
        print_ratio(f"  MAPE+scatter {kernel}{label}", "today's MAPE", times["autograd"], times["inference"])
        print_ratio(f"  MAPE+scatter pure torch{label}", "today's MAPE", times["autograd"], times["pure torch"])


def bench_terrain(scan: np.ndarray, cfg: ModelConfig, repeat: int) -> None:
    """Terrain following (off in the shipped config; MODEL_CARD item 10) against the pillarisation it precedes."""
    on = replace(cfg, terrain=cfg.terrain or TerrainConfig())
    points = torch.from_numpy(scan)
    times = time_interleaved({"pillarize": lambda: decorate(scan, pillarize(scan, cfg.pc_range, cfg.pillar_size),
                                                              cfg.pc_range, cfg.pillar_size),
                              "terrain": lambda: follow_terrain(points, on)}, repeat=repeat)
    print_ratio("  terrain following (local ground + flatten)", "pillarize + decorate", times["pillarize"],
                times["terrain"])


@torch.no_grad()
def bench_stages(scan: np.ndarray, repeat: int) -> None:
    """MAPE (inference path vs today's) and the dense part (int8 vs fp32 onnxruntime vs torch) of the default model."""
    ckpt = _checkpoint(DEFAULT)
    int8 = Detector(DEFAULT, ckpt, device="cpu", precision="int8")
    fp32 = Detector(DEFAULT, ckpt, device="cpu", precision="fp32")
    cfg, model = int8.config, int8.model
    p = pillarize(scan, cfg.pc_range, cfg.pillar_size)
    feats = torch.from_numpy(decorate(scan, p, cfg.pc_range, cfg.pillar_size))
    ids, coords = torch.from_numpy(p.point_pillar), torch.from_numpy(p.coords)
    print(f"{DEFAULT}: {len(scan):,} points, {len(feats):,} in range, {len(coords):,} pillars")
    bench_terrain(scan, cfg, repeat)
    bench_mape(model, feats, ids, coords, repeat)
    canvas = model.encode(feats, ids, coords)
    t_torch = time_ms(lambda: model.forward_dense(canvas), repeat=repeat)
    t_fp32 = time_ms(lambda: fp32._dense.forward_dense(canvas), repeat=repeat)
    t_int8 = time_ms(lambda: int8._dense.forward_dense(canvas), repeat=repeat)
    print_ratio(f"  dense onnxruntime fp32 ({DEFAULT})", "torch fused fp32", t_torch, t_fp32)
    print_ratio(f"  dense onnxruntime int8 ({DEFAULT})", "onnxruntime fp32", t_fp32, t_int8)
    print_ratio(f"  dense onnxruntime int8 ({DEFAULT})", "torch fused fp32", t_torch, t_int8)
    bench_selection(int8, canvas, repeat)
    res = int8.detect(scan)
    labels = res.labels
    build = time_ms(lambda: detections_to_msg(res.boxes, res.scores, labels, int8.class_names,
                                            Header(frame_id="velodyne")), repeat=repeat)
    print(f"{'  Detection3DArray message (' + str(len(res)) + ' boxes)':<44s} {build:9.3f} ms")


def bench_selection(det: Detector, canvas: torch.Tensor, repeat: int) -> None:
    """What the CPU path publishes from the decoder's candidates: NMS over the candidates above the lowest default
    threshold, then the thresholds, against NMS over every candidate, then the thresholds (same result, checked)."""
    cand = decode_dense(det._dense.forward_dense(canvas), det.config).compact()[0]
    thresholds = torch.from_numpy(det._score_thresholds)

    def nms_all() -> Candidates:
        kept = det._nms(cand)
        return kept.select(kept.scores >= thresholds[kept.labels])

    assert torch.equal(nms_all().boxes, det._select(cand).boxes), "pre-filtered selection differs"
    times = time_interleaved({"all": nms_all, "pre-filtered": lambda: det._select(cand)}, repeat=5 * repeat)
    above = int((cand.scores >= thresholds.min()).sum())
    print_ratio(f"  NMS + thresholds ({len(cand)} -> {above} candidates)", "NMS over all", times["all"],
                times["pre-filtered"])


def bench_end_to_end(repeat: int) -> None:
    before = _with_todays_mape(Detector("tiny", device="cpu", precision="fp32"))
    after = Detector(DEFAULT, _checkpoint(DEFAULT), device="cpu")
    print(f"before: {before.describe()}\nafter:  {after.describe()}")
    for name, pts in _scans().items():
        a, b = {}, {}
        for _ in range(2):  # interleaved halves, so a load change hits both sides
            a = _merge(a, _stages(before, pts, repeat // 2))
            b = _merge(b, _stages(after, pts, repeat // 2))
        for label, s in (("before", a), ("after", b)):
            print(f"  {label:<6s} {name:<20s} stages ms: " + "  ".join(f"{k} {s[k]:.1f}" for k in STAGES))
        print_ratio(f"  end to end, {name}", "tiny fp32, today's MAPE", a["total"], b["total"])
        print(f"  goal: at least x{GOAL_SPEEDUP} ({'met' if a['total'] >= GOAL_SPEEDUP * b['total'] else 'NOT met'});"
              f" load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def _merge(acc: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """Mean of the two halves' medians."""
    return {k: (acc[k] + v) / 2 for k, v in new.items()} if acc else new


def main() -> None:
    torch.set_grad_enabled(False)
    print_header("CPU default path by stage (tiny360, int8 dense part, MAPE inference path)")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    bench_stages(read_points(real_file("kitti/training/velodyne/000001.bin")), repeat=10)
    print_header("CPU default end to end: new default vs today's (tiny, fp32 onnxruntime, today's MAPE)")
    bench_end_to_end(repeat=10)


if __name__ == "__main__":
    main()
