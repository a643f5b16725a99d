"""CUDA graphs for the static part of a frame: the capture/replay bookkeeping of GraphRunner, on the CPU
with a stub backend, and (gpu-marked) the real graphs against eager execution."""

from __future__ import annotations

import logging

import pytest
import torch

from fastpillars_ros.runtime.cuda_graphs import GraphRunner


class StubGraphs:
    """Stands in for torch.cuda.CUDAGraph: a 'graph' re-runs the function on the captured input tensors and
    writes into the captured output tensor, as a replay does. Records what it was asked to do."""

    def __init__(self, fail_for: set[tuple[int, ...]] | None = None) -> None:
        self.fail_for = fail_for or set()
        self.captured: list[tuple[int, ...]] = []
        self.replays = 0

    def capture(self, fn, static_inputs):
        shape = tuple(static_inputs[0].shape)
        if shape in self.fail_for:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(shape)
        out = torch.full_like(static_inputs[0], float("nan"))  # a capture computes nothing
        return (fn, static_inputs, out), out

    def replay(self, graph):
        fn, static_inputs, out = graph
        self.replays += 1
        out.copy_(fn(*static_inputs))


def _runner(stub: StubGraphs, max_graphs: int = 4) -> GraphRunner:
    return GraphRunner(lambda x: 2 * x + 1, backend=stub, max_graphs=max_graphs)


def test_first_call_captures_and_later_calls_of_the_same_shape_replay_with_the_new_values():
    stub = StubGraphs()
    run = _runner(stub)
    first = run(torch.ones(3))
    assert torch.equal(first, torch.full((3,), 3.0))
    second = run(torch.arange(3.0))
    assert torch.equal(second, torch.tensor([1.0, 3.0, 5.0]))
    assert stub.captured == [(3,)] and stub.replays == 2 and run.captures == 1
    assert second is first  # the graph's own output tensor: consumed before the next call


def test_a_new_shape_is_captured_once_and_earlier_shapes_keep_their_graph():
    stub = StubGraphs()
    run = _runner(stub)
    run(torch.ones(3))
    assert torch.equal(run(torch.ones(2, 2)), torch.full((2, 2), 3.0))
    run(torch.zeros(3))
    run(torch.zeros(2, 2))
    assert stub.captured == [(3,), (2, 2)]


def test_the_input_is_copied_so_changing_it_after_the_call_does_not_reach_the_graph():
    stub = StubGraphs()
    run = _runner(stub)
    x = torch.ones(3)
    run(x)
    x.fill_(100.0)
    assert torch.equal(run(torch.zeros(3)), torch.ones(3))


def test_least_recently_used_graph_is_dropped_beyond_max_graphs():
    stub = StubGraphs()
    run = _runner(stub, max_graphs=2)
    for n in (1, 2, 1, 3, 1, 2):  # 2 is least recently used when 3 arrives
        run(torch.ones(n))
    assert stub.captured == [(1,), (2,), (3,), (2,)]


def test_failed_capture_falls_back_to_eager_for_that_shape_with_one_warning(caplog):
    stub = StubGraphs(fail_for={(4,)})
    run = _runner(stub)
    with caplog.at_level(logging.WARNING, logger="fastpillars_ros.runtime.cuda_graphs"):
        assert torch.equal(run(torch.ones(4)), torch.full((4,), 3.0))
        assert torch.equal(run(torch.zeros(4)), torch.ones(4))
    assert len([r for r in caplog.records if "capture failed" in r.message]) == 1
    assert stub.replays == 0
    run(torch.ones(3))  # other shapes still use graphs
    assert stub.captured == [(3,)] and stub.replays == 1


@pytest.mark.gpu
@pytest.mark.parametrize(("config", "precision"), [("tiny360", "fp32"), ("nuscenes_official", "fp16")])
def test_graph_replay_gives_the_eager_detections(config, precision):
    from fastpillars_ros.detector import Detector

    torch.manual_seed(0)
    graphs = Detector(config, device="cuda", backend="torch", precision=precision, warmup=False)
    eager = Detector(config, device="cuda", backend="torch", precision=precision, warmup=False,
                     cuda_graphs=False)
    eager.model.load_state_dict(graphs.model.state_dict())
    eager._dense = eager._make_dense("torch", True, None)[0]
    for det in (graphs, eager):
        det.set_score_threshold(0.0)  # random weights: publish whatever survives NMS
    points = graphs.synthetic_cloud(60_000)
    for _ in range(3):  # capture, then replays
        a, b = graphs.detect(points), eager.detect(points)
        assert len(a) == len(b) > 0
        torch.testing.assert_close(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes), atol=1e-4, rtol=0)
    assert graphs._graphs.captures == 1


@pytest.mark.gpu
def test_the_static_part_and_device_nms_do_not_synchronise_with_the_host():
    from fastpillars_ros.detector import Detector
    from fastpillars_ros.ops.nms_cuda import nms_groups_cuda

    det = Detector("nuscenes_official", device="cuda", backend="torch", precision="fp16")
    canvas = torch.randn((1, *det.config.canvas_shape), device="cuda")
    det._graphs(canvas)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dense = det._graphs(canvas)
        keep = nms_groups_cuda(dense.boxes[0], dense.valid[0], 0.2, pre_max=1000, post_max=83)
        keep &= dense.scores[0] >= det._thresholds_on(dense.scores.device)[dense.labels[0]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert keep.shape == dense.valid.shape[1:]
