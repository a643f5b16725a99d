"""Decoding head maps to boxes: encode known boxes with the inverse mapping, decode, compare."""

import math

import pytest
import torch

from fastpillars_ros.config import load_model_config
from fastpillars_ros.model.head import decode_head_outputs, det3d_angle, wrap_angle

NEG = -20.0  # logit whose sigmoid is ~2e-9: "no object"


def _empty_maps(cfg, batch=1):
    h, w = cfg.head_shape
    outs = []
    for task in cfg.tasks:
        d = {name: torch.zeros(batch, ch, h, w) for name, ch in cfg.heads}
        d["hm"] = torch.full((batch, len(task), h, w), NEG)
        outs.append(d)
    return outs


def _encode(cfg, outs, box, label, heat, iou=1.0, vel=(0.0, 0.0), b=0):
    """Inverse of the decoder (det3d target encoding): box = [x, y, z, length, width, height, yaw]."""
    x, y, z, length, width, height, yaw = box
    offsets = [0]
    for task in cfg.tasks:
        offsets.append(offsets[-1] + len(task))
    t = max(i for i in range(len(cfg.tasks)) if offsets[i] <= label)
    cell_x = cfg.pillar_size[0] * cfg.out_size_factor
    cell_y = cfg.pillar_size[1] * cfg.out_size_factor
    cx, cy = (x - cfg.pc_range[0]) / cell_x, (y - cfg.pc_range[1]) / cell_y
    j, i = math.floor(cx), math.floor(cy)
    r = -yaw - math.pi / 2  # det3d yaw
    maps = outs[t]
    maps["reg"][b, :, i, j] = torch.tensor([cx - j, cy - i])
    maps["height"][b, 0, i, j] = z
    maps["dim"][b, :, i, j] = torch.tensor([math.log(width), math.log(length), math.log(height)])  # w, l, h
    maps["rot"][b, :, i, j] = torch.tensor([math.sin(r), math.cos(r)])
    if "axis" in maps:
        maps["axis"][b, :, i, j] = torch.tensor([math.sin(2 * r), math.cos(2 * r)])
    if "vel" in maps:
        maps["vel"][b, :, i, j] = torch.tensor(vel)
    if "iou" in maps:
        maps["iou"][b, 0, i, j] = 2 * iou - 1
    maps["hm"][b, label - offsets[t], i, j] = math.log(heat / (1 - heat))  # logit


def _assert_boxes_close(got, expected):
    assert got.shape == expected.shape
    torch.testing.assert_close(got[:, :6], expected[:, :6], rtol=1e-5, atol=1e-4)
    yaw_err = wrap_angle(got[:, 6] - expected[:, 6]).abs()
    assert float(yaw_err.max()) < 1e-4
    assert ((got[:, 6] >= -math.pi) & (got[:, 6] < math.pi)).all()


def test_decode_recovers_boxes_labels_and_velocities_per_task():
    cfg = load_model_config("nuscenes_official")
    outs = _empty_maps(cfg)
    objs = [  # box, global label, heat, iou, vel
        ([10.3, -20.7, -1.2, 4.5, 1.9, 1.6, 0.3], 0, 0.9, 0.8, (3.0, -1.0)),
        ([-30.1, 5.05, 0.4, 10.0, 2.6, 3.5, math.pi - 0.01], 2, 0.6, 0.9, (0.0, 0.5)),
        ([-5.0, 40.2, -0.3, 12.0, 2.9, 3.8, -math.pi + 0.02], 3, 0.5, 0.5, (1.0, 1.0)),
        ([20.0, 20.0, -1.5, 0.5, 0.5, 1.0, 0.0], 5, 0.7, 0.7, (0.0, 0.0)),
        ([1.0, 1.0, -1.0, 0.8, 0.6, 1.7, 1.2], 8, 0.95, 0.99, (0.2, 0.1)),
        ([1.0, 3.1, -1.0, 0.4, 0.4, 1.0, -2.5], 9, 0.3, 0.6, (0.0, 0.0)),
        ([6.0, 1.0, -1.0, 0.8, 0.6, 1.7, 3.0], 8, 0.4, 0.36, (0.0, 0.0)),
    ]
    for box, label, heat, iou, vel in objs:
        _encode(cfg, outs, box, label, heat, iou, vel)
    (cand,) = decode_head_outputs(outs, cfg)
    assert len(cand) == len(objs)
    # Tasks in order; within a task sorted by rectified score sqrt(heat * iou).
    assert cand.task.tolist() == sorted(cand.task.tolist())
    order = sorted(range(len(objs)), key=lambda k: (objs[k][1] >= 8, objs[k][1] >= 6, objs[k][1] >= 5,
                                                    objs[k][1] >= 3, objs[k][1] >= 1,
                                                    -math.sqrt(objs[k][2] * objs[k][3])))
    expected = torch.tensor([objs[k][0] for k in order])
    _assert_boxes_close(cand.boxes, expected)
    assert cand.labels.tolist() == [objs[k][1] for k in order]
    assert cand.task.tolist() == [0, 1, 2, 3, 5, 5, 5]
    torch.testing.assert_close(cand.scores, torch.tensor([math.sqrt(objs[k][2] * objs[k][3]) for k in order]))
    torch.testing.assert_close(cand.velocities, torch.tensor([objs[k][4] for k in order]))
    ped = cand.for_task(5)
    assert ped.labels.tolist() == [8, 9, 8] and bool((ped.scores[:-1] >= ped.scores[1:]).all())


def test_decode_single_task_multi_class_and_batches():
    cfg = load_model_config("tiny")
    outs = _empty_maps(cfg, batch=2)
    _encode(cfg, outs, [12.0, 3.3, -0.8, 4.0, 1.7, 1.5, 0.5], 0, 0.8, b=0)
    _encode(cfg, outs, [30.0, -10.0, -0.9, 0.7, 0.6, 1.8, -3.1], 1, 0.7, b=0)
    _encode(cfg, outs, [40.0, 20.0, -1.0, 1.8, 0.6, 1.7, 2.0], 2, 0.6, b=1)
    first, second = decode_head_outputs(outs, cfg)
    assert first.velocities is None
    assert first.labels.tolist() == [0, 1] and second.labels.tolist() == [2]
    _assert_boxes_close(first.boxes, torch.tensor([[12.0, 3.3, -0.8, 4.0, 1.7, 1.5, 0.5],
                                                   [30.0, -10.0, -0.9, 0.7, 0.6, 1.8, -3.1]]))
    _assert_boxes_close(second.boxes, torch.tensor([[40.0, 20.0, -1.0, 1.8, 0.6, 1.7, 2.0]]))


def test_threshold_applies_to_raw_heat_before_rectification():
    cfg = load_model_config("tiny")
    outs = _empty_maps(cfg)
    _encode(cfg, outs, [10.0, 0.0, -1.0, 4.0, 1.7, 1.5, 0.0], 0, 0.15, iou=0.01)  # rectified 0.039 < 0.1
    _encode(cfg, outs, [20.0, 0.0, -1.0, 4.0, 1.7, 1.5, 0.0], 0, 0.09, iou=1.0)   # heat below threshold
    (cand,) = decode_head_outputs(outs, cfg)
    assert len(cand) == 1 and cand.scores[0] == pytest.approx(math.sqrt(0.15 * 0.01), rel=1e-5)
    (cand,) = decode_head_outputs(outs, cfg, score_threshold=0.05)
    assert len(cand) == 2


def test_post_center_range_drops_out_of_range_z_and_pre_max_truncates():
    cfg = load_model_config("tiny")
    outs = _empty_maps(cfg)
    _encode(cfg, outs, [10.0, 0.0, 50.0, 4.0, 1.7, 1.5, 0.0], 0, 0.9)  # z outside post_center_range
    h, w = cfg.head_shape
    outs[0]["hm"][0, 1] = torch.linspace(-1, 1, h * w).view(h, w)  # every cell above 0.1 (sigmoid(-1)=0.27)
    (cand,) = decode_head_outputs(outs, cfg)
    assert len(cand) == cfg.decode.pre_max
    assert bool((cand.scores[:-1] >= cand.scores[1:]).all())
    assert (cand.boxes[:, 2] < 10).all()


def test_axis_branch_sets_the_yaw_and_rot_only_picks_the_direction():
    r = torch.linspace(-math.pi, math.pi, 73)[:-1].double()
    axis_sin, axis_cos = 0.9 * torch.sin(2 * r), 0.9 * torch.cos(2 * r)
    # A weak, 80-degree-off direction reading still selects the right half turn, and the yaw is exact.
    hint = r + torch.where(torch.arange(len(r)) % 2 == 0, 1.4, -1.4).double()
    got = det3d_angle(0.05 * torch.sin(hint), 0.05 * torch.cos(hint), axis_sin, axis_cos)
    assert float(wrap_angle(got - r).abs().max()) < 1e-9
    # A reading from the back gives the same axis, turned by half a circle.
    back = det3d_angle(torch.sin(r + math.pi), torch.cos(r + math.pi), axis_sin, axis_cos)
    assert float(wrap_angle(back - r - math.pi).abs().max()) < 1e-9


def test_without_axis_branch_the_yaw_is_the_rot_reading():
    r = torch.tensor([0.3, -2.0, 3.0])
    torch.testing.assert_close(det3d_angle(torch.sin(r), torch.cos(r)), r)


def test_dense_decode_has_fixed_shapes_a_valid_prefix_and_compacts_to_the_candidates():
    from fastpillars_ros.model.head import decode_dense

    cfg = load_model_config("nuscenes_official")
    outs = _empty_maps(cfg)
    _encode(cfg, outs, [10.3, -20.7, -1.2, 4.5, 1.9, 1.6, 0.3], 0, 0.9, 0.8, (3.0, -1.0))
    _encode(cfg, outs, [-5.0, 40.2, -0.3, 12.0, 2.9, 3.8, 0.5], 3, 0.5, 0.5)
    _encode(cfg, outs, [-6.0, 40.2, -0.3, 12.0, 2.9, 3.8, 0.5], 4, 0.7, 0.7)  # same task (3, 4), higher score
    dense = decode_dense(outs, cfg)
    t, p = len(cfg.tasks), cfg.decode.pre_max
    assert dense.boxes.shape == (1, t, p, 7) and dense.velocities.shape == (1, t, p, 2)
    assert dense.scores.shape == dense.labels.shape == dense.valid.shape == (1, t, p)
    assert dense.valid.sum(-1).tolist() == [[1, 0, 2, 0, 0, 0]]
    assert dense.labels[0, 2, :2].tolist() == [4, 3]  # by score within the task, global class ids
    assert torch.isinf(dense.scores[~dense.valid]).all()
    (cand,) = dense.compact()
    (ref,) = decode_head_outputs(outs, cfg)
    assert cand.task.tolist() == [0, 2, 2] and torch.equal(cand.boxes, ref.boxes)
