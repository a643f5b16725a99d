#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one short run (about 6-8 minutes): the gpu-marked tests, the memory
# estimate against the measured peak per part, the GPU benchmark rows (with the torch path before issue 18 as
# the same-run anchor) and a per-layer profile. Made for a lent GPU machine that has torch, CuPy and NVML but
# no ROS 2 (none of these steps starts a ROS process) and works on any CUDA workstation with the project's
# Python environment too.
#
#   OUT=out/gpu_check scripts/gpu_check.sh        # logs, JSON and $OUT/benchmark_rows.md land in $OUT
#
# The anchor package (fastpillars_ros and config/ at BASELINE_COMMIT) comes from git; where the copy on the GPU
# machine has no .git, make it beforehand in the checkout (it then travels as an untracked file):
#   git archive -o .gpu_baseline.tar 23015ef5b114afb3a09fa3a13e5b0d27955795f4 fastpillars_ros config
#
# Optional, for a bare machine: wheels in .whl/ (e.g. shapely for the NMS reference) are installed into
# /tmp/site, and a copy of shared/data/real in .gpu_shared/real is put where the tests look for it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -d .gpu_shared/real ] && [ ! -e ../shared/data/real/README.md ]; then
  mkdir -p ../shared/data && cp -r .gpu_shared/real ../shared/data/real
fi

BASELINE_COMMIT=${BASELINE_COMMIT:-23015ef5b114afb3a09fa3a13e5b0d27955795f4}
baseline=$(mktemp -d)/baseline && mkdir -p "$baseline"
if git cat-file -e "$BASELINE_COMMIT^{commit}" 2>/dev/null; then
  git archive "$BASELINE_COMMIT" fastpillars_ros config | tar -x -C "$baseline" && export FASTPILLARS_BASELINE=$baseline
elif [ -f .gpu_baseline.tar ]; then
  tar -xf .gpu_baseline.tar -C "$baseline" && export FASTPILLARS_BASELINE=$baseline
else
  echo "no baseline package (no git, no .gpu_baseline.tar): the rows will lack the before-issue-18 anchor"
fi

step() { echo; echo "######## $1 ($(date +%T))"; }
status=0

step "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
$PY - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
for name in ("cupy", "pynvml", "tensorrt", "onnxruntime", "shapely"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "present"))
    except Exception as exc:  # noqa: BLE001 - report whatever is missing or broken
        print(name, "MISSING:", exc)
EOF

step "gpu-marked tests (the memory measurements run in the next step, once)"
timeout 300 $PY -m pytest -m gpu -k "not within_15_percent" -p no:cacheprovider -q -rs \
  --junitxml="$OUT/gpu_tests.xml" test/test_gpu_pillarize.py test/test_gpu_nms.py test/test_model_gpu.py \
  test/test_detector.py test/test_cuda_graphs.py test/test_sweeps.py test/test_train.py test/test_memcheck.py \
  test/test_tensorrt_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" || status=1

step "memory: estimate vs measured, per part (test_memcheck's gpu test asserts |total error| <= 15 %)"
cases=("tiny360 fp32 120000 torch" "nuscenes_official fp32 250000 torch" "nuscenes_official fp16 250000 torch")
has_trt=0
$PY -c "import tensorrt" 2>/dev/null && has_trt=1 && cases+=("tiny360 fp16 120000 tensorrt")
for case in "${cases[@]}"; do
  set -- $case
  timeout 120 $PY -m fastpillars_ros.cli memcheck --config "$1" --precision "$2" --backend "$4" \
    --max-points "$3" --measure | tee -a "$OUT/memcheck.log" || status=1
done

if [ $has_trt = 1 ]; then
  # No weights are shipped for nuscenes_official: each process draws other random weights, so each builds its
  # own engine (the cache cannot hit). The benchmark rows below run the torch back end.
  step "TensorRT: per-layer profile, nuscenes_official fp16 (builds an engine)"
  timeout 240 $PY -m fastpillars_ros.cli profile --config nuscenes_official --backend tensorrt --device cuda \
    --precision fp16 --output "$OUT/profile_nuscenes_trt_fp16.json" 2>&1 | tail -30 || status=1
fi

step "benchmark rows on the GPU (rows for BENCHMARKS.md: $OUT/benchmark_rows.md)"
timeout 420 $PY test/bench/gpu_only.py --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.log" || status=1

step "per-layer profile, nuscenes_official torch fp16"
timeout 90 $PY -m fastpillars_ros.cli profile --config nuscenes_official --device cuda --precision fp16 \
  --output "$OUT/profile_nuscenes_fp16.json" 2>&1 | tail -30 || status=1

step "done: status $status"
exit $status
