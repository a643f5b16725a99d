"""Scan context (``backbone.scan_context``): a per-scan scale and shift of the pillar features."""

from pathlib import Path

import pytest
import torch
import yaml

from fastpillars_ros.config import config_from_dict
from fastpillars_ros.model import build_model, check_onnx, export_onnx, load_checkpoint, save_checkpoint
from fastpillars_ros.model.scan_context import ScanContext
from fastpillars_ros.model.testing import randomize_

ROOT = Path(__file__).resolve().parents[1]


def _tiny(scan_context: bool):
    data = yaml.safe_load((ROOT / "config" / "models" / "tiny.yaml").read_text())
    data["backbone"]["scan_context"] = scan_context
    return config_from_dict(data)


def _canvas(seed: int, channels: int = 32, height: int = 24, width: int = 20, occupied: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(1, 1, height, width, generator=g) < occupied
    return torch.randn(1, channels, height, width, generator=g) * mask


def _trained(module: ScanContext, seed: int = 0) -> ScanContext:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def test_a_new_scan_context_leaves_weights_trained_without_it_unchanged():
    plain = randomize_(build_model(_tiny(False)), seed=1).eval()
    with_context = build_model(_tiny(True)).eval()
    missing, unexpected = with_context.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("backbone.scan_context.") for k in missing)
    canvas = _canvas(0, height=64, width=64)
    with torch.no_grad():
        a, b = plain(canvas)[0], with_context(canvas)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_empty_pillars_stay_empty():
    canvas = _canvas(1)
    out = _trained(ScanContext(32))(canvas)
    empty = canvas.abs().sum(1) == 0
    assert empty.any() and (out.abs().sum(1)[empty] == 0).all()
    assert not torch.allclose(out[:, :, ~empty[0]], canvas[:, :, ~empty[0]])


def test_a_pillar_is_rescaled_by_what_the_rest_of_the_scan_holds():
    sc = _trained(ScanContext(32))
    a = _canvas(2)
    b = a.clone()
    rows, cols = torch.nonzero(a[0].abs().sum(0) > 0, as_tuple=True)
    b[0, :, rows[-1], cols[-1]] *= 5.0   # another scan: one far pillar differs
    r, c = rows[0], cols[0]
    assert torch.equal(a[0, :, r, c], b[0, :, r, c])
    assert not torch.allclose(sc(a)[0, :, r, c], sc(b)[0, :, r, c])


def test_scan_context_in_a_batch_sees_only_its_own_scan():
    sc = _trained(ScanContext(32))
    a, b = _canvas(3), _canvas(4)
    both = sc(torch.cat([a, b]))
    assert torch.allclose(both[:1], sc(a), atol=1e-6) and torch.allclose(both[1:], sc(b), atol=1e-6)


@pytest.mark.parametrize("fusion", ["train", "full"])
def test_scan_context_exports_to_onnx_matching_torch(tmp_path, fusion):
    model = randomize_(build_model(_tiny(True)), seed=4).eval()
    _trained(model.backbone.scan_context, seed=5)
    if fusion == "full":
        model.fuse("full")
    path = export_onnx(model, tmp_path / "sc.onnx", canvas_hw=(64, 48))
    assert check_onnx(model, path) <= 1e-4


def test_weights_without_scan_context_load_into_a_model_with_it_only_when_asked(tmp_path):
    plain = randomize_(build_model(_tiny(False)), seed=6)
    path = tmp_path / "plain.pt"
    save_checkpoint(plain, path)
    with_context = build_model(_tiny(True))
    with pytest.raises(ValueError, match="scan_context"):
        load_checkpoint(with_context, path)                      # strict: a missing layer is an error ...
    load_checkpoint(with_context, path, fresh=with_context.identity_layers)   # ... unless it is new on purpose
    canvas = _canvas(7, height=64, width=64)
    with torch.no_grad():
        a, b = plain.eval()(canvas)[0], with_context.eval()(canvas)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert build_model(_tiny(False)).identity_layers == ()
