"""MAPE's compiled CPU kernel (ops/mape_cpu.py) against MAPE's pure-torch path, its build cache and its fallback."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from fastpillars_ros.model.mape import MAPE
from fastpillars_ros.model.repvgg import LEAKY_SLOPE
from fastpillars_ros.model.testing import random_pillars, randomize_
from fastpillars_ros.ops import mape_cpu


@pytest.fixture
def fresh_kernel():
    """:func:`mape_cpu.kernel` looked up again in the test (and again after it, with the test's environment gone)."""
    mape_cpu.kernel.cache_clear()
    yield mape_cpu.kernel
    mape_cpu.kernel.cache_clear()


def _kernel_or_skip():
    lib = mape_cpu.kernel()
    if lib is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    return lib


def _encode(lib, mape, feats, ids, num_pillars, threads=1):
    score = mape.score_fn[0]
    return mape_cpu.mape_encode(lib, feats, ids, num_pillars, mape._folded_linear(), (score.weight, score.bias),
                                LEAKY_SLOPE, threads)


@pytest.mark.parametrize("channels", [32, 16, 24])  # channel counts with their own loop, and the general loop
@torch.no_grad()
def test_kernel_gives_the_pure_torch_result(channels):
    lib = _kernel_or_skip()
    mape = randomize_(MAPE(8, channels), seed=11).eval()
    feats, ids, _ = random_pillars(80, 900, 8, 20, 20, seed=7)
    ids = torch.where(ids == 5, 6, ids)  # pillar 5 without points
    got = _encode(lib, mape, feats, ids, 80)
    assert not got[5].any()
    torch.testing.assert_close(got, mape._forward_torch(feats, ids, 80), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [2, 3])
@torch.no_grad()
def test_kernel_threads_share_the_pillars_without_changing_the_result(threads):
    lib = _kernel_or_skip()
    mape = randomize_(MAPE(7, 32), seed=14).eval()
    # above the kernel's 8,192-point threshold for threads; one crowded pillar (a wall next to the sensor)
    feats, ids, _ = random_pillars(500, 20_000, 7, 30, 30, seed=10)
    ids[:3000] = 17
    one = _encode(lib, mape, feats, ids, 500, threads=1)
    torch.testing.assert_close(_encode(lib, mape, feats, ids, 500, threads=threads), one, rtol=0, atol=0)
    torch.testing.assert_close(one, mape._forward_torch(feats, ids, 500), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_kernel_keeps_the_softmax_stable_for_large_logits():
    lib = _kernel_or_skip()
    mape = randomize_(MAPE(8, 32), seed=12).eval()
    mape.score_fn[0].weight.mul_(1e3)  # logits in the thousands: exp without the per-pillar max overflows
    feats, ids, _ = random_pillars(30, 300, 8, 10, 10, seed=8)
    got = _encode(lib, mape, feats, ids, 30)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, mape._forward_torch(feats, ids, 30), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_kernel_gives_zero_pillars_for_a_cloud_without_points():
    lib = _kernel_or_skip()
    mape = randomize_(MAPE(8, 32), seed=15).eval()
    got = _encode(lib, mape, torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64), 4)
    assert got.shape == (4, 32) and not got.any()


def test_kernel_is_built_once_into_the_engine_cache(fresh_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTPILLARS_ENGINE_CACHE", str(tmp_path / "cache"))
    if fresh_kernel() is None:
        pytest.skip("no C compiler: the CPU kernel is not built")
    built = list((tmp_path / "cache").glob("mape_cpu_*.so"))
    assert len(built) == 1 and (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    stamp = built[0].stat().st_mtime_ns
    fresh_kernel.cache_clear()
    assert fresh_kernel() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_kernel_is_not_loaded_from_a_directory_others_can_write(fresh_kernel, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("FASTPILLARS_ENGINE_CACHE", str(shared))
    assert fresh_kernel() is None and not list(shared.iterdir())


@pytest.mark.parametrize("setting", [{"CC": "/nonexistent/cc"}, {"FASTPILLARS_NATIVE": "0"}])
def test_without_the_kernel_mape_falls_back_to_pure_torch(fresh_kernel, tmp_path, monkeypatch, setting):
    monkeypatch.setenv("FASTPILLARS_ENGINE_CACHE", str(tmp_path))
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    assert fresh_kernel() is None
    mape = randomize_(MAPE(8, 16), seed=13).eval()
    feats, ids, _ = random_pillars(40, 300, 8, 10, 10, seed=9)
    with torch.no_grad():
        got, pure_torch = mape(feats, ids, 40), mape._forward_torch(feats, ids, 40)
    torch.testing.assert_close(got, pure_torch, rtol=0, atol=0)


def test_cc_may_carry_arguments(fresh_kernel, tmp_path, monkeypatch):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("FASTPILLARS_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", f"{cc} -Wall")  # as with CC="ccache gcc"
    assert fresh_kernel() is not None


def test_loading_the_kernel_leaves_denormal_numbers_alone_in_the_process(tmp_path):
    """A library linked with -ffast-math would switch on flush-to-zero for the whole process when it loads (then
    pillarize took x = -1e-45 for 0 and kept a point below its bound)."""
    code = ("import numpy as np\nfrom fastpillars_ros.ops import mape_cpu\n"
            "assert mape_cpu.kernel() is not None, 'kernel not built'\n"
            "print(bool((np.array([-1e-45], np.float32) * np.float32(1.0))[0] < 0))")
    env = {**os.environ, "FASTPILLARS_ENGINE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if "kernel not built" in out.stderr:
        pytest.skip("no C compiler: the CPU kernel is not built")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@torch.no_grad()
def test_kernel_rejects_pillar_ids_outside_the_pillars_naming_the_field():
    lib = _kernel_or_skip()
    mape = randomize_(MAPE(8, 32), seed=16).eval()
    feats, ids, _ = random_pillars(30, 300, 8, 10, 10, seed=11)
    for bad in (30, -1):
        wrong = ids.clone()
        wrong[123] = bad
        with pytest.raises(ValueError, match="point_pillar holds an id outside"):
            _encode(lib, mape, feats, wrong, 30)
    with pytest.raises(ValueError, match="point_pillar must be int64"):
        _encode(lib, mape, feats, ids.int(), 30)
