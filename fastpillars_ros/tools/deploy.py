"""``fastpillars-ros export-onnx`` and ``fastpillars-ros build-engine``: deployment artefacts at install time.

``export-onnx`` writes the fused dense part (static ``[1, C, H, W]`` canvas input) and checks it against
torch with onnxruntime. ``build-engine`` builds the TensorRT engine for this GPU into the engine cache, so
the node starts without a multi-minute build; it shows the build's progress.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastpillars_ros.config import DEFAULT_MODEL
from fastpillars_ros.runtime.choices import PRECISIONS


def _model(config: str, checkpoint: str | None):  # type: ignore[no-untyped-def]
    from fastpillars_ros.detector import default_checkpoint
    from fastpillars_ros.model import build_model, load_checkpoint

    model = build_model(config)
    ckpt = checkpoint or default_checkpoint(model.config.name)
    if ckpt is not None:
        load_checkpoint(model, ckpt, strict=True)
    else:
        print(f"warning: no checkpoint for {model.config.name}: exporting RANDOM weights", file=sys.stderr)
    return model.eval()


class ExportOnnx:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default=DEFAULT_MODEL)
        parser.add_argument("--checkpoint", default=None)
        parser.add_argument("--output", required=True, help="ONNX file to write")
        parser.add_argument("--opset", type=int, default=17)
        parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from fastpillars_ros.model.export import check_onnx, export_onnx

        model = _model(args.config, args.checkpoint)
        path = export_onnx(model, Path(args.output), opset=args.opset)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), input canvas {[1, *model.config.canvas_shape]}")
        if not args.no_check:
            print(f"onnxruntime vs torch: max abs difference {check_onnx(model, path):.2e}")
        return 0


class BuildEngine:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default=DEFAULT_MODEL)
        parser.add_argument("--checkpoint", default=None)
        parser.add_argument("--precision", default="fp16", choices=PRECISIONS)
        parser.add_argument("--cache-dir", default=None, help="engine cache (default ~/.cache/fastpillars_ros/engines)")
        parser.add_argument("--workspace-mib", type=int, default=1024)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        from fastpillars_ros.runtime.engine_cache import EngineCache
        from fastpillars_ros.runtime.tensorrt_backend import TensorRTDense, tensorrt_version

        if not torch.cuda.is_available() or tensorrt_version() is None:
            print("build-engine needs a CUDA GPU and the TensorRT Python package (pip install tensorrt); "
                  f"found: GPU {'yes' if torch.cuda.is_available() else 'no'}, TensorRT {tensorrt_version()}",
                  file=sys.stderr)
            return 2
        model = _model(args.config, args.checkpoint).fuse("full").cuda()
        dense = TensorRTDense(model, args.precision, EngineCache(args.cache_dir), args.workspace_mib)
        state = "built" if dense.built else "already cached"
        print(f"engine {state}: {EngineCache(args.cache_dir).paths(dense.key)[0]} "
              f"({args.precision}, TensorRT {dense.key.tensorrt_version}, {dense.key.gpu_name})")
        return 0

