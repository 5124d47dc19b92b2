#!/usr/bin/env bash
# The benchmark suite once per installed Keras backend, each in its own process (Keras fixes the backend at
# import), then the report. A backend whose framework is not installed is skipped, and said so. The torch-only
# cases run once, in the first backend's run (TensorFlow when installed); the other runs take only the Keras
# cases (-m keras). Usage: benchmarks/run.sh LABEL [pytest args...]; writes
# benchmarks/results/LABEL-<backend>.json and LABEL-report.md / LABEL-report.png.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: benchmarks/run.sh LABEL [pytest args...]}
shift
out=benchmarks/results
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$out"

installed() {  # whether Python can import module $1 (without importing it)
  python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"
}

backends=()
skipped=()
for backend in tensorflow jax torch; do
  if installed keras && installed "$backend"; then backends+=("$backend"); else skipped+=("$backend"); fi
done
if ((${#skipped[@]})); then
  echo "run.sh: skipping Keras backend(s) not installed: ${skipped[*]}" >&2
fi
if ((${#backends[@]} == 0)); then
  echo "run.sh: no Keras backend installed (needs keras and one of tensorflow, jax, torch)" >&2
  exit 1
fi

results=()
for backend in "${backends[@]}"; do
  select=()
  [[ $backend == "${backends[0]}" ]] || select=(-m keras)
  KERAS_BACKEND=$backend python -m pytest benchmarks --benchmark-only -q "${select[@]}" \
    --benchmark-json "$out/$label-$backend.json" "$@"
  results+=("$out/$label-$backend.json")
done
python -m benchmarks.report "${results[@]}" --out "$out" --name "$label-report"
