"""``fastpillars-ros train``: train a model on KITTI-layout data (real KITTI or ``fastpillars-ros simulate`` output).

Example (the shipped ``tiny`` model)::

    fastpillars-ros train --config tiny --data out/sim/train --val out/sim/test --epochs 10 --out out/train/tiny

Writes ``RUN_DIR/last.pt``, ``RUN_DIR/epoch_NNN.pt`` (load with ``Detector(config, checkpoint)``),
``RUN_DIR/train_state.pt`` (for ``--resume``) and ``RUN_DIR/log.jsonl`` (per-epoch losses).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from ..runtime.choices import TRAIN_PRECISIONS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="model config name or YAML path (default tiny)")
    parser.add_argument("--data", required=True, action="append",
                        help="training data folder (velodyne/, label_2/, calib/), labelled all around the sensor; "
                        "repeat the flag for several")
    parser.add_argument("--camera-view-data", action="append", default=[], metavar="DIR",
                        help="training data folder labelled only in the front camera's view (real KITTI): the "
                        "unlabelled rest of each scan is masked out of the heatmap loss; repeatable")
    parser.add_argument("--real-data", action="append", default=[], metavar="DIR",
                        help="real scans labelled all around the sensor (e.g. by `fastpillars-ros pseudo-label`); "
                        "not limited by --max-frames; repeatable")
    parser.add_argument("--real-repeat", type=int, default=1,
                        help="times each --real-data and --camera-view-data frame is used per epoch (default 1)")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from these weights (fine-tuning; the config must match their layers)")
    parser.add_argument("--teacher", default=None, metavar="CONFIG:CHECKPOINT",
                        help="distil: also learn this trained model's head maps on every batch, over the whole canvas "
                        "(its config must share the grid, point features and head; e.g. a narrow model from the "
                        "default: --teacher tiny360:fastpillars_ros/weights/tiny360.pt)")
    parser.add_argument("--distill-weight", type=float, nargs=2, default=None, metavar=("HM", "REG"),
                        help="weights of the distillation heatmap and box terms (default 1.0 0.25)")
    parser.add_argument("--box-loss-weight", type=float, default=0.0, metavar="W",
                        help="add FastPillars' DIoU loss on the decoded boxes with this weight (default 0: off)")
    parser.add_argument("--qat", action="store_true",
                        help="quantisation-aware fine-tuning: the dense part trains through the INT8 weights of the "
                        "CPU default (batch norm frozen); start it from trained weights (--init)")
    parser.add_argument("--weights-licence", default=None, metavar="TEXT",
                        help="licence of the trained weights (that of the training data, e.g. 'CC BY-NC-SA 3.0' for "
                        "KITTI), stored in every checkpoint and shown in the node's ready line")
    parser.add_argument("--val", default=None, help="validation data folder: val loss per epoch in log.jsonl")
    parser.add_argument("--val-camera-view", action="store_true",
                        help="the --val folder is labelled in the camera's view only (mask as for training)")
    parser.add_argument("--epochs", type=int, required=True, help="number of epochs")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, train_state.pt, log.jsonl)")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per batch (default 4)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--pct-start", type=float, default=0.4,
                        help="fraction of the steps spent warming up to the peak learning rate (default 0.4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    parser.add_argument("--workers", type=int, default=1,
                        help="data loader worker processes (loading, augmentation, pillarization; default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default min(2, cores)); 1 is faster on a busy machine")
    parser.add_argument("--seed", type=int, default=0, help="seed (weights init, data order, augmentation)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from train_state.pt")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="use only the first N frames of the --data folders (camera-view frames: all)")
    parser.add_argument("--max-val-frames", type=int, default=200, help="validation frames used (default 200)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps in total (smoke tests, timing; the epoch it stops in is "
                        "checkpointed as if complete)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=TRAIN_PRECISIONS,
                        help="dense-part arithmetic: fp32 (default; how the shipped weights were trained) or bf16 "
                             "autocast (about twice the step rate on processors with AMX; weights stay fp32)")
    parser.add_argument("--gt-sampling", action="store_true", help="paste objects from other frames (augmentation)")
    parser.add_argument("--tilt", type=float, default=0.0, metavar="DEG",
                        help="augmentation: tilt scenes about the sensor by up to DEG degrees in pitch and in roll "
                             "(slopes, other mountings; default 0)")
    parser.add_argument("--lift", type=float, default=0.0, metavar="M",
                        help="augmentation: shift scenes up or down by up to M metres (default 0)")
    parser.add_argument("--min-points", type=int, default=1,
                        help="GT boxes with fewer LiDAR points are ignored, not targets (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .distill import DistillWeights
    from .engine import TrainOptions, train
    from .losses import LossWeights

    if args.box_loss_weight < 0:
        print(f"fastpillars-ros train: --box-loss-weight must be >= 0 (0 switches the DIoU loss off), got "
              f"{args.box_loss_weight}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("fastpillars-ros train: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
    opts = TrainOptions(config=args.config, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, workers=args.workers, seed=args.seed, resume=args.resume,
                        max_frames=args.max_frames, max_val_frames=args.max_val_frames, device=args.device,
                        threads=args.threads, gt_sampling=args.gt_sampling, min_points=args.min_points,
                        progress=not args.no_progress, max_steps=args.max_steps, init=args.init,
                        real_repeat=args.real_repeat, licence=args.weights_licence,
                        pct_start=args.pct_start, tilt=math.radians(args.tilt), lift=args.lift,
                        precision=args.precision, teacher=args.teacher,
                        distill_weights=DistillWeights(*(args.distill_weight or ())),
                        loss_weights=LossWeights(box=args.box_loss_weight), qat=args.qat)
    try:
        summary = train(opts, data=args.data, val=args.val, camera_view=args.camera_view_data,
                        camera_view_val=args.val_camera_view, real=args.real_data)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastpillars-ros train: {exc}", file=sys.stderr)
        return 2
    last = summary["history"][-1] if summary["history"] else {}
    print(f"done: {summary['epochs_done']} epochs, {summary['steps']} steps, last epoch loss "
          f"{last.get('loss', float('nan')):.4f}; checkpoint {summary['run_dir']}/last.pt")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastpillars_ros.train.command``, the same as ``fastpillars-ros train``."""
    from fastpillars_ros.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
