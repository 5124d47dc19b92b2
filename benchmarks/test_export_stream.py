"""Streaming cost of an exported chunk model: one frame per call, onnxruntime and LiteRT on one thread vs torch.

Band-split shapes (batch 1, one stream per band, ``F = H``, one layer). Under pytest each pair is a
``pytest-benchmark`` case; ``python -m benchmarks.test_export_stream`` prints the table of ``docs/export.md``
(µs per frame: the best of several rounds, so that other processes on the machine count as little as
possible; real-time factor for a 16 ms hop).

Example:
    python -m benchmarks.test_export_stream            # the table
    python -m pytest benchmarks/test_export_stream.py  # as benchmarks
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

HOP_US = 16_000.0
# In this order: after a fixed-time dynamo export, torch 2.13 fixes the next dynamo export's time axis too.
ENGINES = (
    "torch",
    "torch-step",
    "torch-compiled",
    "torch-raw",
    "onnxruntime-dynamic",
    "onnxruntime",
    "onnxruntime-inner",
    "tflite",
    "keras-step",
    "keras-compiled",
)
BY_EXPORTER = ("onnxruntime-dynamic", "onnxruntime")  # the engines that differ between the ONNX exporters
SHAPES = {"gru-S33-H16": ("gru", 33, 16), "lstm-S31-H32": ("lstm", 31, 32), "lstm-S257-H64": ("lstm", 257, 64)}


def _inner_session(rnn: object, streams: int, folder: str) -> Callable:
    """The inner ``nn`` RNN exported by hand (folded streams, states as inputs): one frame per call in onnxruntime."""
    import onnxruntime
    import torch

    names = ["h", "c"] if isinstance(rnn, torch.nn.LSTM) else ["h"]
    shape = (rnn.num_layers, streams, rnn.hidden_size)
    states = tuple(torch.zeros(shape) for _ in names)
    path = os.path.join(folder, "inner.onnx")
    torch.onnx.export(
        rnn, (torch.zeros(streams, 1, rnn.input_size), states if len(states) > 1 else states[0]), path,
        input_names=["x", *names], output_names=["y", *[f"{n}_out" for n in names]], dynamo=False,
    )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxRunner: no busy threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    frame = np.zeros((streams, 1, rnn.input_size), "float32")
    carried = {n: np.zeros(shape, "float32") for n in names}

    def step() -> None:
        _, *new = session.run(None, {"x": frame, **carried})
        carried.update(zip(names, new))

    return step


def _tflite_session(module: object, folder: str) -> Callable:
    """The module's Keras twin exported to ``.tflite``: one frame per call in the LiteRT interpreter, one thread,
    fed directly (as ``TFLiteRunner`` does, without its checks and resizing: the shapes never change)."""
    from harness.export import TFLiteRunner, export
    from harness.porting import keras_twin

    path = os.path.join(folder, "twin.tflite")
    export(keras_twin(module, batch_size=1), path, verify_steps=16)
    runner = TFLiteRunner(path, threads=1)
    frame = np.random.default_rng(0).standard_normal((1, runner.num_streams, 1, runner.input_size)).astype("float32")
    runner.run(frame)  # sizes the tensors for one frame
    interpreter, carried, index, names = runner.interpreter, runner.states(), runner.tensor_index, runner.state_names

    def step() -> None:
        interpreter.set_tensor(index["x"], frame)
        for name in names:
            interpreter.set_tensor(index[name], carried[name])
        interpreter.invoke()
        carried.update((name, interpreter.get_tensor(index[f"{name}_out"])) for name in names)

    return step


def _keras_step(module: object, frame: np.ndarray, compiled: bool = False) -> Callable:
    """The module's Keras twin on the active backend, one frame per call through ``layer.streaming_step()``
    (numpy in, numpy out, as onnxruntime)."""

    import models_keras
    from harness.porting import keras_twin

    (layer,) = models_keras.multistate_layers(keras_twin(module, batch_size=1))
    run = layer.streaming_step(compiled=compiled)

    def step() -> None:
        np.asarray(run(frame))

    return step


def one_frame_steppers(
    cell: str, streams: int, hidden: int, exporter: str = "legacy", engines: tuple[str, ...] = ENGINES
) -> dict[str, Callable]:
    """Callables, one per engine asked for and usable here, that each run one frame ``(1, S, 1, H)`` and
    carry the states: the torch module, its ``streaming_step()`` (``torch-step``; ``torch-compiled``: compiled
    by AOTInductor), its raw inner ``nn`` RNN on the folded frame (``torch-raw``), the
    exported chunk model in onnxruntime (exported for one frame per call, ``frames=1``;
    ``onnxruntime-dynamic``: with a dynamic time axis), the inner RNN exported by hand
    (``onnxruntime-inner``: the bound for the exported model), the module's Keras twin exported to
    ``.tflite`` in the LiteRT interpreter (``tflite``; where Keras runs on TensorFlow) and run by the
    Keras layer's ``streaming_step()`` on the active backend (``keras-step``; where Keras is installed;
    ``keras-compiled``: compiled by AOTInductor, where Keras runs on torch)."""
    import torch

    from harness.porting import torch_class

    torch.manual_seed(0)
    module = torch_class(cell)(hidden, hidden, streams).eval()
    folder = tempfile.mkdtemp()
    frame = np.random.default_rng(0).standard_normal((1, streams, 1, hidden)).astype("float32")
    frame_t = torch.from_numpy(frame)
    module(frame_t)

    def torch_step() -> None:
        with torch.no_grad():
            module(frame_t)

    folded = frame_t.reshape(streams, 1, hidden)
    states = tuple(s.reshape(1, streams, hidden) for s in module.get_states())
    raw_state = [states if len(states) > 1 else states[0]]

    def raw_step() -> None:
        with torch.no_grad():
            _, new = module.rnn(folded, *raw_state)
        raw_state[:] = [new]

    builders = {
        "torch": lambda: torch_step,
        "torch-step": lambda: functools.partial(module.streaming_step(), frame_t),
        "torch-compiled": lambda: functools.partial(module.streaming_step(compiled=True), frame_t),
        "torch-raw": lambda: raw_step,
        "onnxruntime-dynamic": lambda: _session_step(_exported(module, folder, exporter, None), frame),
        "onnxruntime": lambda: _session_step(_exported(module, folder, exporter, 1), frame),
        "onnxruntime-inner": lambda: _inner_session(module.rnn, streams, folder),
        "tflite": lambda: _tflite_session(module, folder),
        "keras-step": lambda: _keras_step(module, frame),
        "keras-compiled": lambda: _keras_step(module, frame, compiled=True),
    }
    keras_here = importlib.util.find_spec("keras") is not None
    usable = {"tflite": tflite_usable(), "keras-step": keras_here, "keras-compiled": keras_here and _keras_on_torch()}
    return {e: builders[e]() for e in engines if usable.get(e, True)}


def _exported(module: object, folder: str, exporter: str, frames: int | None) -> object:
    """``module`` exported to ONNX (``frames``: fixed steps per call, or None), in an ``OnnxRunner`` on one thread."""
    from harness.export import OnnxRunner, export

    path = os.path.join(folder, f"{exporter}-{frames}.onnx")
    export(module, path, exporter=exporter, frames=frames, verify_steps=16)
    return OnnxRunner(path, threads=1)


def _keras_on_torch() -> bool:
    """Whether Keras runs on torch here: the only backend where ``streaming_step(compiled=True)`` differs."""
    return os.environ.get("KERAS_BACKEND", "tensorflow") == "torch"


def tflite_usable() -> bool:
    """Whether the ``.tflite`` engine can run here: Keras on TensorFlow, and the TFLite converter importable."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return False
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _session_step(runner: object, frame: np.ndarray) -> Callable:
    """One frame through the runner's session itself, fed as the inner one is (``OnnxRunner.run`` adds its checks)."""
    runner.run(frame)
    carried = runner.states()

    def step() -> None:
        _, *new = runner.session.run(None, {"x": frame, **carried})
        carried.update(zip(runner.state_names, new))

    return step


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
@pytest.mark.parametrize(
    "engine", [pytest.param(e, marks=pytest.mark.keras) if e.startswith("keras") else e for e in ENGINES]
)
def test_one_frame(shape: str, engine: str, benchmark) -> None:
    pytest.importorskip("onnxruntime")
    if engine == "tflite" and not tflite_usable():
        pytest.skip("the .tflite engine needs Keras on TensorFlow")
    if engine.startswith("keras") and importlib.util.find_spec("keras") is None:
        pytest.skip(f"the {engine} engine needs Keras")
    if engine == "keras-compiled" and not _keras_on_torch():
        pytest.skip("streaming_step(compiled=True) differs from keras-step on the torch backend only")
    with one_torch_thread():
        step = one_frame_steppers(*SHAPES[shape], engines=(engine,))[engine]
        benchmark(step)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, as onnxruntime is; the process's setting back afterwards
    (the other benchmarks in the same process run with their own thread count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    import onnxruntime
    import torch

    from harness.export import ExportError

    torch.set_num_threads(1)
    keras_backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, one thread each (Keras on {keras_backend}: "
        "its own threads), B=1, F=H, 1 layer"
    )
    print(
        f"{'shape':<16} {'exporter':<8} "
        + " ".join(f"{e + ' µs':>20}" for e in ENGINES)
        + "  torch/ORT  step/ORT  compiled/ORT  ORT/inner"
    )
    for name, (cell, streams, hidden) in SHAPES.items():
        for exporter in ("legacy", "dynamo"):
            try:  # the engines that do not depend on the exporter: on the first row only
                steps = one_frame_steppers(
                    cell, streams, hidden, exporter, ENGINES if exporter == "legacy" else BY_EXPORTER
                )
            except ExportError as e:
                print(f"{name:<16} {exporter:<8} refused: {str(e).splitlines()[0]}")
                continue
            us = {e: us_per_frame(steps[e]) if e in steps else float("nan") for e in ENGINES}
            ort = us["onnxruntime"]
            ratios = [
                us["torch"] / ort,
                us["torch-step"] / ort,
                us["torch-compiled"] / ort,
                ort / us["onnxruntime-inner"],
            ]
            print(
                f"{name:<16} {exporter:<8} "
                + " ".join(f"{us[e]:>20.1f}" if e in steps else f"{'-':>20}" for e in ENGINES)
                + "  ".join(f"{r:>9.2f}x" if r == r else f"{'-':>10}" for r in ratios)  # r != r: not measured
            )


if __name__ == "__main__":
    main()
