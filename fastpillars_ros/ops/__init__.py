"""Point-cloud operators with a CPU reference and GPU paths (CuPy kernels or pure torch).

Pillarization: :func:`pillarize`, :func:`decorate`, :class:`Pillars` (``ops/pillarize.py``; the CuPy
raw-PointCloud2 path is in ``ops/pillarize_cuda.py``).
"""

from fastpillars_ros.ops.pillarize import Pillars, decorate, pillarize

__all__ = ["Pillars", "decorate", "pillarize"]
