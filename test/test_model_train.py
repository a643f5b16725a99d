"""The training-form model trains: a batched forward/backward reaches every parameter."""

import torch

from fastpillars_ros.model import build_model
from fastpillars_ros.model.testing import random_pillars


def test_batched_backward_reaches_all_parameters():
    model = build_model("tiny").train()
    c, h, w = model.config.canvas_shape
    feats, ids, coords = random_pillars(300, 2000, model.config.num_decorated_features, h, w, seed=0)
    batch_index = (torch.arange(300) >= 150).long()  # pillars 0..149 in item 0, the rest in item 1
    canvas = model.encode(feats, ids, coords, batch_size=2, batch_index=batch_index)
    assert canvas.shape == (2, c, h, w)
    outs = model.forward_dense(canvas)
    loss = sum(v.square().mean() for task in outs for v in task.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
