"""Knowledge distillation: a trained model (the teacher) supervises a smaller one (the student) on the same batches.

Why: a narrow network slimmed from the default and fine-tuned on labels alone keeps the default's car recall but
loses its box precision (issue #17, BENCHMARKS.md). The teacher's head maps carry more than the labels do: a score
for every cell (including the unlabelled rear half of a real KITTI scan, which the label loss masks out) and a box
for every cell near an object. The student learns them with

* a quality focal loss on the heatmaps (binary cross-entropy against the teacher's probability, weighted by
  ``|p_student - p_teacher| ** 2`` so that the many cells both call background weigh little), normalised by the
  teacher's summed probability mass;
* an L1 loss on every regression map and the IoU map, each cell weighted by the teacher's highest class
  probability there (boxes matter where the teacher sees an object), normalised by the sum of the weights.

Both networks must read the same pillars and write maps of one size: same point features, pillar grid, head
stride, classes and branches, and the same terrain following (checked by :func:`check_compatible`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, load_model_config
from ..model import build_model
from ..model.checkpoint import load_checkpoint
from .losses import LOGIT_CLAMP

__all__ = ["DistillWeights", "Teacher", "check_compatible", "distillation_loss"]


@dataclass
class DistillWeights:
    """Weights of the distillation terms, added to the label loss (0 switches a term off)."""

    hm: float = 1.0
    reg: float = 0.25


def check_compatible(student: ModelConfig, teacher: ModelConfig) -> None:
    """Raise ValueError naming the first setting in which ``teacher`` cannot supervise ``student`` cell by cell."""
    for name in ("point_features", "intensity_scale", "num_sweeps", "terrain", "pc_range", "pillar_size",
                 "out_size_factor", "class_names", "heads"):
        if getattr(student, name) != getattr(teacher, name):
            raise ValueError(f"the teacher ({teacher.name}) cannot supervise {student.name}: their {name} differ "
                             f"({getattr(teacher, name)} vs {getattr(student, name)}); distil between configs with "
                             "the same grid, point features, head stride, classes and branches")


def distillation_loss(student: list[dict[str, Tensor]], teacher: list[dict[str, Tensor]],
                      weights: DistillWeights | None = None) -> tuple[Tensor, dict[str, float]]:
    """Distillation loss (sum over tasks) and its detached parts ``kd_hm``, ``kd_reg``.

    Args:
        student: per task, head maps ``{"hm": [B, C, H, W] logits, <branch>: [B, R, H, W], ...}`` (fp32).
        teacher: the same maps from the teacher (no gradient needed).
        weights: term weights (default :class:`DistillWeights`).
    Returns:
        The scalar loss (0 where the two sets of maps are equal) and ``{"kd_hm", "kd_reg"}``.
    """
    w = weights or DistillWeights()
    total = student[0]["hm"].new_zeros(())
    parts = {"kd_hm": 0.0, "kd_reg": 0.0}
    for s_out, t_out in zip(student, teacher, strict=True):
        s_logit = s_out["hm"].float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        p_t = torch.sigmoid(t_out["hm"].detach().float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP))
        focus = (torch.sigmoid(s_logit) - p_t).abs().pow(2)
        bce = F.binary_cross_entropy_with_logits(s_logit, p_t, reduction="none")
        hm_loss = (bce * focus).sum() / p_t.sum().clamp_min(1.0)
        cell_w = p_t.amax(dim=1, keepdim=True)  # [B, 1, H, W]
        reg_sum = s_logit.new_zeros(())
        for key, s_map in s_out.items():
            if key == "hm":
                continue
            reg_sum = reg_sum + ((s_map.float() - t_out[key].detach().float()).abs() * cell_w).sum()
        reg_loss = reg_sum / cell_w.sum().clamp_min(1.0)
        total = total + w.hm * hm_loss + w.reg * reg_loss
        parts["kd_hm"] += float(hm_loss.detach())
        parts["kd_reg"] += float(reg_loss.detach())
    return total, parts


class Teacher:
    """A frozen model whose head maps supervise a student (eval mode: batch-norm running statistics, no dropout).

    Args:
        config: the teacher's model config (name or YAML path).
        checkpoint: its weights (loaded with ``weights_only=True``).
        student: the student's config, checked with :func:`check_compatible`.
        device: where the teacher runs (the student's device).
    """

    def __init__(self, config: str, checkpoint: str, student: ModelConfig, device: torch.device) -> None:
        self.config = load_model_config(config)
        check_compatible(student, self.config)
        self.model = build_model(self.config)
        load_checkpoint(self.model, checkpoint)
        self.model.fuse("full").to(device).eval()  # one conv per block: the same maps, cheaper
        for p in self.model.parameters():
            p.requires_grad_(False)
