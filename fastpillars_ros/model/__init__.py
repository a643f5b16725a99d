"""FastPillars in PyTorch: MAPE pillar encoder, CRVNet backbone, RPNV2 neck, CenterPoint head.

Public API: :func:`build_model`, :func:`load_checkpoint`, :func:`save_checkpoint`, :func:`export_onnx`,
:func:`check_onnx`, :class:`FastPillars`, :class:`Candidates`.
"""

from .checkpoint import (
                         CheckpointMeta,
                         checkpoint_meta,
                         load_checkpoint,
                         read_state_dict,
                         save_checkpoint,
                         update_checkpoint_meta,
)
from .export import check_onnx, export_onnx, output_names
from .fastpillars import FUSION_LEVELS, FastPillars, build_model
from .head import Candidates, decode_head_outputs

__all__ = [
    "FUSION_LEVELS",
    "Candidates",
    "CheckpointMeta",
    "FastPillars",
    "build_model",
    "check_onnx",
    "checkpoint_meta",
    "decode_head_outputs",
    "export_onnx",
    "load_checkpoint",
    "output_names",
    "read_state_dict",
    "save_checkpoint",
    "update_checkpoint_meta",
]
