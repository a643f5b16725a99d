"""Point-cloud operators with a CPU reference and GPU paths (CuPy kernels or pure torch).

Pillarization: :func:`pillarize`, :func:`decorate`, :class:`Pillars` (``ops/pillarize.py``; the CuPy
raw-PointCloud2 path is in ``ops/pillarize_cuda.py``).

Box overlap and suppression: :func:`rotated_iou_bev`, :func:`iou_3d` (``ops/iou.py``), :func:`nms_bev`,
:func:`nms_3d`, :func:`circle_nms`, :func:`nms_grouped`, ``suppress_contained`` (``ops/nms.py``; CUDA path
``ops/nms_cuda.py``).

C kernels for the CPU path, built at first use by ``ops/native.py`` (numpy/torch fallbacks without a compiler):
pillarize and decorate (``ops/pillarize_cpu.c``, the numpy reference's results bit for bit) and MAPE's fused
encoder (``ops/mape_cpu.c``, used by ``model/mape.py``).
"""

from fastpillars_ros.ops.iou import iou_3d, rotated_iou_bev
from fastpillars_ros.ops.nms import circle_nms, nms_3d, nms_bev, nms_grouped
from fastpillars_ros.ops.pillarize import Pillars, decorate, pillarize

__all__ = ["Pillars", "circle_nms", "decorate", "iou_3d", "nms_3d", "nms_bev", "nms_grouped", "pillarize",
           "rotated_iou_bev"]
