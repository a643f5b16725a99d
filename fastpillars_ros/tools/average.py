"""``fastpillars-ros average``: the element-wise mean of several runs' weights (a "model soup").

Runs of one recipe that start from the same weights and differ only in their seed stay in one basin of the loss,
so their mean is a model of its own, usually as good as the better runs and less dependent on any one seed (Wortsman
et al., ICML 2022). The inputs must be the same network (same config, same layers, same fusion level); every
floating-point tensor is averaged, batch-norm running statistics included, and integer counters are taken from
the first input. The result carries the inputs' licence and no score thresholds: calibrate it before use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["add_arguments", "average_state_dicts", "run"]


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (same keys and shapes; floating tensors averaged in float64 and cast
    back, others from the first).

    Raises:
        ValueError: naming the first input (from ``names``) whose keys or shapes differ from the first's.
    """
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        if state.keys() != first.keys():
            missing = sorted(first.keys() - state.keys())[:5]
            extra = sorted(state.keys() - first.keys())[:5]
            raise ValueError(f"{name} has other layers than {names[0]} (missing {missing}, extra {extra}): "
                             "average runs of one network only")
        shapes = [k for k, v in first.items() if state[k].shape != v.shape]
        if shapes:
            raise ValueError(f"{name}: tensor shapes differ from {names[0]} at {shapes[:5]}: average runs of one "
                             "network only")
    out: dict[str, torch.Tensor] = {}
    for key, value in first.items():
        if value.is_floating_point():
            mean = torch.stack([s[key].double() for s in states]).mean(dim=0)
            out[key] = mean.to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one network (e.g. seeds of a run)")
    parser.add_argument("--out", required=True, help="output checkpoint (then `fastpillars-ros calibrate --write`)")


def run(args: argparse.Namespace) -> int:
    from fastpillars_ros.config import config_from_dict
    from fastpillars_ros.model import build_model, read_state_dict, save_checkpoint
    from fastpillars_ros.model.checkpoint import checkpoint_meta, fusion_level_of

    if len(args.checkpoints) < 2:
        print("average: give two or more checkpoints", file=sys.stderr)
        return 2
    try:
        read = [read_state_dict(p) for p in args.checkpoints]
        states = [state for state, _ in read]
        levels = {fusion_level_of(s) for s in states}
        if len(levels) > 1:
            raise ValueError(f"the checkpoints are fused to different levels {sorted(levels)}: average weights in "
                             "one form (the training form, as `train` writes them)")
        if any(config is None for _, config in read):
            raise ValueError("a checkpoint stores no model config: average checkpoints written by `train`")
        # Compared as parsed configs: a checkpoint written before a config section existed lacks its key.
        configs = [config_from_dict(config) for _, config in read]  # type: ignore[arg-type]
        if any(c.to_dict() != configs[0].to_dict() for c in configs[1:]):
            raise ValueError("the checkpoints store different model configs: average runs of one network only")
        licences = {checkpoint_meta(p).licence for p in args.checkpoints}
        if len(licences) > 1:
            raise ValueError(f"the checkpoints carry different licences {sorted(map(str, licences))}: the mean "
                             "inherits all of them; average weights trained on the same data")
        mean = average_state_dicts(states, args.checkpoints)
    except ValueError as exc:
        print(f"average: {exc}", file=sys.stderr)
        return 2
    model = build_model(configs[0])
    level = levels.pop()
    if level != "train":
        model.fuse(level)
    model.load_state_dict(mean)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    save_checkpoint(model, tmp, licence=licences.pop())
    tmp.replace(out)
    print(f"average of {len(states)} checkpoints written to {out} (no score thresholds: run "
          f"`fastpillars-ros calibrate --checkpoint {out} --data ... --write`)")
    return 0
