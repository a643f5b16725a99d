"""cpu_features: the bf16 probes that order the CPU back ends of ``backend: auto``."""

from __future__ import annotations

import pytest

from fastpillars_ros.runtime import cpu_features, memory


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    def write(text: str | None):
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(cpu_features, "CPUINFO", path)
        cpu_features.cpu_flags.cache_clear()
        return cpu_features.amx_bf16()

    yield write
    cpu_features.cpu_flags.cache_clear()


def test_amx_is_read_from_the_flags_line(cpuinfo):
    assert cpuinfo("processor : 0\nflags : fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")


def test_avx512_bf16_without_amx_is_not_amx(cpuinfo):
    # An AMD EPYC (Zen 4) has AVX-512 BF16 but no AMX: there onnxruntime INT8 is as fast as OpenVINO bf16.
    assert not cpuinfo("processor : 0\nflags : fpu avx512f avx512_bf16 avx512_vnni\nmodel name : amx_bf16 lookalike\n")


def test_an_unreadable_cpuinfo_means_no_amx(cpuinfo):
    assert not cpuinfo(None)


@pytest.mark.parametrize(("flags", "units"), [("avx512f avx512_bf16 avx512_vnni", True),
                                              ("avx512f amx_bf16 amx_tile", True), ("avx2 avx512f avx512_vnni", False)])
def test_bf16_units_are_amx_or_avx512_bf16(cpuinfo, flags, units):
    cpuinfo(f"processor : 0\nflags : fpu {flags}\n")
    assert cpu_features.bf16_units() is units


@pytest.fixture
def both_cpu_backends(monkeypatch):
    from fastpillars_ros.runtime import onnxruntime_backend, openvino_backend

    monkeypatch.setattr(onnxruntime_backend, "onnxruntime_version", lambda: "1.32")
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: "2026.4")
    return openvino_backend


@pytest.mark.parametrize(("amx", "order"), [(True, ("openvino", "onnxruntime")), (False, ("onnxruntime", "openvino"))])
def test_auto_tries_openvino_first_with_amx(monkeypatch, both_cpu_backends, amx, order):
    monkeypatch.setattr(memory, "amx_bf16", lambda: amx)
    monkeypatch.setattr(memory, "bf16_units", lambda: True)
    assert memory.resolve_backend("auto", "cpu") == order[0]
    monkeypatch.setattr(both_cpu_backends, "openvino_version", lambda: None)
    assert memory.resolve_backend("auto", "cpu") == "onnxruntime"


@pytest.mark.parametrize(("units", "first"), [(True, "openvino"), (False, "onnxruntime")])
def test_weights_kept_out_of_int8_try_openvino_first_wherever_bf16_is_native(monkeypatch, both_cpu_backends,
                                                                           units, first):
    # Without INT8 the choice is bf16 or onnxruntime fp32, and AVX-512 BF16 runs bf16 at about INT8's speed.
    monkeypatch.setattr(memory, "amx_bf16", lambda: False)
    monkeypatch.setattr(memory, "bf16_units", lambda: units)
    assert memory.resolve_backend("auto", "cpu", auto_int8=False) == first

