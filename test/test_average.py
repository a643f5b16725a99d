"""``fastpillars-ros average``: the element-wise mean of several runs' weights of one network."""

from __future__ import annotations

from pathlib import Path

import torch

from fastpillars_ros.cli import main as cli_main
from fastpillars_ros.config import load_model_config
from fastpillars_ros.model import build_model, checkpoint_meta, read_state_dict, save_checkpoint

SMALL = Path(__file__).parent / "data" / "train_small.yaml"
LICENCE = "CC BY-NC-SA 3.0 (non-commercial): test"


def _run(path: Path, seed: int, licence: str = LICENCE) -> Path:
    torch.manual_seed(seed)
    model = build_model(load_model_config(SMALL))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.num_batches_tracked.fill_(seed)
    save_checkpoint(model, path, licence=licence, score_thresholds={"car": 0.4})
    return path


def test_the_average_is_the_element_wise_mean_of_the_runs_with_their_licence_and_no_thresholds(tmp_path, capsys):
    runs = [_run(tmp_path / f"seed{s}.pt", s) for s in (1, 2, 3)]
    out = tmp_path / "mean.pt"
    assert cli_main(["average", *map(str, runs), "--out", str(out)]) == 0
    assert "calibrate" in capsys.readouterr().out
    states = [read_state_dict(p)[0] for p in runs]
    mean, _ = read_state_dict(out)
    assert mean.keys() == states[0].keys()
    for key, value in mean.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(value, states[0][key]), key  # counters from the first run
    assert any(not torch.equal(mean[k], states[0][k]) for k in mean if "running_mean" in k)
    meta = checkpoint_meta(out)
    assert meta.licence == LICENCE and meta.score_thresholds == {}


def test_the_average_loads_into_the_network_it_came_from(tmp_path):
    from fastpillars_ros.model import load_checkpoint

    runs = [_run(tmp_path / f"seed{s}.pt", s) for s in (1, 2)]
    out = tmp_path / "mean.pt"
    assert cli_main(["average", *map(str, runs), "--out", str(out)]) == 0
    load_checkpoint(build_model(load_model_config(SMALL)), out)


def test_runs_of_other_networks_are_refused_naming_the_file(tmp_path, capsys):
    a = _run(tmp_path / "a.pt", 1)
    other = build_model(load_model_config("tiny"))
    b = tmp_path / "tiny.pt"
    save_checkpoint(other, b, licence=LICENCE)
    assert cli_main(["average", str(a), str(b), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "average: " in err and "one network" in err
    assert not (tmp_path / "m.pt").exists()


def test_runs_under_other_licences_are_refused(tmp_path, capsys):
    a = _run(tmp_path / "a.pt", 1)
    b = _run(tmp_path / "b.pt", 2, licence="Apache-2.0")
    assert cli_main(["average", str(a), str(b), "--out", str(tmp_path / "m.pt")]) == 2
    assert "licences" in capsys.readouterr().err


def test_one_checkpoint_is_refused(tmp_path, capsys):
    a = _run(tmp_path / "a.pt", 1)
    assert cli_main(["average", str(a), "--out", str(tmp_path / "m.pt")]) == 2
    assert "two or more" in capsys.readouterr().err


def test_a_checkpoint_written_before_a_config_section_existed_averages_with_newer_ones(tmp_path):
    old = _run(tmp_path / "old.pt", 1)
    obj = torch.load(old, weights_only=True)
    del obj["config"]["terrain"]  # the section came later; its absence means "off", as in the newer file
    torch.save(obj, old)
    new = _run(tmp_path / "new.pt", 2)
    out = tmp_path / "mean.pt"
    assert cli_main(["average", str(old), str(new), "--out", str(out)]) == 0
    assert "terrain" in torch.load(out, weights_only=True)["config"]
