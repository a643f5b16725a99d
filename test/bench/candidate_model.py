"""A candidate model's CPU time end to end, side by side with the embedded default and issue #17's anchor.

For models that are not in the package (experiments under ``out/``), so not part of ``make bench``::

    .venv/bin/python test/bench/candidate_model.py CONFIG.yaml [--checkpoint CK.pt] [--precision int8|fp32]

Same scans, helpers and interleaving as ``bench_cpu_default.py``. INT8 timings need trained weights: with random
weights onnxruntime's INT8 dense part runs ~2x slower than with trained ones (BENCHMARKS.md), so give
``--checkpoint`` (a few training steps suffice) or measure ``--precision fp32``, whose time does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_default import DEFAULT, _merge, _scans, _stages, _with_todays_mape
from common import print_header

from fastpillars_ros.detector import STAGES, Detector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="candidate model config (.yaml)")
    parser.add_argument("--checkpoint", default=None, help="its weights (default: random, with a warning)")
    parser.add_argument("--precision", default="auto", help="auto (int8), int8 or fp32")
    parser.add_argument("--repeat", type=int, default=10, help="runs per model and scan (default 10)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    dets = {"anchor (tiny fp32, #17's MAPE)": _with_todays_mape(Detector("tiny", device="cpu", precision="fp32")),
            f"{DEFAULT} (embedded default)": Detector(DEFAULT, device="cpu"),
            "candidate": Detector(args.config, args.checkpoint, device="cpu", precision=args.precision)}
    print_header(f"candidate {dets['candidate'].describe()}")
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name, pts in _scans().items():
        res: dict[str, dict[str, float]] = {k: {} for k in dets}
        for _ in range(2):  # interleaved halves, so a load change hits every model
            for k, det in dets.items():
                res[k] = _merge(res[k], _stages(det, pts, args.repeat // 2))
        anchor = res[next(iter(dets))]["total"]
        for k, s in res.items():
            print(f"  {name:<20s} {k:<32s} total {s['total']:6.1f} ms (x{anchor / s['total']:.2f} vs anchor)  "
                  + "  ".join(f"{st} {s[st]:.1f}" for st in STAGES))
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
