"""The inference choices, defined once: the Detector, the node's parameters, ``launch``, ``eval`` and the
deployment commands all take their allowed values from here."""

from __future__ import annotations

__all__ = ["BACKENDS", "DEVICES", "ON_INSUFFICIENT_MEMORY", "PRECISIONS"]

#: Dense-network back ends: auto (onnxruntime on the CPU, torch on a GPU), or one by name.
BACKENDS = ("auto", "torch", "tensorrt", "onnxruntime")
#: auto (cuda when available, else cpu), cpu or cuda.
DEVICES = ("auto", "cpu", "cuda")
#: Numeric precision of the dense network: auto (int8 with onnxruntime on the CPU, fp32 elsewhere), fp32, fp16
#: (GPU) or int8 (onnxruntime on the CPU).
PRECISIONS = ("auto", "fp32", "fp16", "int8")
#: What to do when the GPU lacks memory for the model: fail, fall back to fp16, or run on the CPU.
ON_INSUFFICIENT_MEMORY = ("error", "fp16", "cpu")
