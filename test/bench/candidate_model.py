"""A candidate model's CPU time end to end, side by side with the embedded default and issue #17's anchor.

For models that are not in the package (experiments under ``out/``), so not part of ``make bench``::

    .venv/bin/python test/bench/candidate_model.py CONFIG.yaml [--checkpoint CK.pt] [--backend B] [--precision P]

Same scans, helpers and process-per-configuration rounds as ``bench_cpu_default.py``. INT8 timings need trained
weights: with random weights onnxruntime's INT8 dense part runs ~2x slower than with trained ones (BENCHMARKS.md),
so give ``--checkpoint`` (a few training steps suffice) or measure ``--precision fp32``, whose time does not depend
on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_default import ANCHOR, ANCHOR_CONFIG, DEFAULT, RunConfig, print_end_to_end, time_configs
from common import print_header

from fastpillars_ros.runtime.choices import BACKENDS, PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="candidate model config (.yaml)")
    parser.add_argument("--checkpoint", default=None, help="its weights (default: random, with a warning)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="the candidate's back end")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="the candidate's precision")
    parser.add_argument("--repeat", type=int, default=8, help="frames per scan, model and round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    configs = {ANCHOR: ANCHOR_CONFIG, f"{DEFAULT} (embedded default)": RunConfig(DEFAULT),
               "candidate": RunConfig(str(Path(args.config).resolve()), args.backend, args.precision,
                                      checkpoint=args.checkpoint and str(Path(args.checkpoint).resolve()))}
    print_header(f"candidate {args.config} ({args.checkpoint or 'random weights'})")
    print_end_to_end(*time_configs(configs, args.repeat, args.rounds))


if __name__ == "__main__":
    main()
