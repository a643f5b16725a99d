"""Inference runtime: back ends (torch, TensorRT), engine cache, start-up GPU memory check, profiling."""
