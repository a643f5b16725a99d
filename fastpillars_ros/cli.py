"""``fastpillars-ros <command>``: the project's command-line tools.

Each command is a module (or ``module:attribute``) that provides ``add_arguments(parser)`` and
``run(args) -> int``.
Modules are imported only when their command runs, so ``fastpillars-ros --help`` stays instant (torch
alone takes seconds to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (module, one-line help). Keep sorted by the order a user meets them.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("fastpillars_ros.tools.demo", "replay the sample bag through the node; summary, AP and BEV pictures"),
    "launch": ("fastpillars_ros.tools.launch",
               "start the detector node like detect.launch.py (where launch is missing)"),
    "simulate": ("fastpillars_ros.sim.cli", "generate synthetic LiDAR street scenes in KITTI layout"),
    "make-bag": ("fastpillars_ros.tools.make_bag:MakeBag",
                 "KITTI folder -> rosbag2 mcap (PointCloud2 + /ground_truth)"),
    "make-sample-bag": ("fastpillars_ros.tools.make_bag:MakeSampleBag",
                        "regenerate fastpillars_ros/data/sample.mcap deterministically"),
    "replay": ("fastpillars_ros.tools.replay", "play a bag's clouds to a detector; latency, drops, recorded answers"),
    "viz": ("fastpillars_ros.tools.viz", "bird's-eye-view PNG of a cloud with ground truth and detections"),
    "golden": ("fastpillars_ros.tools.regression:Golden",
               "golden detections of a bag from the offline detector (JSON)"),
    "regression-check": ("fastpillars_ros.tools.regression:Check", "compare replayed detections with golden ones"),
    "train": ("fastpillars_ros.train.command", "train a model on KITTI-format data (e.g. simulate output)"),
    "eval": ("fastpillars_ros.tools.eval", "KITTI-style R40 AP (BEV/3D) of the detector or of stored detections"),
    "eval-real": ("fastpillars_ros.tools.eval_real",
                  "the real development scans: AP, recall and false objects per frame, 180-degree check"),
    "calibrate": ("fastpillars_ros.tools.eval_real:Calibrate",
                  "default score thresholds per class from held-out real scans, stored with the weights"),
    "average": ("fastpillars_ros.tools.average",
                "the mean of several runs' weights (seeds of one recipe), to calibrate and use as one model"),
    "slim": ("fastpillars_ros.tools.slim",
             "cut a trained model to a narrower config (most active channels kept) as a start for train --init"),
    "pseudo-label": ("fastpillars_ros.tools.pseudo_label",
                     "label real scans with a teacher model for self-training (KITTI layout)"),
    "memcheck": ("fastpillars_ros.tools.memcheck", "estimate GPU memory per component and check it fits"),
    "profile": ("fastpillars_ros.tools.profile", "per-layer and per-stage timings (trtexec JSON shape)"),
    "export-onnx": ("fastpillars_ros.tools.deploy:ExportOnnx",
                    "export the fused dense part to ONNX and check it with onnxruntime"),
    "build-engine": ("fastpillars_ros.tools.deploy:BuildEngine",
                     "build and cache the TensorRT engine for this GPU (install time)"),
}


def _overview() -> str:
    width = max((len(c) for c in COMMANDS), default=0)
    lines = ["usage: fastpillars-ros <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    lines += ["", "Run 'fastpillars-ros <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastpillars-ros`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fastpillars-ros: unknown command {name!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    target, helptext = COMMANDS[name]
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        module = getattr(module, attribute)
    parser = argparse.ArgumentParser(prog=f"fastpillars-ros {name}", description=helptext)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
