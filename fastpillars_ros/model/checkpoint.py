"""Checkpoint reading/writing with strict, explained key checks.

Only ``torch.load(..., weights_only=True)`` is used: no arbitrary Python object is ever unpickled.
Accepted containers: det3d (``{"meta": ..., "state_dict": ...[, "optimizer": ...]}``), ours
(``{"state_dict": ..., "config": {...}}``) and a bare state_dict; keys may carry a ``module.`` prefix
(DataParallel). Both the training (multi-branch) form and fused forms load into any model form that
is at least as fused (see :data:`FUSION_LEVELS`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .fastpillars import FUSION_LEVELS, FastPillars


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a checkpoint file -> (state_dict with any ``module.`` prefix removed, saved config or None).

    Raises:
        ValueError: the file does not exist, is not a PyTorch checkpoint, holds Python objects that
            ``weights_only`` loading refuses, or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            first = str(exc).strip().splitlines()[-1][:300]
            raise ValueError(
                f"checkpoint {path} contains Python objects besides tensors (e.g. in its 'meta' or 'optimizer' "
                f"entry) that safe loading (torch.load weights_only=True) refuses: {first}. Re-save just the "
                "weights once, in a trusted environment: torch.save({'state_dict': torch.load(p, weights_only="
                "False)['state_dict']}, 'clean.pth')") from exc
        raise ValueError(f"{path} is not a PyTorch checkpoint ({exc})") from exc
    except Exception as exc:  # zip/pickle framing errors surface as many exception types
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.load failed: {type(exc).__name__}: {exc})"
                         ) from exc
    config = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        if isinstance(obj.get("config"), dict):
            config = obj["config"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        state = obj
    else:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} holds no model weights: expected a dict with a 'state_dict' entry or a "
                         f"dict of tensors, got {keys}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state_dict entries are not tensors: {bad[:10]}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state), config


def fusion_level_of(state: dict[str, Tensor]) -> str:
    """Which form a state_dict is in: "train", "repvgg" (RepVGG fused only) or "full"."""
    if not any(".rbr_reparam." in k for k in state):
        return "train"
    bn_left = any(k.startswith(("neck.", "bbox_head.")) and k.endswith(".running_mean") for k in state)
    return "repvgg" if bn_left else "full"


def check_state_dict(model: torch.nn.Module, state: dict[str, Tensor], strict: bool = True,
                     source: str = "checkpoint", config: dict[str, Any] | None = None) -> None:
    """Raise ONE ValueError listing missing, unexpected and shape-mismatched keys (if any).

    With ``strict=False`` missing and unexpected keys are tolerated; shape mismatches never are.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if not (mismatched or (strict and (missing or unexpected))):
        return

    def block(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:40])
        more = f"\n    ... and {len(items) - 40} more" if len(items) > 40 else ""
        return f"  {title} ({len(items)}):\n    {shown}{more}" if items else f"  {title}: none"

    hints = []
    mape_key = "backbone.pillar_pooling1.shared_mlps.0.weight"
    if mape_key in state and mape_key in own and state[mape_key].shape != own[mape_key].shape:
        hints.append(f"MAPE input width differs ({state[mape_key].shape[1]} vs {own[mape_key].shape[1]}): the "
                     "config's point_features (+3 pillar offsets) must match the checkpoint")
    if config and config.get("name"):
        cfg_name = getattr(getattr(model, "config", None), "name", "?")
        hints.append(f"checkpoint was saved for config {config['name']!r}, model config is {cfg_name!r}")
    msg = "\n".join([
        f"{source} does not match the model ({len(state)} checkpoint entries, {len(own)} model entries):",
        block("missing keys", missing), block("unexpected keys", unexpected),
        block("shape mismatches", mismatched), *[f"  hint: {h}" for h in hints]])
    raise ValueError(msg)


@torch.no_grad()
def load_checkpoint(model: FastPillars, path: str | Path, strict: bool = True) -> FastPillars:
    """Load weights into ``model`` (in place) and return it.

    If the checkpoint is more fused than the model, the model is fused to the checkpoint's level
    first; if it is less fused, it is loaded into a fresh copy in the checkpoint's form which is
    then fused to the model's level and copied over.

    Raises:
        ValueError: unreadable file (see :func:`read_state_dict`) or key/shape mismatch (one message).
    """
    state, config = read_state_dict(path)
    level = fusion_level_of(state)
    src = f"checkpoint {path} ({level} form)"
    if FUSION_LEVELS.index(level) >= FUSION_LEVELS.index(model.fusion_level):
        if level != model.fusion_level:
            # Check against a fused copy first, so that a bad file leaves the model untouched.
            probe = FastPillars(model.config).fuse(level)
            check_state_dict(probe, state, strict, src, config)
            model.fuse(level)
        check_state_dict(model, state, strict, src, config)
        model.load_state_dict(state, strict=strict)
        return model
    tmp = FastPillars(model.config)
    if level != "train":
        tmp.fuse(level)
    check_state_dict(tmp, state, strict, src, config)
    tmp.load_state_dict(state, strict=strict)
    tmp.eval().fuse(model.fusion_level)
    model.load_state_dict(tmp.state_dict(), strict=True)
    return model


def save_checkpoint(model: FastPillars, path: str | Path, licence: str | None = None,
                    score_thresholds: dict[str, float] | None = None) -> None:
    """Write ``{"state_dict", "config", "fusion_level"[, "licence"][, "score_thresholds"]}`` (plain types only:
    safe-loadable).

    ``licence``: the terms the weights are under (they inherit those of their training data), shown by the
    node's ready line. ``score_thresholds``: the default published score per class, calibrated for these weights
    (``fastpillars-ros calibrate``).
    """
    obj: dict[str, Any] = {"state_dict": model.state_dict(), "config": model.config.to_dict(),
                           "fusion_level": model.fusion_level}
    if licence:
        obj["licence"] = str(licence)
    if score_thresholds:
        obj["score_thresholds"] = {str(k): float(v) for k, v in score_thresholds.items()}
    torch.save(obj, Path(path))


@dataclass(frozen=True)
class CheckpointMeta:
    """What one of our checkpoints says about its weights besides the tensors.

    ``score_thresholds``: default published score per class, calibrated on the INT8 dense part (the CPU default
    where onnxruntime runs it); ``float_score_thresholds``: the same calibration with the fp32 dense part, also
    used by bf16 and fp16 when they have no set of their own; ``precision_score_thresholds``: sets calibrated at
    bf16 or fp16 (``{"bf16": {"car": ...}}``). INT8 moves scores by up to a few hundredths and bf16 by a few
    thousandths, either enough to move a box across a calibrated threshold; a set is empty when not calibrated.
    ``auto_int8``: whether precision "auto" may run these weights in INT8 (False where their INT8 accuracy failed
    the rule they were shipped by; INT8 then runs only when asked for by name).
    """

    licence: str | None = None
    score_thresholds: dict[str, float] = field(default_factory=dict)
    float_score_thresholds: dict[str, float] = field(default_factory=dict)
    precision_score_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    auto_int8: bool = True

    def thresholds_for(self, precision: str) -> dict[str, float]:
        """The calibrated thresholds for a dense part running at ``precision`` ("int8", "fp32", "bf16", "fp16"):
        the set calibrated at that arithmetic where there is one, else the nearest other (bf16/fp16: fp32's)."""
        if precision == "int8":
            return self.score_thresholds or self.float_score_thresholds
        return (self.precision_score_thresholds.get(precision) or self.float_score_thresholds
                or self.score_thresholds)


def _class_values(raw: Any) -> dict[str, float]:
    return ({str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float))}
            if isinstance(raw, dict) else {})


def checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """What a checkpoint says besides its tensors (:class:`CheckpointMeta`; each entry empty or its default when
    absent)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        return CheckpointMeta()
    licence = obj.get("licence") if isinstance(obj.get("licence"), str) else None
    by_precision = obj.get("precision_score_thresholds")
    by_precision = ({str(k): _class_values(v) for k, v in by_precision.items()}
                    if isinstance(by_precision, dict) else {})
    return CheckpointMeta(licence, _class_values(obj.get("score_thresholds")),
                          _class_values(obj.get("float_score_thresholds")),
                          {k: v for k, v in by_precision.items() if v}, obj.get("auto_int8") is not False)


def update_checkpoint_meta(path: str | Path, *, licence: str | None = None,
                           score_thresholds: dict[str, float] | None = None,
                           float_score_thresholds: dict[str, float] | None = None,
                           precision_score_thresholds: dict[str, dict[str, float]] | None = None,
                           auto_int8: bool | None = None) -> None:
    """Rewrite a checkpoint with new ``licence`` / ``score_thresholds`` / ``float_score_thresholds`` /
    ``auto_int8`` entries and ``precision_score_thresholds`` sets (each precision given replaces its set, the
    others stay; atomically; weights unchanged)."""
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ValueError(f"{path} is not one of our checkpoints (no 'state_dict' entry)")
    if licence is not None:
        obj["licence"] = str(licence)
    for key, values in (("score_thresholds", score_thresholds), ("float_score_thresholds", float_score_thresholds)):
        if values is not None:
            obj[key] = {str(k): float(v) for k, v in values.items()}
    if precision_score_thresholds:
        sets = obj.get("precision_score_thresholds")
        sets = dict(sets) if isinstance(sets, dict) else {}
        sets.update({str(p): {str(k): float(v) for k, v in values.items()}
                     for p, values in precision_score_thresholds.items()})
        obj["precision_score_thresholds"] = sets
    if auto_int8 is not None:
        obj["auto_int8"] = bool(auto_int8)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
