"""The training loop: AdamW + one-cycle LR, gradient clipping, per-epoch checkpoints, resume, JSONL log.

Run directory layout:

* ``last.pt`` and ``epoch_NNN.pt``: model weights in :func:`fastpillars_ros.model.checkpoint.save_checkpoint`
  form (load with ``load_checkpoint`` / ``Detector(config, checkpoint)``);
* ``train_state.pt``: ``{"epoch", "step", "total_steps", "optimizer", "scheduler", "torch_rng", "options"}``,
  plain tensors/containers only (loads with ``torch.load(..., weights_only=True)``); ``--resume`` continues
  from it (epoch ``epoch + 1`` onwards, same optimizer/scheduler state);
* ``log.jsonl``: one JSON object per epoch (mean losses, lr, frames/s, val losses when a val set is given).

Determinism (CPU): model init from ``torch.manual_seed(seed)``; sample order and augmentation from
``(seed, epoch, index)``; deterministic CPU kernels. A resumed run equals an uninterrupted one (tested).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import ModelConfig, load_model_config
from ..model import build_model
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..runtime.choices import TRAIN_PRECISIONS
from . import qat
from .data import CameraViewFrames, ConcatFrames, EpochSampler, TrainSet, collate, default_augment
from .distill import DistillWeights, Teacher, distillation_loss
from .losses import LossWeights, compute_losses
from .targets import head_geometry

__all__ = ["TrainOptions", "epoch_indices", "train"]

HM_BIAS_INIT = -2.19  # CenterNet: sigmoid(-2.19) ~ 0.1 prior on every heatmap cell


@dataclass
class TrainOptions:
    """Everything a run needs (the CLI maps its flags onto this)."""

    config: str
    out: str
    epochs: int = 20
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    pct_start: float = 0.4
    div_factor: float = 10.0
    final_div_factor: float = 100.0
    workers: int = 1
    seed: int = 0
    resume: bool = False
    max_frames: int | None = None
    max_val_frames: int | None = 200
    device: str = "cpu"
    threads: int | None = None
    gt_sampling: bool = False
    augment: bool = True
    tilt: float = 0.0  # augmentation: pitch and roll each uniform in [-tilt, tilt] (rad)
    lift: float = 0.0  # augmentation: z shift uniform in [-lift, lift] (m)
    min_points: int = 1
    progress: bool = True
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke tests, profiling)
    init: str | None = None  # start from these weights (fine-tuning) instead of a random init
    real_repeat: int = 1  # each real frame (``real`` and ``camera_view`` folders) is seen this many times per epoch
    licence: str | None = None  # terms of the trained weights (those of the training data), stored in checkpoints
    precision: str = "fp32"  # arithmetic of the dense part's forward and backward passes: one of TRAIN_PRECISIONS
    loss_weights: LossWeights = field(default_factory=LossWeights)
    teacher: str | None = None  # "CONFIG:CHECKPOINT" of a model whose head maps the run also learns (train/distill.py)
    distill_weights: DistillWeights = field(default_factory=DistillWeights)
    qat: bool = False  # train the dense part through its INT8 weight grid (train/qat.py)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_checkpoint(model: torch.nn.Module, path: Path, licence: str | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_checkpoint(model, tmp, licence)  # type: ignore[arg-type]
    os.replace(tmp, path)


def _cpu_threads(requested: int | None) -> int:
    """``requested``, else min(2, cores) -- or 1 when the machine is already busy (1-minute load average above
    the core count): intra-op threads spin-wait for each other on an oversubscribed CPU, and a 2-thread step
    then measured ~5x slower than a 1-thread one (tiny, batch 2, load ~10 on 2 cores)."""
    if requested:
        return int(requested)
    cores = os.cpu_count() or 1
    n = min(2, cores)
    try:
        if os.getloadavg()[0] > cores:
            n = 1
    except OSError:
        pass
    return n


def _source(root: str | Sequence[str], config: ModelConfig, camera_view: Sequence[str] = ()) -> Any:
    """KITTI-layout folders as one frame source: ``root`` (labelled all around, e.g. simulator output or
    pseudo-labelled real scans), then ``camera_view`` folders (labelled in the front camera's view only, e.g.
    real KITTI)."""
    from ..datasets.kitti import KittiDataset

    roots = [root] if isinstance(root, str) else list(root)
    sources = [KittiDataset(r, classes=config.class_names) for r in roots]
    sources += [CameraViewFrames(KittiDataset(r, classes=config.class_names)) for r in camera_view]
    return sources[0] if len(sources) == 1 and not camera_view else ConcatFrames(sources)


def init_heatmap_bias(model: torch.nn.Module, value: float = HM_BIAS_INIT) -> None:
    with torch.no_grad():
        for task in model.bbox_head.tasks:  # type: ignore[union-attr]
            task.hm[-1].bias.fill_(value)


def _loader(dataset: TrainSet, batch_size: int, seed: int, shuffle: bool, workers: int, drop_last: bool,
            pin: bool) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), seed, shuffle)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                        drop_last=drop_last, pin_memory=pin, persistent_workers=workers > 0,
                        prefetch_factor=2 if workers > 0 else None)
    return loader, sampler


def _forward(model: torch.nn.Module, batch: dict[str, Any], device: torch.device,
             precision: str = "fp32") -> list[dict[str, torch.Tensor]]:
    """Head maps (fp32) of one batch; with ``precision`` bf16 the dense part runs under bf16 autocast."""
    canvas = model.encode(batch["features"].to(device, non_blocking=True),  # type: ignore[operator]
                          batch["point_pillar"].to(device, non_blocking=True),
                          batch["coords"].to(device, non_blocking=True), batch_size=batch["batch_size"],
                          batch_index=batch["batch_index"].to(device, non_blocking=True))
    if precision == "fp32":
        return model.forward_dense(canvas)  # type: ignore[operator]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model.forward_dense(canvas)  # type: ignore[operator]
    # The focal and L1 losses sum over thousands of cells: they are computed from fp32 maps.
    return [{k: v.float() for k, v in task.items()} for task in out]


def evaluate_loss(model: torch.nn.Module, loader: DataLoader, config: ModelConfig, device: torch.device,
                  weights: LossWeights) -> dict[str, float]:
    """Mean losses over a loader with the model in eval mode (BN running statistics), no gradients."""
    geo = head_geometry(config)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for batch in loader:
            out = _forward(model, batch, device)
            _, parts = compute_losses(out, batch["targets"].to(device), config, geo, weights)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def epoch_indices(n_plain: int, n_real: int, max_frames: int | None, real_repeat: int) -> list[int]:
    """Source indices one epoch draws from: the first ``n_plain`` frames (at most ``max_frames`` of them), then
    each of the ``n_real`` real frames that follow them ``real_repeat`` times (real scans are few and dear)."""
    n_used = n_plain if max_frames is None else min(n_plain, max_frames)
    return list(range(n_used)) + [n_plain + k for k in range(n_real) for _ in range(max(1, real_repeat))]


def train(opts: TrainOptions, train_source: Any = None, val_source: Any = None, data: str | Sequence[str] | None = None,
          val: str | None = None, camera_view: Sequence[str] = (), camera_view_val: bool = False,
          real: Sequence[str] = ()) -> dict[str, Any]:
    """Train; returns a summary (``epochs_done``, ``steps``, ``history`` of per-epoch log records, ``run_dir``).

    ``train_source``/``val_source``: random-access frame sequences (tests); otherwise KITTI-layout folders
    ``data`` (one or several, labelled all around), ``real`` (real scans labelled all around, e.g. by
    pseudo-labels) and ``camera_view`` (labelled in the camera's view only) and ``val`` (camera view if
    ``camera_view_val``) are read with :class:`~fastpillars_ros.datasets.kitti.KittiDataset`.
    ``opts.max_frames`` limits the frames taken from ``data``; each ``real`` and ``camera_view`` frame is used
    ``opts.real_repeat`` times per epoch.
    """
    if opts.precision not in TRAIN_PRECISIONS:
        raise ValueError(f"training precision must be one of {TRAIN_PRECISIONS}, got {opts.precision!r}")
    config = load_model_config(opts.config)
    run_dir = Path(opts.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(opts.device)
    if device.type == "cpu":
        # The CPU kernels used (conv, BN, index_add_/scatter_reduce_ segment reductions) are deterministic;
        # torch.use_deterministic_algorithms is not called: it imports torch._inductor (~10 s).
        torch.set_num_threads(_cpu_threads(opts.threads))
    n_real = 0
    if train_source is None:
        if data is None:
            raise ValueError("no training data: give a data folder")
        data = [data] if isinstance(data, str) else list(data)
        train_source = _source([*data, *real], config, camera_view)
        if real or camera_view:
            n_real = sum(len(s) for s in train_source.sources[len(data):])
    if val_source is None and val is not None:
        val_source = _source([], config, [val]) if camera_view_val else _source(val, config)
    indices = epoch_indices(len(train_source) - n_real, n_real, opts.max_frames, opts.real_repeat)
    n_frames = len(indices)
    if n_frames < opts.batch_size:
        raise ValueError(f"{n_frames} training frames is fewer than one batch of {opts.batch_size}")
    train_set = TrainSet(train_source, config, seed=opts.seed, augment=opts.augment, gt_sampling=opts.gt_sampling,
                         min_points=opts.min_points, indices=indices,
                         augment_config=replace(default_augment(config), tilt=opts.tilt, lift=opts.lift))
    pin = device.type == "cuda"
    loader, sampler = _loader(train_set, opts.batch_size, opts.seed, True, opts.workers, True, pin)
    val_loader = None
    if val_source is not None:
        n_val = len(val_source) if opts.max_val_frames is None else min(len(val_source), opts.max_val_frames)
        val_set = TrainSet(val_source, config, seed=opts.seed, augment=False, min_points=opts.min_points,
                           indices=range(n_val))
        val_loader, _ = _loader(val_set, opts.batch_size, opts.seed, False, opts.workers, False, pin)

    steps_per_epoch = n_frames // opts.batch_size
    total_steps = steps_per_epoch * opts.epochs
    torch.manual_seed(opts.seed)
    model = build_model(config)
    if opts.init:
        load_checkpoint(model, opts.init)
    else:
        init_heatmap_bias(model)
    # Contiguous layout: channels_last was 1.15x faster for the dense part alone but no faster per training
    # step, and its backward pass crashed the process (SIGSEGV) with torch 2.11 on an Intel Xeon and with
    # torch 2.13 on an AMD EPYC (test_short_training_reduces_loss).
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, betas=(0.95, 0.99),
                                  weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=opts.lr, total_steps=max(total_steps, 1), pct_start=opts.pct_start,
        div_factor=opts.div_factor, final_div_factor=opts.final_div_factor, base_momentum=0.85,
        max_momentum=0.95)

    start_epoch, step = 0, 0
    state_path = run_dir / "train_state.pt"
    if opts.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if int(state["total_steps"]) != total_steps:
            raise ValueError(f"cannot resume {run_dir}: it was started with {state['total_steps']} total steps "
                             f"(epochs x frames / batch), this run has {total_steps}; use the same --epochs, "
                             "--batch-size and --max-frames")
        started = state["options"]
        for flag, then, now in (("--precision", started.get("precision", "fp32"), opts.precision),
                                ("--teacher", started.get("teacher"), opts.teacher),
                                ("--box-loss-weight", started.get("loss_weights", {}).get("box", 0.0),
                                 opts.loss_weights.box),
                                ("--qat", started.get("qat", False), opts.qat)):
            if then != now:
                raise ValueError(f"cannot resume {run_dir}: it was started with {flag} {then}, this run has {now}; "
                                 f"use the same {flag}")
        load_checkpoint(model, run_dir / "last.pt")
        model.to(device).train()
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
    elif not opts.resume and (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()

    if opts.qat:
        print(f"quantisation-aware: {qat.prepare(model)} convolutions train through their INT8 weights, batch norm "
              "frozen", flush=True)
    teacher = None
    if opts.teacher:
        teacher_config, sep, teacher_checkpoint = opts.teacher.rpartition(":")
        if not sep or not teacher_config:
            raise ValueError(f"--teacher must be CONFIG:CHECKPOINT (e.g. tiny360:fastpillars_ros/weights/tiny360.pt), "
                             f"got {opts.teacher!r}")
        teacher = Teacher(teacher_config, teacher_checkpoint, config, device)
    geo = head_geometry(config)
    # The header and one line per epoch are printed with or without the bar: a run in the background with its
    # output in a log shows where it is.
    print(f"train {config.name}: {n_frames} frames, batch {opts.batch_size}, {steps_per_epoch} steps/epoch, "
          f"epochs {start_epoch + 1}..{opts.epochs}, device {device}"
          + (f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""), flush=True)
    history: list[dict[str, Any]] = []
    bar_cls = None
    if opts.progress:
        from tqdm import tqdm as bar_cls
    for epoch in range(start_epoch, opts.epochs):
        if opts.max_steps is not None and step >= opts.max_steps:
            break
        sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_batches = n_seen = 0
        t0 = time.perf_counter()
        it = loader if bar_cls is None else bar_cls(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/"
                                                    f"{opts.epochs}", unit="it", dynamic_ncols=True)
        for batch in it:
            out = _forward(model, batch, device, opts.precision)
            loss, parts = compute_losses(out, batch["targets"].to(device), config, geo, opts.loss_weights)
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = _forward(teacher.model, batch, device, opts.precision)
                kd_loss, kd_parts = distillation_loss(out, teacher_out, opts.distill_weights)
                loss = loss + kd_loss
                parts.update(kd_parts, loss=float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            if math.isfinite(parts["loss"]):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
                optimizer.step()
            scheduler.step()
            step += 1
            n_batches += 1
            n_seen += batch["batch_size"]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if bar_cls is not None:
                it.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                               fps=f"{n_seen / (time.perf_counter() - t0):.2f}")
            if opts.max_steps is not None and step >= opts.max_steps:
                break
        if bar_cls is not None:
            it.close()
        elapsed = time.perf_counter() - t0
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, **means,
                                  "lr": scheduler.get_last_lr()[0], "frames_per_s": n_seen / max(elapsed, 1e-9),
                                  "time_s": elapsed}
        if val_loader is not None:
            record.update({f"val_{k}": v for k, v in evaluate_loss(model, val_loader, config, device,
                                                                   opts.loss_weights).items()})
        _atomic_checkpoint(model, run_dir / "last.pt", opts.licence)
        _atomic_checkpoint(model, run_dir / f"epoch_{epoch + 1:03d}.pt", opts.licence)
        _atomic_save({"epoch": epoch + 1, "step": step, "total_steps": total_steps,
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "torch_rng": torch.get_rng_state(), "options": _plain_options(opts)}, state_path)
        with open(run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(_epoch_line(record, opts.epochs), flush=True)
        history.append(record)
    return {"run_dir": str(run_dir), "epochs_done": history[-1]["epoch"] if history else start_epoch,
            "steps": step, "history": history, "model": model}


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One log line for a finished epoch: losses, learning rate, duration and throughput."""
    val = f", val loss {record['val_loss']:.4f}" if "val_loss" in record else ""
    return (f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}{val}, lr {record['lr']:.2e}, "
            f"{record['time_s'] / 60:.1f} min, {record['frames_per_s']:.2f} frames/s, step {record['step']}")


def _plain_options(opts: TrainOptions) -> dict[str, Any]:
    d = asdict(opts)
    d["loss_weights"] = dict(d["loss_weights"])
    d["distill_weights"] = dict(d["distill_weights"])
    return {k: v for k, v in d.items() if v is None or isinstance(v, (int, float, str, bool, dict))}
