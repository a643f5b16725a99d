"""cpu_features: the AMX probe that orders the CPU back ends of ``backend: auto``."""

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


@pytest.mark.parametrize(("amx", "order"), [(True, ("openvino", "onnxruntime")), (False, ("onnxruntime", "openvino"))])
def test_auto_tries_openvino_first_only_with_amx(monkeypatch, amx, order):
    from fastpillars_ros.runtime import onnxruntime_backend, openvino_backend

    monkeypatch.setattr(memory, "amx_bf16", lambda: amx)
    monkeypatch.setattr(onnxruntime_backend, "onnxruntime_version", lambda: "1.32")
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: "2026.4")
    assert memory.resolve_backend("auto", "cpu") == order[0]
    monkeypatch.setattr(openvino_backend, "openvino_version", lambda: None)
    assert memory.resolve_backend("auto", "cpu") == "onnxruntime"

