"""Slim a trained FastPillars model to narrower layers, keeping each layer's most active channels.

A narrower network (fewer channels per layer, the same layers) is cheaper on the CPU in proportion to its
multiply-adds, but trained from scratch on little real data it learns far less than the wide model did
(issue #17). Slimming copies the wide model's weights into the narrow one instead: every *channel space*
(the channels one layer writes and the next reads) keeps the channels that carry the most signal on
example scans, and every weight tensor is cut to the kept rows (outputs) and columns (inputs). The narrow
model then starts fine-tuning from what the wide one knew.

Channel spaces follow the data flow of :class:`~fastpillars_ros.model.fastpillars.FastPillars`: the MAPE
output (also the canvas), one per backbone stage (a RepVGG block with an identity branch adds its input to
its output channel by channel, so its input and output are one space), one per neck and head convolution,
and the neck's concatenation ``[deblock_4, deblock_5]`` made of its two parts. The head's output layers keep
all their channels (boxes and classes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastpillars_ros.model.crvnet import STAGE_NAMES
from fastpillars_ros.model.fastpillars import FastPillars

__all__ = ["ChannelPlan", "channel_importance", "channel_plan", "keep_most_important", "slim_state_dict"]

CONCAT = "neck.concat"  # the neck's [deblock_4, deblock_5] concatenation


@dataclass(frozen=True)
class Layer:
    """One module with weights: the space its outputs live in and the space its inputs come from (None: the
    fixed point features). ``transposed``: a ConvTranspose2d (weight ``[C_in, C_out, k, k]``)."""

    name: str
    out_space: str
    in_space: str | None
    transposed: bool = False


@dataclass
class ChannelPlan:
    """The layers of a model with their channel spaces.

    Attributes:
        layers: every module with parameters or BN statistics, in forward order.
        widths: channels of each space (after merging spaces that identity branches tie together).
        fixed: spaces whose channels are all kept (the head's outputs).
        activations: module name -> space, for the modules whose outputs measure a space's channels.
        concat_parts: the two spaces the neck's concatenation is made of, in order.
    """

    layers: list[Layer]
    widths: dict[str, int]
    fixed: set[str]
    activations: dict[str, str]
    concat_parts: tuple[str, str]


def channel_plan(model: FastPillars) -> ChannelPlan:
    """The channel spaces of ``model`` (training form: RepVGG branches not fused)."""
    layers: list[Layer] = []
    alias: dict[str, str] = {}
    activations: dict[str, str] = {}
    fixed: set[str] = set()

    def root(space: str) -> str:
        while space in alias:
            space = alias[space]
        return space

    enc = "backbone.pillar_pooling1"
    layers += [Layer(f"{enc}.shared_mlps.0", enc, None), Layer(f"{enc}.shared_mlps.1", enc, enc),
               Layer(f"{enc}.score_fn.0", enc, enc)]
    activations[enc] = enc
    previous = enc
    stage_spaces = []
    for stage in STAGE_NAMES:
        space = f"backbone.{stage}"
        blocks = [f"backbone.{stage}_first_block.0"]
        blocks += [f"backbone.{stage}.{i}.conv{j}" for i in range(len(getattr(model.backbone, stage))) for j in (1, 2)]
        for k, block_name in enumerate(blocks):
            block = model.get_submodule(block_name)
            if block.fused:
                raise ValueError("slimming needs the training form of the model (RepVGG branches not fused)")
            source = previous if k == 0 else space
            if block.rbr_identity is not None and k == 0:
                alias[space] = source  # out[c] += BN(in[c]): the same channels on both sides
            for branch in ("rbr_dense", "rbr_1x1"):
                layers += [Layer(f"{block_name}.{branch}.conv", space, source),
                           Layer(f"{block_name}.{branch}.bn", space, space)]
            if block.rbr_identity is not None:
                layers.append(Layer(f"{block_name}.rbr_identity", space, space))
            activations[block_name] = space
        stage_spaces.append(space)
        previous = space

    def chain(seq_name: str, source: str, fixed_last: bool = False) -> str:
        current = source
        for index, module in enumerate(model.get_submodule(seq_name)):
            name = f"{seq_name}.{index}"
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                layers.append(Layer(name, name, current, transposed=isinstance(module, nn.ConvTranspose2d)))
                current = name
            elif isinstance(module, nn.BatchNorm2d):
                layers.append(Layer(name, current, current))
                activations[name] = current
        if fixed_last:
            fixed.add(current)
        return current

    up5 = chain("neck.deblock_5", chain("neck.block_5", stage_spaces[3]))
    up4 = chain("neck.deblock_4", stage_spaces[2])
    head_in = chain("bbox_head.shared_conv", chain("neck.block_4", CONCAT))
    for t, task in enumerate(model.bbox_head.tasks):
        for branch in task.names:
            chain(f"bbox_head.tasks.{t}.{branch}", head_in, fixed_last=True)

    layers = [Layer(x.name, root(x.out_space), None if x.in_space is None else root(x.in_space), x.transposed)
              for x in layers]
    activations = {name: root(space) for name, space in activations.items()}
    widths: dict[str, int] = {}
    for x in layers:
        module = model.get_submodule(x.name)
        if isinstance(module, nn.ConvTranspose2d):
            widths[x.out_space] = module.out_channels
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            widths[x.out_space] = module.weight.shape[0]
    widths[CONCAT] = widths[up4] + widths[up5]
    return ChannelPlan(layers, widths, {root(s) for s in fixed}, activations, (up4, up5))


@torch.no_grad()
def channel_importance(model: FastPillars, plan: ChannelPlan,
                       run: Callable[[FastPillars], None]) -> dict[str, Tensor]:
    """Mean absolute activation of every channel, per space, while ``run(model)`` feeds it example scans.

    Each module's per-channel means are divided by their average over the channels before they are summed
    into their space, so that every block measuring a space counts the same. Returns space -> ``[C]``.
    """
    sums: dict[str, Tensor] = {}

    def hook(space: str) -> Callable[[nn.Module, object, Tensor], None]:
        def record(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            dims = [d for d in range(output.dim()) if d != 1] if output.dim() > 2 else [0]
            mean = output.abs().mean(dim=dims).double()
            mean = mean / mean.mean().clamp_min(1e-12)
            sums[space] = sums.get(space, 0) + mean
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(space))
               for name, space in plan.activations.items()]
    was_training = model.training
    model.eval()
    try:
        run(model)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missing = [s for s in plan.widths if s not in sums and s != CONCAT and s not in plan.fixed]
    if missing:
        raise RuntimeError(f"no activations recorded for {missing}: run() must call the model's encode and "
                           "forward_dense")
    return sums


def keep_most_important(plan: ChannelPlan, importance: dict[str, Tensor], narrow: ChannelPlan
                        ) -> dict[str, Tensor]:
    """The kept channels of every space (ascending indices into the wide model's channels): the
    ``narrow.widths[space]`` most important ones; all of a fixed space; the concatenation's from its parts."""
    if set(plan.widths) != set(narrow.widths):
        raise ValueError("the narrow model must have the same layers as the wide one (only widths may differ)")
    keep: dict[str, Tensor] = {}
    for space, width in plan.widths.items():
        target = narrow.widths[space]
        if target > width:
            raise ValueError(f"{space}: cannot widen {width} -> {target} channels")
        if space == CONCAT:
            continue
        if space in plan.fixed:
            if target != width:
                raise ValueError(f"{space} is a head output ({width} channels): its width cannot change")
            keep[space] = torch.arange(width)
        else:
            keep[space] = torch.sort(torch.topk(importance[space], target).indices).values
    up4, up5 = plan.concat_parts
    keep[CONCAT] = torch.cat([keep[up4], plan.widths[up4] + keep[up5]])
    return keep


def slim_state_dict(wide: FastPillars, plan: ChannelPlan, keep: dict[str, Tensor]) -> dict[str, Tensor]:
    """The wide model's state dict cut to the kept channels: output rows of ``keep[out_space]``, input
    columns of ``keep[in_space]`` (swapped for transposed convolutions); BN vectors by their space."""
    out: dict[str, Tensor] = {}
    for layer in plan.layers:
        module = wide.get_submodule(layer.name)
        rows = keep[layer.out_space]
        cols = None if layer.in_space is None else keep[layer.in_space]
        for key, value in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if value is None:
                continue
            name = f"{layer.name}.{key}"
            if value.dim() == 0:
                out[name] = value.clone()
            elif value.dim() == 1:
                out[name] = value[rows].clone()
            elif layer.transposed:
                out[name] = value[cols][:, rows].clone()
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                out[name] = (value[rows] if cols is None else value[rows][:, cols]).clone()
            else:
                raise ValueError(f"{name}: unexpected {tuple(value.shape)} tensor")
    missing = set(wide.state_dict()) - set(out)
    if missing:
        raise RuntimeError(f"slimming left weights without a channel plan: {sorted(missing)[:5]}")
    return out
