"""CenterPoint/FastPillars training losses (fastpillars-model.md §4.3).

Per task: CenterNet focal loss on the heatmap (alpha 2, beta 4, normalised by the number of objects),
L1 on the regression branches at the GT cells with det3d's code weights
(reg 1 1, height 1, dim 1 1 1, [vel 0.2 0.2], rot 1 1, [axis 1 1]) scaled by ``reg_weight`` (0.25), and L1 on the IoU
branch against ``2 * IoU3D(decoded prediction, GT) - 1`` (the prediction is detached: the IoU target is a
label, not a path for gradients). The DIoU box loss of the official recipe (``train/box_loss.py``) is off by default
and weighted by ``LossWeights.box`` when on. The total is the sum over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import HEAD_CHANNELS, ModelConfig
from ..model.head import det3d_angle, wrap_angle
from ..ops.iou import iou_3d_pairs
from .box_loss import diou_loss
from .targets import HeadGeometry, regression_branches

__all__ = ["LOGIT_CLAMP", "BatchTargets", "LossWeights", "compute_losses", "focal_loss", "iou_targets"]

LOGIT_CLAMP = math.log((1 - 1e-4) / 1e-4)  # sigmoid clamped to [1e-4, 1 - 1e-4] as CenterPoint


@dataclass
class LossWeights:
    hm: float = 1.0
    reg: float = 0.25
    iou: float = 1.0
    vel_code: float = 0.2
    box: float = 0.0  # DIoU loss on the decoded boxes at the GT cells (0: off, the default's recipe)


@dataclass
class BatchTargets:
    """Collated targets, per task ``t``: ``hm[t]`` ``[B, C_t, H, W]``; ``ind[t]`` ``[B, K]`` int64 flat cells;
    ``mask[t]`` ``[B, K]`` float (1 = real object, 0 = padding); ``reg[t]`` ``[B, K, R]``; ``boxes[t]``
    ``[B, K, 7]`` GT boxes (ours). ``ignore`` ``[B, H, W]`` bool."""

    hm: list[Tensor]
    ind: list[Tensor]
    mask: list[Tensor]
    reg: list[Tensor]
    boxes: list[Tensor]
    ignore: Tensor

    def to(self, device: torch.device | str) -> BatchTargets:
        def mv(xs: list[Tensor]) -> list[Tensor]:
            return [x.to(device, non_blocking=True) for x in xs]

        return BatchTargets(mv(self.hm), mv(self.ind), mv(self.mask), mv(self.reg), mv(self.boxes),
                            self.ignore.to(device, non_blocking=True))


def focal_loss(logits: Tensor, gt: Tensor, ignore: Tensor | None = None) -> Tensor:
    """CenterNet focal loss: ``-(sum_pos log(p) (1-p)^2 + sum_neg log(1-p) p^2 (1-gt)^4) / max(1, num_pos)``.

    ``logits`` and ``gt`` ``[B, C, H, W]``; positives are cells with ``gt == 1``; ``ignore`` ``[B, H, W]``
    removes negatives (all channels) from the sum.
    """
    x = logits.float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
    p = torch.sigmoid(x)
    pos = gt.eq(1).float()
    neg_w = torch.pow(1 - gt, 4) * (1 - pos)
    if ignore is not None:
        neg_w = neg_w * (~ignore).unsqueeze(1).float()
    pos_loss = F.logsigmoid(x) * torch.pow(1 - p, 2) * pos
    neg_loss = F.logsigmoid(-x) * torch.pow(p, 2) * neg_w
    num_pos = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos.clamp_min(1.0)


def _gather(maps: Tensor, ind: Tensor) -> Tensor:
    """``[B, C, H, W]`` at flat cells ``[B, K]`` -> ``[B, K, C]``."""
    b, c = maps.shape[:2]
    return maps.reshape(b, c, -1).gather(2, ind.unsqueeze(1).expand(-1, c, -1)).transpose(1, 2)


def decode_at(pred_reg: Tensor, ind: Tensor, geo: HeadGeometry, width: int, axis: bool = False) -> Tensor:
    """Boxes (ours) ``[B, K, 7]`` decoded exactly as ``decode_head_outputs`` from gathered regression
    outputs ``[B, K, R]`` (REG_ORDER: reg, height, dim, [vel], rot, [axis]) at flat cells ``ind``."""
    rows = torch.div(ind, width, rounding_mode="floor").float()
    cols = (ind - torch.div(ind, width, rounding_mode="floor") * width).float()
    x = (cols + pred_reg[..., 0]) * geo.cell_x + geo.x_min
    y = (rows + pred_reg[..., 1]) * geo.cell_y + geo.y_min
    z = pred_reg[..., 2]
    dim = torch.exp(pred_reg[..., 3:6].clamp(-5.0, 5.0))
    rot = pred_reg[..., -4:-2] if axis else pred_reg[..., -2:]
    ax = (pred_reg[..., -2], pred_reg[..., -1]) if axis else (None, None)
    r = det3d_angle(rot[..., 0], rot[..., 1], *ax)
    yaw = wrap_angle(-r - math.pi / 2)
    return torch.stack([x, y, z, dim[..., 1], dim[..., 0], dim[..., 2], yaw], dim=-1)


@torch.no_grad()
def iou_targets(pred_boxes: Tensor, gt_boxes: Tensor, mask: Tensor) -> Tensor:
    """``2 * IoU3D - 1`` per matched pair (``[B, K]``; padding rows give -1)."""
    sel = mask > 0
    out = torch.full(mask.shape, -1.0, dtype=torch.float32)
    if bool(sel.any()):
        a = pred_boxes[sel].detach().double().cpu().numpy()
        b = gt_boxes[sel].detach().double().cpu().numpy()
        iou = iou_3d_pairs(np.nan_to_num(a), b)
        out[sel.cpu()] = torch.from_numpy(2.0 * iou - 1.0).float()
    return out.to(mask.device)


def compute_losses(outputs: list[dict[str, Tensor]], targets: BatchTargets, config: ModelConfig,
                   geo: HeadGeometry, weights: LossWeights | None = None) -> tuple[Tensor, dict[str, float]]:
    """Total loss (sum over tasks) and a dict of detached per-part sums (``hm``, ``reg``, ``iou``, ``loss``; ``box``
    when the DIoU term is on)."""
    w = weights or LossWeights()
    axis = config.head.axis
    names = regression_branches(config)
    code = torch.cat([torch.full((HEAD_CHANNELS[n],), w.vel_code if n == "vel" else 1.0) for n in names])
    total = outputs[0]["hm"].new_zeros(())
    parts = {"hm": 0.0, "reg": 0.0, "iou": 0.0} | ({"box": 0.0} if w.box > 0 else {})
    for t, out in enumerate(outputs):
        hm_loss = focal_loss(out["hm"], targets.hm[t], targets.ignore)
        ind, mask = targets.ind[t], targets.mask[t]
        num = mask.sum().clamp_min(1e-4)
        pred_maps = torch.cat([out[n] for n in names], dim=1)
        pred = _gather(pred_maps.float(), ind)  # [B, K, R]
        l1 = (torch.abs(pred - targets.reg[t]) * mask.unsqueeze(-1)).sum(dim=(0, 1)) / num
        reg_loss = (l1 * code.to(l1.device)).sum() * w.reg
        loss = w.hm * hm_loss + reg_loss
        parts["hm"] += float(hm_loss.detach())
        parts["reg"] += float(reg_loss.detach())
        # Decoded once for both terms; with a gradient only where the DIoU term is on (the IoU targets are labels).
        boxes = decode_at(pred if w.box > 0 else pred.detach(), ind, geo, out["hm"].shape[-1], axis)
        if w.box > 0:
            sel = mask > 0
            box_loss = diou_loss(boxes[sel], targets.boxes[t][sel].float()).sum() / num * w.box
            loss = loss + box_loss
            parts["box"] += float(box_loss.detach())
        if "iou" in out:
            iou_t = iou_targets(boxes, targets.boxes[t], mask)
            iou_pred = _gather(out["iou"].float(), ind)[..., 0]
            iou_loss = (torch.abs(iou_pred - iou_t) * mask).sum() / num
            loss = loss + w.iou * iou_loss
            parts["iou"] += float(iou_loss.detach())
        total = total + loss
    parts["loss"] = float(total.detach())
    return total, parts
