"""Distillation (train/distill.py): the loss measures how far a student's head maps are from a teacher's, training
with a teacher moves the student towards it, and a teacher that cannot supervise cell by cell is refused. Synthetic
frames and the test-only small model, as test_train.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_train import SMALL, _opts, frames

from fastpillars_ros.config import load_model_config
from fastpillars_ros.model import build_model
from fastpillars_ros.model.checkpoint import save_checkpoint
from fastpillars_ros.train.distill import DistillWeights, Teacher, check_compatible, distillation_loss
from fastpillars_ros.train.engine import train
from fastpillars_ros.train.losses import LossWeights


def _maps(seed: int, batch: int = 2) -> list[dict[str, torch.Tensor]]:
    """Random head maps of the small model's shapes."""
    cfg = load_model_config(SMALL)
    h, w = cfg.head_shape
    g = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(batch, ch, h, w, generator=g) for name, ch in [("hm", 3), *cfg.heads]}]


def _teacher_checkpoint(path: Path, seed: int = 5) -> str:
    torch.manual_seed(seed)
    model = build_model(SMALL)
    save_checkpoint(model, path)
    return str(path)


def test_distillation_loss_is_zero_when_the_student_matches_the_teacher() -> None:
    maps = _maps(0)
    loss, parts = distillation_loss(maps, maps)
    assert float(loss) == pytest.approx(0.0, abs=1e-7)
    assert parts == pytest.approx({"kd_hm": 0.0, "kd_reg": 0.0}, abs=1e-7)


def test_distillation_loss_grows_with_the_distance_to_the_teacher() -> None:
    teacher = _maps(0)
    near = [{k: v + 0.1 * torch.randn_like(v) for k, v in teacher[0].items()}]
    far = _maps(1)
    assert 0.0 < float(distillation_loss(near, teacher)[0]) < float(distillation_loss(far, teacher)[0])


def test_distillation_terms_follow_their_weights() -> None:
    teacher, student = _maps(0), _maps(1)
    _, parts = distillation_loss(student, teacher)
    only_hm, _ = distillation_loss(student, teacher, DistillWeights(hm=1.0, reg=0.0))
    only_reg, _ = distillation_loss(student, teacher, DistillWeights(hm=0.0, reg=2.0))
    assert float(only_hm) == pytest.approx(parts["kd_hm"], rel=1e-5)
    assert float(only_reg) == pytest.approx(2.0 * parts["kd_reg"], rel=1e-5)


def test_a_teacher_on_another_grid_is_refused() -> None:
    cfg = load_model_config(SMALL)
    other = replace(cfg, pillar_size=(cfg.pillar_size[0] * 2, cfg.pillar_size[1] * 2))
    with pytest.raises(ValueError, match="pillar_size"):
        check_compatible(cfg, other)
    check_compatible(cfg, replace(cfg, neck=cfg.neck))  # same grid and head: accepted


def test_the_teacher_is_frozen_and_fused(tmp_path: Path) -> None:
    cfg = load_model_config(SMALL)
    teacher = Teacher(SMALL, _teacher_checkpoint(tmp_path / "t.pt"), cfg, torch.device("cpu"))
    assert not teacher.model.training and teacher.model.fused
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_training_on_the_teacher_alone_brings_the_student_to_its_maps(tmp_path: Path) -> None:
    teacher = _teacher_checkpoint(tmp_path / "teacher.pt")
    no_labels = LossWeights(hm=0.0, reg=0.0, iou=0.0)
    summary = train(_opts(tmp_path / "run", epochs=8, lr=1e-2, augment=False, teacher=f"{SMALL}:{teacher}",
                          loss_weights=no_labels), train_source=frames(6))
    w = DistillWeights()
    kd = [w.hm * h["kd_hm"] + w.reg * h["kd_reg"] for h in summary["history"]]
    assert kd[-1] < 0.5 * kd[0], [round(v, 4) for v in kd]
    assert summary["history"][-1]["loss"] == pytest.approx(kd[-1], rel=1e-4)


def test_a_teacher_must_be_given_as_config_and_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CONFIG:CHECKPOINT"):
        train(_opts(tmp_path, teacher="teacher.pt"), train_source=frames(4))


def test_resuming_with_another_teacher_is_an_error(tmp_path: Path) -> None:
    teacher = _teacher_checkpoint(tmp_path / "teacher.pt")
    train(_opts(tmp_path / "run", epochs=2, max_steps=1), train_source=frames(4))
    with pytest.raises(ValueError, match="use the same --teacher"):
        train(_opts(tmp_path / "run", epochs=2, resume=True, teacher=f"{SMALL}:{teacher}"), train_source=frames(4))
