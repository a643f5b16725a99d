"""The inference and training choices, defined once: the Detector, the node's parameters, ``launch``, ``eval``,
``train`` and the deployment commands all take their allowed values from here."""

from __future__ import annotations

__all__ = ["BACKENDS", "CPU_BACKENDS", "CPU_BACKENDS_BF16", "CPU_PRECISIONS", "DEVICES", "ON_INSUFFICIENT_MEMORY",
           "PRECISIONS", "TRAIN_PRECISIONS"]

#: Dense-network back ends: auto (on the CPU onnxruntime, else OpenVINO, else torch, but OpenVINO first on processors
#: with AMX, and on those with AVX-512 BF16 for weights that rule INT8 out of auto; on a GPU TensorRT, else torch), or
#: one by name.
BACKENDS = ("auto", "torch", "tensorrt", "onnxruntime", "openvino")
#: The back ends that run the dense part on the CPU (in the order ``auto`` tries them before torch).
CPU_BACKENDS = ("onnxruntime", "openvino")
#: The order ``auto`` tries them in where it will run bf16 (``runtime/cpu_features.py``).
CPU_BACKENDS_BF16 = ("openvino", "onnxruntime")
#: auto (cuda when available, else cpu), cpu or cuda.
DEVICES = ("auto", "cpu", "cuda")
#: Numeric precision of the dense network: auto (int8 with onnxruntime; with OpenVINO bf16 where the processor has
#: native bf16, else int8; fp32 elsewhere, and in place of int8 for weights that rule INT8 out of auto), fp32, fp16
#: (GPU), bf16 (OpenVINO on the CPU) or int8 (onnxruntime or OpenVINO on the CPU).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
#: The precisions only the CPU back ends run.
CPU_PRECISIONS = ("bf16", "int8")
#: What to do when the GPU lacks memory for the model: fail, fall back to fp16, or run on the CPU.
ON_INSUFFICIENT_MEMORY = ("error", "fp16", "cpu")
#: Training arithmetic of the dense part: fp32, or bf16 autocast (about twice the step rate on processors with AMX
#: bf16 units; weights, optimizer state, the pillar encoder and the losses stay fp32).
TRAIN_PRECISIONS = ("fp32", "bf16")
