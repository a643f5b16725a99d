"""CenterPoint-style multi-task head (official ``CenterHead_FP``) and dense decoding to boxes.

Head maps are raw (before any sigmoid). Their meaning (det3d target encoding, see
fastpillars-model.md §4.3) for a head cell at row i (y) and column j (x):
``reg`` = sub-cell offset (x, y) in [0, 1); ``height`` = box centre z (m); ``dim`` = log(w, l, h);
``rot`` = (sin r, cos r); ``vel`` = (vx, vy) m/s; ``iou`` = 2 IoU - 1; ``hm`` = class logits; ours, optional:
``axis`` = (sin 2r, cos 2r) (see :func:`det3d_angle`).
"""

from __future__ import annotations

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


@torch.no_grad()
def decode_head_outputs(outputs: list[dict[str, Tensor]], config: ModelConfig,
                        score_threshold: float | None = None) -> list[Candidates]:
    """Dense CenterPoint decoding (no peak extraction), as in the official ``predict``.

    Args:
        outputs: per task, raw maps ``[B, C, H, W]`` (keys reg, height, dim, rot, [vel], [iou], hm).
        config: the model config (grid geometry, classes, decode settings).
        score_threshold: keep cells whose max class heat (sigmoid) exceeds this; default from config.
    Returns:
        One :class:`Candidates` per batch item.
    """
    dec = config.decode
    thr = dec.score_threshold if score_threshold is None else float(score_threshold)
    alpha = dec.rectifier if config.head.iou else 0.0
    x_min, y_min = config.pc_range[0], config.pc_range[1]
    cell_x = config.pillar_size[0] * config.out_size_factor
    cell_y = config.pillar_size[1] * config.out_size_factor
    lo = torch.tensor(dec.post_center_range[:3])
    hi = torch.tensor(dec.post_center_range[3:])
    batch = outputs[0]["hm"].shape[0]
    label_offsets = [0]
    for task in config.tasks:
        label_offsets.append(label_offsets[-1] + len(task))

    results = []
    for b in range(batch):
        parts = []
        for t, out in enumerate(outputs):
            hm = out["hm"][b]
            w = hm.shape[-1]
            device = hm.device
            heat = torch.sigmoid(hm.float()).flatten(1)  # [C_t, H*W]
            score, cls = heat.max(dim=0)
            keep = torch.nonzero(score > thr).squeeze(1)
            rows = torch.div(keep, w, rounding_mode="floor")
            cols = keep - rows * w

            def take(name: str, _b: int = b, _keep: Tensor = keep, _out: dict = out) -> Tensor:
                return _out[name][_b].float().flatten(1)[:, _keep]  # [C, K]

            reg = take("reg")
            xs = (cols.float() + reg[0]) * cell_x + x_min
            ys = (rows.float() + reg[1]) * cell_y + y_min
            zs = take("height")[0]
            dim = torch.exp(take("dim").clamp(-5.0, 5.0))
            rot = take("rot")
            axis = take("axis") if "axis" in out else (None, None)
            r = det3d_angle(rot[0], rot[1], axis[0], axis[1])
            det = torch.stack([xs, ys, zs, dim[0], dim[1], dim[2], r], dim=1)
            centre = det[:, :3]
            in_range = ((centre >= lo.to(device)) & (centre <= hi.to(device))).all(dim=1)
            s = score[keep]
            if alpha > 0:
                iou = ((take("iou")[0] + 1.0) * 0.5).clamp(0.0, 1.0)
                s = torch.pow(s, 1.0 - alpha) * torch.pow(iou, alpha)
            sel = torch.nonzero(in_range).squeeze(1)
            s = s[sel]
            order = torch.argsort(s, descending=True, stable=True)[: dec.pre_max]
            sel = sel[order]
            vel = take("vel").t()[sel] if "vel" in out else None
            parts.append(Candidates(
                boxes=det3d_to_boxes(det[sel]),
                scores=s[order],
                labels=cls[keep][sel] + label_offsets[t],
                task=torch.full((sel.numel(),), t, dtype=torch.int64, device=device),
                velocities=vel,
            ))
        results.append(Candidates.cat(parts))
    return results
