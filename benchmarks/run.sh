#!/usr/bin/env bash
# The benchmark suite once per Keras backend, each in its own process (Keras fixes the backend at import),
# then the report. The torch-only cases run once, in the TensorFlow run; the JAX and torch runs take only
# the Keras cases (-m keras). Usage: benchmarks/run.sh LABEL [pytest args...]; writes
# benchmarks/results/LABEL-<backend>.json and LABEL-report.md / LABEL-report.png.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:?usage: benchmarks/run.sh LABEL [pytest args...]}
shift
out=benchmarks/results
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$out"
for backend in tensorflow jax torch; do
  select=()
  [[ $backend == tensorflow ]] || select=(-m keras)
  KERAS_BACKEND=$backend python -m pytest benchmarks --benchmark-only -q "${select[@]}" \
    --benchmark-json "$out/$label-$backend.json" "$@"
done
python -m benchmarks.report "$out/$label"-{tensorflow,jax,torch}.json --out "$out" --name "$label-report"
