#!/usr/bin/env bash
# Everything docs/gpu.md lists, on one GPU machine, in one bounded run (RUN_GPU_BUDGET_S, default 420 s): the CUDA
# tests per Keras backend, the measured CUDA-vs-CPU errors, the parity job on CUDA, GraphStep beside the
# eager call at 256 streams, and a bounded GPU subset of the benchmark suite. Each step has its own time
# limit (cut to what is left of the budget; a step with under 10 s left is skipped) and log, and a failed step
# does not stop the others; the exit status counts the failed and skipped steps. The results (JSON, logs,
# summary.txt) land in OUTDIR; a device run that brings back few files tars it.
# Usage: benchmarks/run_gpu.sh OUTDIR [LABEL]  (LABEL names the results, default gpu-<card>, e.g. gpu-h200)
# PYTHON names the interpreter that holds torch (default python3, which the GPU image's venv provides).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_gpu.sh OUTDIR [LABEL]}
mkdir -p "$out/logs"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE 'h100|h200|a100|l4|t4' | tr 'A-Z' 'a-z')
label=${2:-gpu-${card:-unknown}}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
deadline=$((SECONDS + ${RUN_GPU_BUDGET_S:-420}))
failed=()

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output into logs/NAME.log
  local name=$1 limit=$2
  shift 2
  ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
  if ((limit < 10)); then
    echo "=== $name: skipped, the run's budget is spent" | tee -a "$out/summary.txt"
    failed+=("$name(skipped)")
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/logs/$name.log"
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$out/summary.txt"
  ((rc == 0)) || failed+=("$name")
}

installed() { "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

keras_backends=()
for b in jax torch; do installed keras && installed "$b" && keras_backends+=("$b"); done
parity_backends=(torch)
for b in tensorflow jax torch; do installed keras && installed "$b" && parity_backends+=("keras-$b"); done
installed onnxruntime && installed onnx && parity_backends+=(onnx)
installed tensorflow || echo "TensorFlow not installed: Keras on TensorFlow and TFLite do not run" | tee -a "$out/summary.txt"

step versions 60 bash -c 'nvidia-smi; "$0" -c "
import sys, torch, importlib.metadata as m
print(sys.version); print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())
for n in (\"jax\", \"jaxlib\", \"keras\", \"onnxruntime\", \"numpy\"):
    try: print(n, m.version(n))
    except m.PackageNotFoundError: print(n, \"not installed\")
import jax; print(\"jax devices\", jax.devices())
"' "$py"
# Keras fixes its backend at import, and with no TensorFlow the default backend cannot load: torch's own
# CUDA tests run in the Keras-on-torch process, then each Keras backend runs the Keras ones.
step pytest-torch 120 env KERAS_BACKEND=torch "$py" -m pytest -m "gpu and not keras" -rs -q --continue-on-collection-errors tests
for b in "${keras_backends[@]}"; do
  step "pytest-keras-$b" 120 env KERAS_BACKEND="$b" JAX_ENABLE_X64=1 "$py" -m pytest -m "gpu and keras" -rs -q --continue-on-collection-errors tests
done
step fidelity 60 "$py" -m benchmarks.gpu_fidelity --json "$out/$label-fidelity.json"
step graph-step 60 "$py" -m benchmarks.graph_step --streams 256 --json "$out/$label-graph-step.json"
step parity 120 "$py" -m harness parity --device cuda --backend "${parity_backends[@]}" --json "$out/$label-parity.json"

# The benchmark suite on the GPU-only shape (every LSTM job and implementation, and the gemm reference),
# timed for BENCH_BUDGET_S each; as run.sh, torch cases once and the Keras cases once per backend.
export BENCH_BUDGET_S=${BENCH_BUDGET_S:-0.3}
select="B64-S16 and not (train and per-stream)"  # per-stream training: 16 scans to compile
bench() {  # bench NAME KERAS_BACKEND MARK
  step "bench-$1" 120 env KERAS_BACKEND="$2" "$py" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
    -m "$3" -k "$select" --benchmark-json "$out/$label-$1.json"
}
bench torch torch "not keras"
for b in "${keras_backends[@]}"; do bench "keras-$b" "$b" keras; done
existing=()
for f in "$out/$label"-{torch,keras-jax,keras-torch}.json; do [[ -s $f ]] && existing+=("$f"); done
((${#existing[@]})) && step report 60 "$py" -m benchmarks.report "${existing[@]}" --out "$out" --name "$label-report"

echo "failed steps: ${failed[*]:-none}" | tee -a "$out/summary.txt"
exit "${#failed[@]}"
