"""pytest wiring of the benchmark suite: the timing fixture and the machine description in the JSON.

The framework modules load on first use: a run that selects only torch cases (``-m "not keras"``)
never imports Keras, TensorFlow or JAX.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pathlib
import sys
import time
from collections.abc import Callable
from types import ModuleType

import pytest

from benchmarks import cases

BUDGET_S = float(os.environ.get("BENCH_BUDGET_S", "1.0"))  # timed seconds per benchmark, roughly
MIN_ROUNDS, MAX_ROUNDS = 3, 10_000
MIN_WATCHED_S = 0.5  # shorter timings are too short for /proc/stat's 10 ms ticks to tell whether others ran
LIBRARIES = ("torch", "keras", "tensorflow", "jax", "jaxlib", "numpy", "pytest-benchmark")
FRAMEWORKS = {"torch": "benchmarks.torch_impls", "keras": "benchmarks.keras_impls"}


def framework(name: str) -> ModuleType:
    """The implementation module of framework ``name`` (``"torch"`` or ``"keras"``), imported on first use."""
    return importlib.import_module(FRAMEWORKS[name])


def _keras_loaded() -> ModuleType | None:
    """The Keras implementation module if a Keras case ran in this process, else None (Keras is not imported)."""
    return sys.modules.get(FRAMEWORKS["keras"])


def pytest_benchmark_update_machine_info(machine_info: dict) -> None:
    """Add what the report needs to compare runs: Keras backend, library versions, threads, load, GPU.

    The Keras backend and device are recorded only where Keras cases ran (None otherwise).
    """
    import torch

    keras_impls = _keras_loaded()
    machine_info["keras_backend"] = keras_impls.backend() if keras_impls else None
    machine_info["keras_device"] = keras_impls.device() if keras_impls else None
    machine_info["libraries"] = {name: _version(name) for name in LIBRARIES}
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["loadavg"] = os.getloadavg()
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32


def pytest_benchmark_update_json(output_json: dict) -> None:
    """Drop the per-round timings: the report needs only the statistics, and the rounds run to megabytes."""
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the whole machine and of this process so far; None where ``/proc/stat`` is missing."""
    try:
        jiffies = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    idle = jiffies[3] + jiffies[4]  # idle, iowait
    mine = os.times()
    return (sum(jiffies) - idle) / os.sysconf("SC_CLK_TCK"), mine.user + mine.system


def _foreign_cores(before: tuple[float, float] | None, wall: float) -> float | None:
    """CPU cores that other processes kept busy, on average, since ``before``: a sign of a disturbed timing.

    None where it cannot be told: no ``/proc/stat``, or a timing shorter than ``MIN_WATCHED_S``.
    """
    after = _cpu_seconds()
    if before is None or after is None or wall < MIN_WATCHED_S:
        return None
    return round(max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall, 2)


def _rounds(step: Callable[[], object]) -> int:
    """Run ``step`` twice untimed (the first call compiles or traces), then size the rounds to ``BUDGET_S``."""
    step()
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / once)))


def _describe(case: cases.Case, implementation: ModuleType, device: str) -> dict[str, object]:
    """What a benchmark measured, for ``extra_info`` and the report; ``T`` is time steps per call."""
    shape, job = case.shape, case.job
    return {
        "impl": case.impl.id,
        "framework": case.impl.framework,
        "cell": case.cell,
        "job": job.name,
        "shape": shape.name,
        "B": shape.B,
        "S": shape.S,
        "T": job.steps(shape),
        "F": shape.F,
        "H": shape.H,
        "keras_backend": implementation.backend() if case.impl.is_keras else None,
        "device": device,
        "reset_rate": job.reset_rate,
        "min_length": job.min_length,
        "flops_per_step": cases.flops_per_step(case.cell, shape),
        "flops": cases.flops_per_call(case),
    }


@pytest.fixture
def measure(benchmark) -> Callable[[cases.Case], None]:
    """Build, warm up and time one case, recording what it is in ``extra_info``.

    Under ``--benchmark-disable`` the step runs once, as a smoke test of the code path.
    """

    def run(case: cases.Case) -> None:
        implementation = framework(case.impl.framework)
        device = implementation.device()
        if case.shape.gpu_only and device != "gpu":
            pytest.skip(f"{case.shape.name} runs on a GPU only")
        if case.impl == cases.TORCH_LOOP and device == "cpu" and case.shape.S > cases.PER_STREAM_LOOP_CAP_CPU:
            pytest.skip(f"per-stream loop capped at S <= {cases.PER_STREAM_LOOP_CAP_CPU} on CPU")
        reason = implementation.skip_reason(case)
        if reason:
            pytest.skip(reason)
        benchmark.group = case.group
        benchmark.extra_info.update(_describe(case, implementation, device))
        step, how = implementation.build_step(case)
        benchmark.extra_info.update(how)
        rounds = _rounds(step) if benchmark.enabled else 1
        before, start = _cpu_seconds(), time.perf_counter()
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
        benchmark.extra_info["foreign_cpu_cores"] = _foreign_cores(before, time.perf_counter() - start)

    return run
