"""Streaming cost of an exported chunk model: one frame per call, onnxruntime on one thread vs torch on one thread.

Band-split shapes (batch 1, one stream per band, ``F = H``, one layer). Under pytest each pair is a
``pytest-benchmark`` case; ``python -m benchmarks.test_export_stream`` prints the table of ``docs/export.md``
(µs per frame: the best of several rounds, so that other processes on the machine count as little as
possible; real-time factor for a 16 ms hop).

Example:
    python -m benchmarks.test_export_stream            # the table
    python -m pytest benchmarks/test_export_stream.py  # as benchmarks
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pytest

HOP_US = 16_000.0
SHAPES = {"gru-S33-H16": ("gru", 33, 16), "lstm-S31-H32": ("lstm", 31, 32), "lstm-S257-H64": ("lstm", 257, 64)}


def one_frame_steppers(cell: str, streams: int, hidden: int, exporter: str = "legacy") -> dict[str, Callable]:
    """``torch`` and ``onnxruntime`` callables that each run one frame ``(1, S, 1, H)`` and carry the states."""
    import torch

    from harness.export import export
    from harness.exported import OnnxRunner
    from harness.porting import torch_class

    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = torch_class(cell)(hidden, hidden, streams).eval()
    path = os.path.join(tempfile.mkdtemp(), f"{cell}.onnx")
    export(module, path, exporter=exporter, verify_steps=16)
    runner = OnnxRunner(path, threads=1)
    frame = np.random.default_rng(0).standard_normal((1, streams, 1, hidden)).astype("float32")
    frame_t = torch.from_numpy(frame)

    def torch_step() -> None:
        with torch.no_grad():
            module(frame_t)

    runner.run(frame)
    module(frame_t)
    return {"torch": torch_step, "onnxruntime": lambda: runner.run(frame)}


def us_per_frame(step: Callable[[], object], frames: int = 300, rounds: int = 7) -> float:
    """Best mean µs per call over ``rounds`` rounds of ``frames`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(frames):
            step()
        best = min(best, (time.perf_counter() - start) / frames * 1e6)
    return best


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_one_frame(shape: str, engine: str, benchmark) -> None:
    pytest.importorskip("onnxruntime")
    step = one_frame_steppers(*SHAPES[shape])[engine]
    benchmark(step)


def main() -> None:
    import onnxruntime
    import torch

    from harness.export import ExportError

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, one thread each, B=1, F=H, 1 layer")
    print(
        f"{'shape':<16} {'exporter':<8} {'torch µs':>9} {'ORT µs':>9} {'torch RTF':>10} {'ORT RTF':>9} {'speed-up':>9}"
    )
    for name, (cell, streams, hidden) in SHAPES.items():
        for exporter in ("legacy", "dynamo"):
            try:
                steps = one_frame_steppers(cell, streams, hidden, exporter)
            except ExportError as e:
                print(f"{name:<16} {exporter:<8} refused: {str(e).splitlines()[0]}")
                continue
            t, o = us_per_frame(steps["torch"]), us_per_frame(steps["onnxruntime"])
            print(f"{name:<16} {exporter:<8} {t:>9.1f} {o:>9.1f} {t / HOP_US:>10.5f} {o / HOP_US:>9.5f} {t / o:>8.2f}x")


if __name__ == "__main__":
    main()
