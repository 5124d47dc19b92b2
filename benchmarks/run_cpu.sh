#!/usr/bin/env bash
# CPU benchmarks on every Keras backend, GPUs hidden: results in benchmarks/results/cpu-*.
# Extra arguments go to pytest. On a GPU machine, `bash benchmarks/run.sh gpu` measures the GPU instead.
set -euo pipefail
CUDA_VISIBLE_DEVICES="" exec bash "$(dirname "$0")/run.sh" cpu "$@"
