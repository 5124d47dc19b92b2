#!/usr/bin/env bash
# The whole suite: every test once with Keras on TensorFlow, then the Keras tests again
# on JAX and on torch, each backend in its own process (Keras fixes it at import); then
# the benchmark code once without timing (a smoke check; timing is benchmarks/run_cpu.sh), and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
python -m pytest "$@"
KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -m keras "$@"
KERAS_BACKEND=torch python -m pytest -m keras "$@"
python -m pytest benchmarks --benchmark-disable -q -x -k "not (compiled and lstm)"  # one compile (seconds) is enough here
ruff check .
