"""CenterPoint-style multi-task head (official ``CenterHead_FP``) and dense decoding to boxes.

Head maps are raw (before any sigmoid). Their meaning (det3d target encoding, see
fastpillars-model.md §4.3) for a head cell at row i (y) and column j (x):
``reg`` = sub-cell offset (x, y) in [0, 1); ``height`` = box centre z (m); ``dim`` = log(w, l, h);
``rot`` = (sin r, cos r); ``vel`` = (vx, vy) m/s; ``iou`` = 2 IoU - 1; ``hm`` = class logits; ours, optional:
``axis`` = (sin 2r, cos 2r) (see :func:`det3d_angle`).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .repvgg import LEAKY_SLOPE, fuse_sequential_conv_bn


class SepHead(nn.Module):
    """One task: a branch per output, each Conv3x3(bias)+BN+LeakyReLU+Conv(k)(bias).

    Branches are registered in the official order so iteration (and export order) is
    reg, height, dim, rot, vel, iou, hm (those that exist).
    """

    def __init__(self, in_channels: int, heads: OrderedDict[str, int], head_conv: int = 64,
                 final_kernel: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        self.names = tuple(heads)
        for name, cout in heads.items():
            self.add_module(name, nn.Sequential(
                nn.Conv2d(in_channels, head_conv, 3, padding=1, bias=True),
                nn.BatchNorm2d(head_conv, eps=eps),
                nn.LeakyReLU(LEAKY_SLOPE),
                nn.Conv2d(head_conv, cout, final_kernel, padding=final_kernel // 2, bias=True),
            ))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}

    def fuse(self) -> None:
        for name in self.names:
            fuse_sequential_conv_bn(getattr(self, name))


class CenterHead(nn.Module):
    """Shared Conv3x3(bias)+BN(eps 1e-5)+ReLU, then one :class:`SepHead` per task.

    Input ``[B, Cin, H, W]``; output: list (per task) of dicts name -> ``[B, C_name, H, W]``.
    """

    def __init__(self, in_channels: int, num_classes: tuple[int, ...], heads: tuple[tuple[str, int], ...],
                 shared_conv: int = 64, head_conv: int = 64, final_kernel: int = 3, eps: float = 1e-5) -> None:
        super().__init__()
        # Plain ReLU here (not leaky), as in the official head.
        self.shared_conv = nn.Sequential(
            nn.Conv2d(in_channels, shared_conv, 3, padding=1, bias=True),
            nn.BatchNorm2d(shared_conv, eps=eps),
            nn.ReLU(inplace=True),
        )
        self.tasks = nn.ModuleList()
        for n in num_classes:
            branch = OrderedDict(heads)
            branch["hm"] = n
            self.tasks.append(SepHead(shared_conv, branch, head_conv, final_kernel, eps))

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        x = self.shared_conv(x)
        return [task(x) for task in self.tasks]

    def fuse(self) -> None:
        fuse_sequential_conv_bn(self.shared_conv)
        for task in self.tasks:
            task.fuse()  # type: ignore[operator]


# ------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------

@dataclass
class Candidates:
    """Scored candidate boxes of one batch item, before NMS.

    Tasks are concatenated in task order; within a task rows are sorted by score (descending) and
    at most ``pre_max`` are kept. All tensors live on the device of the head outputs.

    Attributes:
        boxes: ``[K, 7]`` float32 ``[x, y, z_center, length, width, height, yaw]`` (m, rad) in the
            model's input frame; yaw counter-clockwise from +x, wrapped to [-pi, pi).
        scores: ``[K]`` float32 IoU-rectified score ``heat^(1-a) * iou^a`` in [0, 1].
        labels: ``[K]`` int64 global class id (index into ``ModelConfig.class_names``).
        task: ``[K]`` int64 task (class group) index; NMS runs per task.
        velocities: ``[K, 2]`` float32 (vx, vy) m/s in the input frame, or None when the model has no vel.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    task: Tensor
    velocities: Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: Tensor) -> Candidates:
        """Rows picked by a boolean mask or an index tensor."""
        return Candidates(self.boxes[index], self.scores[index], self.labels[index], self.task[index],
                          None if self.velocities is None else self.velocities[index])

    def for_task(self, t: int) -> Candidates:
        """The rows of task ``t`` (still sorted by score)."""
        return self.select(self.task == t)

    @staticmethod
    def cat(parts: list[Candidates]) -> Candidates:
        vel = None if parts[0].velocities is None else torch.cat([p.velocities for p in parts])  # type: ignore[misc]
        return Candidates(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                          torch.cat([p.labels for p in parts]), torch.cat([p.task for p in parts]), vel)


def wrap_angle(a: Tensor) -> Tensor:
    """Wrap radians to [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def det3d_angle(rot_sin: Tensor, rot_cos: Tensor, axis_sin: Tensor | None = None,
                axis_cos: Tensor | None = None) -> Tensor:
    """det3d yaw ``r`` (radians) from the ``rot`` branch, and from the ``axis`` branch when the model has one.

    Without ``axis``: ``r = atan2(sin, cos)``. With it: the axis ``a = atan2(sin 2r, cos 2r) / 2`` is known up
    to a half turn; of ``a`` and ``a + pi`` the one within 90 degrees of the ``rot`` reading is taken, so
    ``rot`` only has to point to the right half circle. Inputs share one shape; the output has it too.
    """
    r = torch.atan2(rot_sin, rot_cos)
    if axis_sin is None or axis_cos is None:
        return r
    a = 0.5 * torch.atan2(axis_sin, axis_cos)
    flip = torch.cos(r - a) < 0
    return wrap_angle(torch.where(flip, a + math.pi, a))


def det3d_to_boxes(det: Tensor) -> Tensor:
    """det3d ``[..., (x, y, z, w, l, h, ..., r)]`` -> ``[x, y, z, length, width, height, yaw]``.

    length = det[4], width = det[3], yaw = -r - pi/2 (fastpillars-model.md §4.6).
    """
    r = det[..., -1]
    return torch.stack([det[..., 0], det[..., 1], det[..., 2], det[..., 4], det[..., 3], det[..., 5],
                        wrap_angle(-r - math.pi / 2)], dim=-1)


@dataclass
class DenseCandidates:
    """Candidates of every task in one fixed-shape block: per batch item and task the ``P`` best cells by
    score (``P = min(pre_max, H * W)``), padded. Fixed shapes keep the whole decode on the device without a
    host synchronisation (and inside a CUDA graph); :meth:`compact` gives the per-item :class:`Candidates`.

    Attributes:
        boxes: ``[B, T, P, 7]`` float32, as :attr:`Candidates.boxes` (padding rows hold any value).
        scores: ``[B, T, P]`` float32, descending along P; ``-inf`` on padding.
        labels: ``[B, T, P]`` int64 global class id.
        valid: ``[B, T, P]`` bool, a prefix of each row: the cells above the heat threshold whose centre
            lies in ``post_center_range``.
        velocities: ``[B, T, P, 2]`` float32 or None.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor
    velocities: Tensor | None = None

    def select(self, b: int, mask: Tensor) -> Candidates:
        """The rows of batch item ``b`` where ``mask`` ``[T, P]`` is true, tasks in order, each task's rows
        by score (a boolean select: on a GPU it waits for the device)."""
        num_tasks, p = mask.shape
        task = torch.arange(num_tasks, device=mask.device).view(num_tasks, 1).expand(num_tasks, p)
        return Candidates(self.boxes[b][mask], self.scores[b][mask], self.labels[b][mask], task[mask],
                          None if self.velocities is None else self.velocities[b][mask])

    def compact(self) -> list[Candidates]:
        """One :class:`Candidates` per batch item: its valid rows."""
        return [self.select(b, self.valid[b]) for b in range(self.valid.shape[0])]


@functools.cache
def _class_table(task_sizes: tuple[int, ...], device: str) -> tuple[Tensor, Tensor]:
    """(``[T, Cmax]`` index of each task's classes into the concatenated heat maps, padded with the index of
    an extra row; ``[T, 1]`` global label of each task's first class). Cached per device: no host-to-device
    copy per frame (nor inside a CUDA graph capture)."""
    total, c_max = sum(task_sizes), max(task_sizes)
    starts = [sum(task_sizes[:t]) for t in range(len(task_sizes))]
    table = [[s + c if c < n else total for c in range(c_max)] for s, n in zip(starts, task_sizes, strict=True)]
    return (torch.tensor(table, dtype=torch.int64, device=device),
            torch.tensor(starts, dtype=torch.int64, device=device).view(-1, 1))


@torch.no_grad()
def decode_dense(outputs: list[dict[str, Tensor]], config: ModelConfig,
                 score_threshold: float | None = None) -> DenseCandidates:
    """Dense CenterPoint decoding (no peak extraction, as the official ``predict``) of all tasks at once:
    batched tensor ops over ``[B, T, H * W]`` and one stable sort per row, no per-task loop.

    Args:
        outputs: per task, raw maps ``[B, C, H, W]`` (keys reg, height, dim, rot, [axis], [vel], [iou], hm);
            every task has the same branches (only ``hm``'s channels differ).
        config: the model config (grid geometry, classes, decode settings).
        score_threshold: keep cells whose max class heat (sigmoid) exceeds this; default from config.
    """
    dec = config.decode
    thr = dec.score_threshold if score_threshold is None else float(score_threshold)
    alpha = dec.rectifier if config.head.iou else 0.0
    cell_x = config.pillar_size[0] * config.out_size_factor
    cell_y = config.pillar_size[1] * config.out_size_factor
    num_tasks = len(outputs)
    batch, _, h, w = outputs[0]["hm"].shape
    hw = h * w
    device = outputs[0]["hm"].device
    table, first_label = _class_table(tuple(int(o["hm"].shape[1]) for o in outputs), str(device))

    heat = torch.sigmoid(torch.cat([o["hm"] for o in outputs], dim=1).float()).flatten(2)  # [B, sum C, HW]
    heat = torch.cat([heat, heat.new_full((batch, 1, hw), -1.0)], dim=1)  # padding row: never the max
    score, cls = heat[:, table].max(dim=2)  # [B, T, HW]
    names = [n for n in outputs[0] if n != "hm"]
    width = {n: int(outputs[0][n].shape[1]) for n in names}
    maps = torch.cat([o[n] for o in outputs for n in names], dim=1).float().view(batch, num_tasks, -1, hw)
    chan: dict[str, slice] = {}  # channels of each branch within one task's block of ``maps``
    at = 0
    for n in names:
        chan[n] = slice(at, at + width[n])
        at += width[n]

    cell = torch.arange(hw, device=device)
    rows = torch.div(cell, w, rounding_mode="floor")
    cols = cell - rows * w
    reg = maps[:, :, chan["reg"]]
    xs = (cols.float() + reg[:, :, 0]) * cell_x + config.pc_range[0]
    ys = (rows.float() + reg[:, :, 1]) * cell_y + config.pc_range[1]
    zs = maps[:, :, chan["height"].start]
    lo, hi = dec.post_center_range[:3], dec.post_center_range[3:]
    keep = score > thr
    for v, a, b in ((xs, lo[0], hi[0]), (ys, lo[1], hi[1]), (zs, lo[2], hi[2])):
        keep &= (v >= a) & (v <= b)
    s = score
    if alpha > 0:
        iou = ((maps[:, :, chan["iou"].start] + 1.0) * 0.5).clamp(0.0, 1.0)
        s = torch.pow(s, 1.0 - alpha) * torch.pow(iou, alpha)
    s = torch.where(keep, s, torch.full_like(s, -math.inf))
    p = min(dec.pre_max, hw)
    s, order = torch.sort(s, dim=-1, descending=True, stable=True)
    s, order = s[..., :p], order[..., :p]

    def take(n: str) -> Tensor:  # [B, T, C, P]
        sub = maps[:, :, chan[n]]
        return torch.gather(sub, 3, order.unsqueeze(2).expand(-1, -1, sub.shape[2], -1))

    rows_p = torch.div(order, w, rounding_mode="floor")
    cols_p = order - rows_p * w
    reg_p = take("reg")
    dim = torch.exp(take("dim").clamp(-5.0, 5.0))
    rot = take("rot")
    axis = take("axis") if "axis" in chan else None
    r = det3d_angle(rot[:, :, 0], rot[:, :, 1], None if axis is None else axis[:, :, 0],
                    None if axis is None else axis[:, :, 1])
    det = torch.stack([(cols_p.float() + reg_p[:, :, 0]) * cell_x + config.pc_range[0],
                       (rows_p.float() + reg_p[:, :, 1]) * cell_y + config.pc_range[1],
                       take("height")[:, :, 0], dim[:, :, 0], dim[:, :, 1], dim[:, :, 2], r], dim=-1)
    labels = torch.gather(cls, 2, order) + first_label
    vel = take("vel").transpose(2, 3) if "vel" in chan else None
    return DenseCandidates(det3d_to_boxes(det), s, labels, s > -math.inf, vel)


@torch.no_grad()
def decode_head_outputs(outputs: list[dict[str, Tensor]], config: ModelConfig,
                        score_threshold: float | None = None) -> list[Candidates]:
    """Dense CenterPoint decoding (:func:`decode_dense`), compacted: one :class:`Candidates` per batch item."""
    return decode_dense(outputs, config, score_threshold).compact()
