"""The CPU path stage by stage and end to end, by back end and precision, against issue #17's anchor (``make bench``).

Anchor: the tiny model (front 51.2 m square) with the dense part in fp32 onnxruntime, MAPE in its
autograd-friendly form (two scatter-max and two index_add passes), pillarize and decorate in numpy (no compiled
kernel) and libgomp's spinning wait: the default path when issue 17 was filed. Candidates: the
embedded default (tiny360, 81.6 m square around the sensor) through torch, onnxruntime (fp32, int8) and OpenVINO
(bf16, int8), and as ``Detector()`` builds it (auto). End to end each configuration runs in a process of its own
(:data:`CONFIGS`), in interleaved rounds, on the same real scans with the same thread count. Goal (issue 17): end
to end at least 2.5x faster than the anchor. In one process: MAPE (inference path vs today's), terrain following,
NMS + thresholds (the CPU path's pre-filter vs NMS over every candidate) and the message. Other stages have their
own anchors elsewhere: PointCloud2 conversion (bench_pointcloud.py), pillarize vs spconv (bench_pillarize.py), NMS vs
shapely (bench_nms.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_header, print_ratio, time_interleaved, time_ms
from real_data import real_file
from std_msgs.msg import Header

from fastpillars_ros.config import ModelConfig, TerrainConfig
from fastpillars_ros.detector import STAGES, Detector
from fastpillars_ros.model.head import Candidates, decode_dense
from fastpillars_ros.model.mape import MAPE, scatter_to_canvas
from fastpillars_ros.ops import decorate, mape_cpu, native, pillarize, pillarize_cpu
from fastpillars_ros.ops.pillarize import _decorate_reference, _pillarize_reference, grid_constants
from fastpillars_ros.pointcloud import read_points
from fastpillars_ros.ros.messages import detections_to_msg
from fastpillars_ros.terrain import follow_terrain

logging.basicConfig(level=logging.ERROR)
DEFAULT = "tiny360"
GOAL_SPEEDUP = 2.5


def _with_issue_time_mape(det: Detector) -> Detector:
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


def bench_pillarize(scan: np.ndarray, cfg: ModelConfig, repeat: int) -> None:
    """Pillarize + decorate: the compiled kernel (ops/pillarize_cpu.py) against the numpy reference it replaces."""
    g = grid_constants(cfg.pc_range, cfg.pillar_size)

    def reference() -> np.ndarray:
        return _decorate_reference(scan, _pillarize_reference(scan, g), g)

    times = time_interleaved({"numpy": reference, "kernel": lambda: decorate(scan, pillarize(
        scan, cfg.pc_range, cfg.pillar_size), cfg.pc_range, cfg.pillar_size)}, repeat=repeat)
    kernel = "CPU kernel" if pillarize_cpu.kernel() is not None else "no compiler: numpy"
    print_ratio(f"  pillarize + decorate {kernel}", "numpy reference", times["numpy"], times["kernel"])


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
    """MAPE (inference path vs today's), terrain following, selection and message of the default model (the dense
    part by back end: :func:`bench_end_to_end`)."""
    int8 = Detector(DEFAULT, device="cpu", backend="onnxruntime", precision="int8")
    cfg, model = int8.config, int8.model
    p = pillarize(scan, cfg.pc_range, cfg.pillar_size)
    feats = torch.from_numpy(decorate(scan, p, cfg.pc_range, cfg.pillar_size))
    ids, coords = torch.from_numpy(p.point_pillar), torch.from_numpy(p.coords)
    print(f"{DEFAULT}: {len(scan):,} points, {len(feats):,} in range, {len(coords):,} pillars")
    bench_pillarize(scan, cfg, repeat)
    bench_terrain(scan, cfg, repeat)
    bench_mape(model, feats, ids, coords, repeat)
    bench_selection(int8, model.encode(feats, ids, coords), repeat)
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


@dataclass(frozen=True)
class RunConfig:
    """One end-to-end configuration, timed in a process of its own (:func:`time_configs`).

    One process each because two inference libraries' thread pools in one process slow each other (OpenVINO's
    beside onnxruntime's cost both 20-40 % on 2 cores) and because torch's OpenMP wait policy is fixed when torch is
    loaded. ``wait``: "spinning" is libgomp's own default, neither variable set (what every process had before the
    package set passive waiting; this script imports torch before fastpillars_ros, so the package's setting comes too
    late for libgomp here); "passive" is what importing fastpillars_ros first sets (fastpillars_ros/__init__.py).
    ``checkpoint`` None: the weights shipped for a bundled ``model`` (else random, with the Detector's warning);
    ``issue_time_path``: MAPE's autograd path and no compiled kernel (``FASTPILLARS_NATIVE=0``: numpy pillarize and
    decorate), as when #17 was filed (the anchor).
    """

    model: str
    backend: str = "auto"
    precision: str = "auto"
    wait: str = "passive"
    checkpoint: str | None = None
    issue_time_path: bool = False


ANCHOR = "anchor: tiny fp32 onnxruntime, #17's MAPE, spinning"
ANCHOR_CONFIG = RunConfig("tiny", "onnxruntime", "fp32", "spinning", issue_time_path=True)
CONFIGS: dict[str, RunConfig] = {
    ANCHOR: ANCHOR_CONFIG,
    f"{DEFAULT} torch fp32": RunConfig(DEFAULT, "torch", "fp32"),
    f"{DEFAULT} onnxruntime fp32": RunConfig(DEFAULT, "onnxruntime", "fp32"),
    f"{DEFAULT} onnxruntime int8, spinning": RunConfig(DEFAULT, "onnxruntime", "int8", "spinning"),
    f"{DEFAULT} onnxruntime int8": RunConfig(DEFAULT, "onnxruntime", "int8"),
    f"{DEFAULT} openvino bf16": RunConfig(DEFAULT, "openvino", "bf16"),
    f"{DEFAULT} openvino int8": RunConfig(DEFAULT, "openvino", "int8"),
    f"{DEFAULT} default (auto)": RunConfig(DEFAULT),
}
_WAIT: dict[str, dict[str, str]] = {"spinning": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def _worker(config: RunConfig, repeat: int) -> None:
    """Child process: build one configuration, time every scan, print ``{"describe", scan: {stage: ms}}`` as JSON."""
    det = Detector(config.model, config.checkpoint, device="cpu", backend=config.backend,
                   precision=config.precision)
    if config.issue_time_path:
        det = _with_issue_time_mape(det)
    result: dict[str, object] = {"describe": f"{det.backend} {det.precision}"}
    for scan, pts in _scans().items():
        result[scan] = _stages(det, pts, repeat)
    print(json.dumps(result))


def _run_worker(config: RunConfig, repeat: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(_WAIT[config.wait])
    if config.issue_time_path:
        env[native.SWITCH] = "0"
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(asdict(config)), "--repeat", str(repeat)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_configs(configs: dict[str, RunConfig], repeat: int, rounds: int = 3) -> tuple[dict, dict]:
    """Every configuration end to end on every scan, one process each, in ``rounds`` interleaved rounds (so a load
    change hits all of them). Returns (per name: scan -> stage -> the median over the rounds of each round's
    median ms, per name: what the Detector resolved "backend precision" to)."""
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, config in configs.items():
            runs[name].append(_run_worker(config, repeat))
    scans = [k for k in next(iter(runs.values()))[0] if k != "describe"]
    med = {name: {scan: {st: float(np.median([r[scan][st] for r in rs])) for st in (*STAGES, "total")}
                  for scan in scans} for name, rs in runs.items()}
    return med, {name: rs[0]["describe"] for name, rs in runs.items()}


def print_end_to_end(med: dict, described: dict, anchor: str = ANCHOR) -> None:
    """Per scan: every configuration's stages and its end-to-end ratio against ``anchor``."""
    for scan in med[anchor]:
        print(f"  {scan}:")
        for name in med:
            s = med[name][scan]
            print(f"    {name:<44s} ({described[name]:<16s}) " + "  ".join(f"{k} {s[k]:.1f}" for k in STAGES))
        for name in med:
            if name != anchor:
                print_ratio(f"    end to end, {name}", "anchor", med[anchor][scan]["total"], med[name][scan]["total"])
    print(f"  load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def bench_end_to_end(repeat: int, rounds: int = 3) -> None:
    """:data:`CONFIGS` end to end (:func:`time_configs`) and the goal for the default."""
    med, described = time_configs(CONFIGS, repeat, rounds)
    print_end_to_end(med, described)
    for scan, stages in med[f"{DEFAULT} default (auto)"].items():
        met = med[ANCHOR][scan]["total"] >= GOAL_SPEEDUP * stages["total"]
        print(f"  goal on {scan}: default at least x{GOAL_SPEEDUP} ({'met' if met else 'NOT met'})")


def main() -> None:
    torch.set_grad_enabled(False)
    if "--worker" in sys.argv:
        _worker(RunConfig(**json.loads(sys.argv[sys.argv.index("--worker") + 1])),
                int(sys.argv[sys.argv.index("--repeat") + 1]))
        return
    print_header("CPU default path by stage (tiny360, MAPE inference path, selection, message)")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    bench_stages(read_points(real_file("kitti/training/velodyne/000001.bin")), repeat=10)
    print_header("CPU end to end by back end and precision, one process each, vs the anchor (tiny, fp32 onnxruntime, "
                 "today's MAPE, libgomp spinning)")
    bench_end_to_end(repeat=6)


if __name__ == "__main__":
    main()
