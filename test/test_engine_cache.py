"""TensorRT engine cache: keys, rebuild decisions, atomic writes, untrusted directories.

TensorRT itself is stubbed here (no GPU in CI): ``build`` returns bytes, ``deserialize`` parses them.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from fastpillars_ros.runtime.engine_cache import EngineCache, EngineKey

KEY = EngineKey("ab" * 32, "10.13.0", "NVIDIA H100 80GB HBM3", "9.0", "fp16", (1, 64, 720, 720))


class Builder:
    """Counts builds; engines are b"ENGINE:<n>"; deserialising anything else fails like TensorRT does."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> bytes:
        self.builds += 1
        return f"ENGINE:{self.builds}".encode()

    @staticmethod
    def deserialize(data: bytes) -> str:
        if not data.startswith(b"ENGINE:"):
            raise RuntimeError("Serialization assertion failed: magic tag mismatch")
        return data.decode()


@pytest.fixture
def cache(tmp_path):
    return EngineCache(tmp_path / "engines")


def test_first_use_builds_and_caches_then_reuses(cache):
    b = Builder()
    engine, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert (engine, built, b.builds) == ("ENGINE:1", True, 1)
    engine, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert (engine, built, b.builds) == ("ENGINE:1", False, 1)


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.14.1"), ("gpu_name", "Orin"),
    ("compute_capability", "8.7"), ("precision", "fp32"), ("input_shape", (1, 64, 496, 432)),
])
def test_any_key_change_selects_a_different_engine(cache, field, value):
    b = Builder()
    cache.get_or_build(KEY, b.build, b.deserialize)
    other = EngineKey(**{**KEY.__dict__, field: value})
    assert other.file_stem() != KEY.file_stem()
    _, built = cache.get_or_build(other, b.build, b.deserialize)
    assert built and b.builds == 2


def test_foreign_engine_under_the_right_name_is_rebuilt_with_the_reason(cache, caplog):
    b = Builder()
    cache.get_or_build(KEY, b.build, b.deserialize)
    _, meta = cache.paths(KEY)
    data = json.loads(meta.read_text())
    data["key"]["gpu_name"] = "Tesla T4"  # e.g. a cache directory copied from another machine
    meta.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO):
        _, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert built
    assert "foreign" in caplog.text and "Tesla T4" in caplog.text


def test_corrupt_engine_is_stale_not_fatal(cache, caplog):
    b = Builder()
    cache.get_or_build(KEY, b.build, b.deserialize)
    engine_path, _ = cache.paths(KEY)
    engine_path.write_bytes(b"ENGINE:1 truncated")
    with caplog.at_level(logging.INFO):
        engine, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert built and engine == "ENGINE:2" and "corrupt" in caplog.text


def test_engine_that_fails_to_deserialise_is_rebuilt(cache, caplog):
    b = Builder()
    engine_path, _ = cache.paths(KEY)
    cache.store(KEY, b"garbage from an older TensorRT")
    with caplog.at_level(logging.INFO):
        engine, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert built and engine == "ENGINE:1" and "failed to load" in caplog.text
    assert engine_path.read_bytes() == b"ENGINE:1"


def test_cache_directory_is_created_private(cache):
    cache.store(KEY, b"ENGINE:1")
    assert (cache.directory.stat().st_mode & 0o777) == 0o700
    engine_path, _ = cache.paths(KEY)
    assert (engine_path.stat().st_mode & 0o777) == 0o600


def test_directory_writable_by_others_is_not_trusted(cache, caplog):
    cache.directory.mkdir(parents=True)
    os.chmod(cache.directory, 0o777)
    b = Builder()
    with caplog.at_level(logging.WARNING):
        engine, built = cache.get_or_build(KEY, b.build, b.deserialize)
    assert built and engine == "ENGINE:1"
    assert "writable by other users" in caplog.text
    assert not any(cache.directory.iterdir())  # nothing cached there


def test_writes_are_atomic_and_leave_no_temporary_files(cache, monkeypatch):
    cache.store(KEY, b"ENGINE:1")

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        cache.store(KEY, b"ENGINE:2")
    engine_path, _ = cache.paths(KEY)
    assert engine_path.read_bytes() == b"ENGINE:1"  # the old engine survives a failed write
    assert sorted(p.name for p in cache.directory.iterdir()) == sorted(p.name for p in cache.paths(KEY))


def test_missing_engine_reason_mentions_engines_for_other_settings(cache):
    cache.store(EngineKey(**{**KEY.__dict__, "precision": "fp32"}), b"ENGINE:9")
    data, why = cache.lookup(KEY)
    assert data is None and "other settings" in why and "fp32" in why
