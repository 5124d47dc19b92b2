#!/usr/bin/env bash
# The whole suite: every test once with Keras on TensorFlow, then the Keras tests again on JAX and on
# torch, each backend in its own process (Keras fixes it at import); the benchmark code once without
# timing (a smoke check; timing is benchmarks/run_cpu.sh), and ruff. The JAX run goes alongside the
# torch-backend run and the smoke run (each keeps about one core busy): 1.5 min less on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
python -m pytest "$@"
logs=$(mktemp -d)
KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -m keras "$@" >"$logs/jax.log" 2>&1 &
jax=$!
{
  KERAS_BACKEND=torch python -m pytest -m keras "$@"
  python -m pytest benchmarks --benchmark-disable -q -x -k "not (compiled and lstm)"  # one compile is enough here
} >"$logs/torch-and-benchmarks.log" 2>&1 &
rest=$!
failed=()
wait "$jax" || failed+=("JAX")
wait "$rest" || failed+=("torch backend / benchmark smoke")
echo "=== Keras on JAX ===" && cat "$logs/jax.log"
echo "=== Keras on torch, then the benchmark smoke run ===" && cat "$logs/torch-and-benchmarks.log"
if ((${#failed[@]})); then
  echo "run_all.sh: failed: ${failed[*]}" >&2
  exit 1
fi
ruff check .
