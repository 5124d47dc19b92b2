#!/usr/bin/env bash
# The whole suite: every test with Keras on TensorFlow (its Keras tests in two halves, SUITE_SHARD), the
# Keras tests again on JAX and on torch (each backend in its own process: Keras fixes it at import), the
# benchmark code once without timing (a smoke check; timing is benchmarks/run_cpu.sh) and the type checker
# (mypy), then ruff. The jobs share the machine's cores: each takes the next free slot, longest first, with
# one thread per framework (small tests on two threads only spin against each other); their logs are
# printed in the order below, each with its wall time, a failure in any one named.
set -euo pipefail
cd "$(dirname "$0")/.."
slots=${SUITE_SLOTS:-$(nproc)}  # before OMP_NUM_THREADS is set: nproc reads it
export TF_CPP_MIN_LOG_LEVEL=2 OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
names=("Keras on JAX" "Keras on TensorFlow, 1/2" "Keras on TensorFlow, 2/2" "torch-only tests" "benchmark smoke"
  "Keras on torch" "type check")
jobs=(
  "KERAS_BACKEND=jax JAX_ENABLE_X64=1 python -m pytest -m keras $*"
  "SUITE_SHARD=1/2 python -m pytest -m keras $*"
  "SUITE_SHARD=2/2 python -m pytest -m keras $*"
  "python -m pytest -m 'not keras' $*"
  "python -m pytest benchmarks --benchmark-disable -q -x -k 'not (compiled and lstm) and not B8-S16-T256'"  # one compile, small shapes
  "KERAS_BACKEND=torch python -m pytest -m keras $*"
  "python -m mypy"  # the library's packages, as pyproject.toml's [tool.mypy] lists them
)
logs=$(mktemp -d)
running=0
for i in "${!jobs[@]}"; do
  if ((running == slots)); then wait -n || true; running=$((running - 1)); fi
  running=$((running + 1))
  { SECONDS=0; rc=0; bash -c "${jobs[$i]}" >"$logs/$i.log" 2>&1 || rc=$?; echo "$rc $SECONDS" >"$logs/$i.rc"; } &
done
wait
failed=()
for i in "${!jobs[@]}"; do
  read -r rc seconds <"$logs/$i.rc"
  echo "=== ${names[$i]} (${seconds} s, exit ${rc}) ===" && cat "$logs/$i.log"
  ((rc == 0)) || failed+=("${names[$i]}")
done
if ((${#failed[@]})); then
  printf 'run_all.sh: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
ruff check .
