"""``fastpillars-ros slim``: a trained model cut to a narrower config, keeping each layer's most active channels.

The output is a starting point for ``fastpillars-ros train --config NARROW --init OUT``, not a finished model:
the cut network needs fine-tuning (see :mod:`fastpillars_ros.train.slim`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the trained wide model's weights")
    parser.add_argument("--from-config", default=None,
                        help="the wide model's config (default: the one stored in the checkpoint)")
    parser.add_argument("--config", required=True, help="the narrow config: the same layers, fewer channels")
    parser.add_argument("--data", action="append", required=True,
                        help="KITTI-layout folder whose scans measure the channels' activity; repeatable")
    parser.add_argument("--frames", type=int, default=24,
                        help="scans to measure on, spread evenly over the folders (default 24)")
    parser.add_argument("--out", required=True, help="output checkpoint (training form)")


def run(args: argparse.Namespace) -> int:
    from fastpillars_ros.config import config_from_dict, load_model_config
    from fastpillars_ros.datasets.kitti import KittiDataset
    from fastpillars_ros.model import build_model, load_checkpoint, read_state_dict, save_checkpoint
    from fastpillars_ros.pointcloud import even_indices, model_columns
    from fastpillars_ros.train import slim

    if args.frames < 1:
        print("slim: --frames must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.from_config:
            wide_config = load_model_config(args.from_config)
        else:
            stored = read_state_dict(args.checkpoint)[1]
            if stored is None:
                print(f"slim: {args.checkpoint} stores no config; name the wide model's with --from-config",
                      file=sys.stderr)
                return 2
            wide_config = config_from_dict(stored, source=args.checkpoint)
        wide = load_checkpoint(build_model(wide_config), args.checkpoint)
        narrow = build_model(args.config)
    except ValueError as exc:
        print(f"slim: {exc}", file=sys.stderr)
        return 2
    scans = []
    for folder in args.data:
        dataset = KittiDataset(folder)
        scans += [(dataset, i) for i in range(len(dataset))]
    if not scans:
        print("slim: no scans found in --data", file=sys.stderr)
        return 2
    picked = [scans[k] for k in even_indices(len(scans), min(args.frames, len(scans)))]
    cfg = wide.config

    def feed(model: torch.nn.Module) -> None:
        for dataset, index in picked:
            model.forward_dense(model.encode_points(
                model_columns(dataset.points(index), cfg.point_features, cfg.intensity_scale)))

    plan = slim.channel_plan(wide)
    try:
        keep = slim.keep_most_important(plan, slim.channel_importance(wide, plan, feed), slim.channel_plan(narrow))
        narrow.load_state_dict(slim.slim_state_dict(wide, plan, keep))
    except (ValueError, RuntimeError) as exc:
        print(f"slim: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(narrow, args.out)
    kept = sum(len(v) for k, v in keep.items() if k != slim.CONCAT)
    total = sum(w for k, w in plan.widths.items() if k != slim.CONCAT)
    print(f"slim: {cfg.name} -> {narrow.config.name}: kept {kept} of {total} channels, measured on "
          f"{len(picked)} scans; wrote {args.out}")
    return 0
