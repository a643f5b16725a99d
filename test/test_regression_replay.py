"""CI regression: the sample bag replayed through the node (its own process, loopback DDS) gives the golden
detections of the offline Detector path, and its AP against the bag's ground truth has not dropped.

The golden file (``test/data/golden_sample.json``) is produced by ``fastpillars-ros golden`` from the same bag
with the shipped checkpoint, so this also proves that the ROS path and the offline path agree. Both run the dense
part in onnxruntime fp32 (``GOLDEN_PARAMS``), whatever the machine's default: the default is OpenVINO bf16 where the
processor has native bf16, whose scores differ from fp32's by a few thousandths, and fp32 computes the same on every
processor. The AP floor is
the value recorded in MODEL_CARD.md (``sample-bag-ap`` comment) minus a small tolerance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fastpillars_ros.bags import SAMPLE_BAG
from fastpillars_ros.config import DEFAULT_MODEL
from fastpillars_ros.detector import default_checkpoint
from fastpillars_ros.model import checkpoint_meta
from fastpillars_ros.tools.demo import replay_through_node
from fastpillars_ros.tools.regression import compare, detections_from_bag, load_detections

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "test" / "data" / "golden_sample.json"
AP_TOLERANCE = 2.0
# Boxes published by the node have scores >= the model's calibrated default thresholds; comparing from 0.05 above
# the highest of them leaves a margin so that score noise between the two processes cannot turn a borderline box
# into a missing or an extra one.
SCORE_MARGIN = 0.05
#: The back end and precision of the golden file (`fastpillars-ros golden ... -p backend:=onnxruntime -p
#: precision:=fp32`).
GOLDEN_PRECISION = "fp32"
GOLDEN_PARAMS = ("backend:=onnxruntime", f"precision:={GOLDEN_PRECISION}")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    assert default_checkpoint(DEFAULT_MODEL) is not None, f"the shipped {DEFAULT_MODEL} checkpoint is missing"
    out = tmp_path_factory.mktemp("regression")
    stats = replay_through_node(SAMPLE_BAG, out / "answers.mcap", out / "node.log", start_timeout_s=120.0,
                                params=GOLDEN_PARAMS)
    assert stats.answered == stats.sent == 30, (out / "node.log").read_text()[-3000:]
    return stats, detections_from_bag(out / "answers.mcap", "/detections")


@pytest.mark.ros
@pytest.mark.slow
def test_replayed_detections_match_the_golden_detections(replayed):
    _, received = replayed
    thresholds = checkpoint_meta(default_checkpoint(DEFAULT_MODEL)).thresholds_for(GOLDEN_PRECISION)
    compare_from = max(thresholds.values(), default=0.1) + SCORE_MARGIN
    report = compare(received, load_detections(GOLDEN), iou_threshold=0.9, score_threshold=compare_from)
    assert report.golden_boxes > 0
    assert report.ok, report.format()


@pytest.mark.ros
@pytest.mark.slow
def test_replayed_ap_has_not_dropped_below_the_model_card(replayed):
    stats, _ = replayed
    recorded = json.loads(re.search(r"<!-- sample-bag-ap: (\{.*?\}) -->", (ROOT / "MODEL_CARD.md").read_text())[1])
    for key, floor in recorded.items():
        cls, metric, iou = key.split("/")
        ap = stats.evaluation.ap(cls, metric, float(iou))
        assert ap >= floor - AP_TOLERANCE, f"{key}: AP {ap:.2f} < recorded {floor:.2f} - {AP_TOLERANCE}"
