"""Every CUDA source shipped in ``fastpillars_ros/cuda`` compiles with nvcc, warnings as errors, for the
GPU architectures users run: sm_87 (Jetson Orin), sm_86 (RTX 30xx/A-series), sm_89 (RTX 40xx/L4),
sm_90 (H100). The harness self-test kernels are compiled too, so they stay valid CUDA.

One nvcc call per (file, arch) with ``-cubin`` (device code only, ~0.6 s each here): per-arch failures are
reported separately, and a combined ``-fatbin`` call with four ``-gencode`` was only ~1.5x faster.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fastpillars_ros.cuda.loader import NVRTC_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = [*sorted((ROOT / "fastpillars_ros" / "cuda").glob("*.cu")), ROOT / "test" / "cuda_harness" / "selftest.cu"]
ARCHS = ("sm_87", "sm_86", "sm_89", "sm_90")
NVCC = shutil.which("nvcc")


@pytest.mark.needs_tool("nvcc")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu_file", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cuda_source_compiles_without_warnings(cu_file: Path, arch: str, tmp_path: Path) -> None:
    cmd = [NVCC, *NVRTC_OPTIONS, "-Werror=all-warnings", f"-arch={arch}", "-cubin",
           "-o", str(tmp_path / f"{cu_file.stem}.{arch}.cubin"), str(cu_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}{proc.stdout}"


def test_loader_finds_shipped_sources_and_rejects_unknown_names() -> None:
    from fastpillars_ros.cuda import CUDA_DIR, source_path

    assert source_path("pillarize") == CUDA_DIR / "pillarize.cu"
    assert source_path("pillarize.cu") == CUDA_DIR / "pillarize.cu"
    with pytest.raises(FileNotFoundError, match="no CUDA source"):
        source_path("does_not_exist")


def test_loader_explains_when_cupy_or_a_gpu_is_missing() -> None:
    from fastpillars_ros.cuda import CudaUnavailableError, cuda_available, load_module

    if cuda_available():
        pytest.skip("CuPy and a GPU are present: nothing to explain")
    with pytest.raises(CudaUnavailableError, match="CuPy"):
        load_module("pillarize")
