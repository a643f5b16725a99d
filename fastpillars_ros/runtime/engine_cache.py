"""Engine cache: one engine per (ONNX graph, builder version, GPU, precision, input shape, calibration).

Two kinds of engines live here: TensorRT engines (GPU) and INT8 ONNX models quantised for onnxruntime's CPU
provider (``runtime/quantize.py``; builder ``onnxruntime X.Y``, GPU ``cpu``, key ``calibration`` = digest of
the calibration inputs and settings).

Stale or foreign engines are a top complaint about peers (an engine built for another GPU or TensorRT
version fails or silently misbehaves). Every cached engine therefore has a sidecar JSON with the full
:class:`EngineKey`; an engine is used only when its key matches exactly and it deserialises. Anything
else is rebuilt, with a log line that says why. Files are untrusted input:

* the cache directory must belong to the current user and be writable by nobody else (``0700`` when we
  create it); otherwise a tampered engine could be slipped in, so the cache is refused with a warning;
* engines and sidecars are written atomically (temporary file in the same directory, ``fsync``, then
  ``os.replace``), so a crash mid-write never leaves a half engine under the final name;
* an engine whose bytes do not match the sidecar's SHA-256, or that fails to deserialise, is stale, not
  fatal: it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$FASTPILLARS_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/fastpillars_ros/engines`` (``~/.cache/...``)."""
    env = os.environ.get("FASTPILLARS_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fastpillars_ros" / "engines"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two engines are interchangeable only if their keys are equal."""

    onnx_sha256: str
    tensorrt_version: str    # the builder: TensorRT's version, or "onnxruntime X.Y" for CPU INT8 models
    gpu_name: str            # "cpu" for onnxruntime models
    compute_capability: str  # "8.7", "9.0", ...; "" on the CPU
    precision: str           # "fp32" | "fp16" | "int8"
    input_shape: tuple[int, ...]
    calibration: str = ""    # INT8: digest of the calibration data and quantisation settings

    def file_stem(self) -> str:
        """File name stem: readable parts plus a digest of the whole key."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu_name).strip("-").lower()
        sm = f"sm{self.compute_capability.replace('.', '')}_" if self.compute_capability else ""
        return f"{self.onnx_sha256[:12]}_{self.precision}_{sm}{gpu}_{digest}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @staticmethod
    def from_dict(d: dict) -> EngineKey:
        return EngineKey(str(d["onnx_sha256"]), str(d["tensorrt_version"]), str(d["gpu_name"]),
                         str(d["compute_capability"]), str(d["precision"]), tuple(int(v) for v in d["input_shape"]),
                         str(d.get("calibration", "")))


def _differences(want: EngineKey, have: EngineKey) -> list[str]:
    a, b = want.to_dict(), have.to_dict()
    return [f"{k}: cached {b[k]!r}, needed {a[k]!r}" for k in a if a[k] != b[k]]


class EngineCache:
    """A directory of serialised engines (TensorRT engines, INT8 ONNX models) with key sidecars."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    # ---- directory safety ---------------------------------------------------------------------
    def ensure_private_directory(self) -> bool:
        """Create the directory (mode 0700) if missing; return False (with a warning) when it exists but
        belongs to another user or is writable by group/others - engines from there are not trusted."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.directory.stat()
        except OSError as exc:
            log.warning("engine cache %s is unusable (%s); engines will not be cached", self.directory, exc)
            return False
        if st.st_uid != os.getuid():
            log.warning("engine cache %s belongs to uid %d, not to this user (%d): not using it; set "
                        "FASTPILLARS_ENGINE_CACHE to a directory of your own", self.directory, st.st_uid, os.getuid())
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("engine cache %s is writable by other users (mode %o): not using it; run "
                        "'chmod 700 %s' or choose another directory", self.directory, stat.S_IMODE(st.st_mode),
                        self.directory)
            return False
        return True

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        stem = key.file_stem()
        return self.directory / f"{stem}.engine", self.directory / f"{stem}.json"

    # ---- lookup ------------------------------------------------------------------------------
    def lookup(self, key: EngineKey) -> tuple[bytes | None, str]:
        """Return (engine bytes, "") when a matching, intact engine is cached, else (None, reason)."""
        if not self.ensure_private_directory():
            return None, "cache directory not trusted"
        engine_path, meta_path = self.paths(key)
        if not engine_path.is_file() or not meta_path.is_file():
            others = sorted(p.name for p in self.directory.glob(f"{key.onnx_sha256[:12]}_*.json"))
            why = "no cached engine for this model, device, builder version and precision"
            return None, why + (f" (found engines for other settings: {', '.join(others)})" if others else "")
        try:
            meta = json.loads(meta_path.read_text())
            have = EngineKey.from_dict(meta["key"])
            data = engine_path.read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"cached engine metadata is unreadable ({exc})"
        diff = _differences(key, have)
        if diff:
            return None, "cached engine is foreign: " + "; ".join(diff)
        if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            return None, "cached engine is corrupt (checksum mismatch)"
        return data, ""

    def store(self, key: EngineKey, data: bytes) -> Path | None:
        """Write an engine and its sidecar atomically; return the engine path (None if not cached)."""
        if not self.ensure_private_directory():
            return None
        engine_path, meta_path = self.paths(key)
        meta = {"key": key.to_dict(), "engine_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        _atomic_write(engine_path, data)
        _atomic_write(meta_path, json.dumps(meta, indent=2).encode())
        return engine_path

    def invalidate(self, key: EngineKey) -> None:
        for p in self.paths(key):
            p.unlink(missing_ok=True)

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes],
                     deserialize: Callable[[bytes], object]) -> tuple[object, bool]:
        """Return (deserialised engine, built_now). A missing, foreign, corrupt or undeserialisable cached
        engine is rebuilt with ``build()`` and stored; the reason is logged."""
        data, why = self.lookup(key)
        if data is not None:
            try:
                engine = deserialize(data)
            except Exception as exc:  # a stale engine is not fatal
                engine, why = None, f"cached engine failed to load ({exc})"
            if engine is not None:
                log.info("using cached %s engine %s", key.tensorrt_version, self.paths(key)[0])
                return engine, False
            why = why or "cached engine failed to load"
            self.invalidate(key)
        log.info("building a %s %s engine: %s", key.tensorrt_version, key.precision, why)
        data = build()
        engine = deserialize(data)
        if engine is None:
            raise RuntimeError(f"{key.tensorrt_version} could not deserialise the engine it has just built")
        path = self.store(key, data)
        if path is not None:
            log.info("cached %s engine at %s", key.tensorrt_version, path)
        return engine, True


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
