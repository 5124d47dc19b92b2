"""Streaming cost of an exported chunk model: one frame per call, onnxruntime and LiteRT on one thread vs torch.

Band-split shapes (batch 1, one stream per band, ``F = H``, one layer). Under pytest each pair is a
``pytest-benchmark`` case; ``python -m benchmarks.test_export_stream`` prints the tables of ``docs/export.md``:
every engine (µs per frame: the best of several rounds, so that other processes on the machine count as little
as possible), then the ``.tflite`` forms side by side with litert-torch's static graph of the same module, the
anchor (``benchmarks.litert_anchor``; files written in a venv that has litert-torch, passed with ``--anchor``):
interleaved rounds, medians, and each form's median ratio to the anchor over the rounds.

Example:
    python -m benchmarks.test_export_stream --anchor /tmp/anchor   # the tables
    python -m pytest benchmarks/test_export_stream.py              # as benchmarks
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
    "tflite-static",
    "tflite-static-reset",
    "litert-torch",
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


def _tflite_session(module: object, folder: str, frames: int | None = None, resets: bool = False) -> Callable:
    """The module exported to ``.tflite`` (``_tflite_file``): one frame per call in the LiteRT interpreter, one
    thread (``tflite_step``)."""
    return tflite_step(_tflite_file(module, folder, frames, resets))


def _tflite_file(module: object, folder: str, frames: int | None = None, resets: bool = False) -> str:
    """The module exported to ``.tflite`` in ``folder`` (through its Keras twin; ``frames=1``: the static form;
    ``resets``: with the reset input)."""
    from harness.export import export

    path = os.path.join(folder, f"m-{frames}-{resets}.tflite")
    export(module, path, frames=frames, resets=resets, verify_steps=16)
    return path


def tflite_step(path: str, feed: bool = True) -> Callable:
    """One frame per call through the ``.tflite`` chunk file ``path`` in LiteRT's interpreter, one thread, fed by
    position (``x``, the states, then ``reset`` all False if it has one; outputs ``y`` then the new states), the
    states carried; no checks, no resizing (the shapes never change). Drives the harness's files and
    litert-torch's alike (both in that order). ``feed=False``: the graph alone, ``invoke()`` with the inputs set
    once (what a deployment that writes its inputs in place pays; Python's ``set_tensor`` costs ~0.5 µs each)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    for d in inputs:  # the dynamic form: one frame of batch 1
        if -1 in d["shape_signature"]:
            shape = [1 if n < 0 else n for n in d["shape_signature"]]
            interpreter.resize_tensor_input(d["index"], shape, strict=True)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    rng = np.random.default_rng(0)
    frame = rng.standard_normal(inputs[0]["shape"]).astype("float32")
    states = [i["index"] for i in inputs[1:] if i["dtype"] == np.float32]
    carried = [np.zeros(i["shape"], np.float32) for i in inputs[1 : 1 + len(states)]]
    rest = [(i["index"], np.zeros(i["shape"], i["dtype"])) for i in inputs[1 + len(states) :]]  # the reset input
    news = [o["index"] for o in outputs[1:]]

    def step() -> None:
        interpreter.set_tensor(inputs[0]["index"], frame)
        for index, value in zip(states, carried):
            interpreter.set_tensor(index, value)
        for index, value in rest:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        carried[:] = [interpreter.get_tensor(i) for i in news]

    if feed:
        return step
    step()  # every input set once
    return interpreter.invoke


def _litert_torch_file(module: object, folder: str) -> str:
    """litert-torch's static one-frame graph of ``module`` (``benchmarks.litert_anchor``), written in ``folder``."""
    from benchmarks.litert_anchor import convert_with_litert_torch

    path = os.path.join(folder, "litert-torch.tflite")
    convert_with_litert_torch(module, path)
    return path


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
    (``onnxruntime-inner``: the bound for the exported model), the module exported to ``.tflite``
    through its Keras twin in the LiteRT interpreter (``tflite``: the dynamic form; ``tflite-static``:
    ``frames=1``; ``tflite-static-reset``: that with the reset input, fed all False; where Keras runs on
    TensorFlow), litert-torch's static graph of it (``litert-torch``, where litert-torch is installed), and run by the
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
        "tflite-static": lambda: _tflite_session(module, folder, frames=1),
        "tflite-static-reset": lambda: _tflite_session(module, folder, frames=1, resets=True),
        "litert-torch": lambda: tflite_step(_litert_torch_file(module, folder)),
        "keras-step": lambda: _keras_step(module, frame),
        "keras-compiled": lambda: _keras_step(module, frame, compiled=True),
    }
    keras_here = importlib.util.find_spec("keras") is not None
    tflite = tflite_usable()
    usable = {e: tflite for e in ("tflite", "tflite-static", "tflite-static-reset")}
    usable.update({"litert-torch": litert_torch_here(), "keras-step": keras_here})
    usable["keras-compiled"] = keras_here and _keras_on_torch()
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


def litert_torch_here() -> bool:
    """Whether litert-torch (not a dependency: the anchor) is importable here."""
    return importlib.util.find_spec("litert_torch") is not None


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
    if engine.startswith("tflite") and not tflite_usable():
        pytest.skip(f"the {engine} engine needs Keras on TensorFlow")
    if engine == "litert-torch" and not litert_torch_here():
        pytest.skip("litert-torch is not installed (benchmarks.litert_anchor writes its files in a venv of its own)")
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


def main(anchor: str | None = None) -> None:
    """Both tables: every engine at ``SHAPES``, then (on TensorFlow) the ``.tflite`` forms side by side with the
    anchor files in the folder ``anchor`` (``benchmarks.litert_anchor``), twice."""
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
    if tflite_usable():
        for run in (1, 2):
            tflite_side_by_side(anchor, run)


TFLITE_FORMS = ("litert-torch", "tflite-static", "tflite-static-reset", "tflite")


def tflite_side_by_side(anchor: str | None, run: int, frames: int = 200, rounds: int = 25) -> None:
    """The ``.tflite`` forms of each ``ANCHOR_SHAPES`` module, one frame per call, one thread, timed in interleaved
    rounds (each round times every form once, ``frames`` calls each, so that a change of load on the machine
    hits them alike): the median µs per frame, and each form's median over the rounds of its ratio to the
    anchor in the same round; twice: each frame fed from Python (``tflite_step``), and the graph alone
    (``feed=False``). The anchor is ``anchor/NAME.litert-torch.tflite``, checked first to compute what the
    module computes (else written here where litert-torch is installed, else left out)."""
    from benchmarks.litert_anchor import ANCHOR_SHAPES, anchor_module

    files = {}
    for name, shape in ANCHOR_SHAPES.items():
        module, folder = anchor_module(*shape), tempfile.mkdtemp()
        files[name] = {
            "tflite-static": _tflite_file(module, folder, frames=1),
            "tflite-static-reset": _tflite_file(module, folder, frames=1, resets=True),
            "tflite": _tflite_file(module, folder),
        }
        path = os.path.join(anchor, f"{name}.litert-torch.tflite") if anchor else None
        if path is not None and os.path.exists(path):
            check_anchor(path, module)
            files[name]["litert-torch"] = path
        elif litert_torch_here():
            files[name]["litert-torch"] = _litert_torch_file(module, folder)
    for feed, what in ((True, "each frame's inputs fed from Python"), (False, "the graph alone: invoke()")):
        print(f"\n.tflite, one frame per call, one thread, LiteRT, {what}; {rounds} interleaved rounds of {frames}")
        print(f"(run {run}; median µs per frame, and the median ratio to litert-torch's static graph per round)")
        print(f"{'shape':<16} " + " ".join(f"{f:>26}" for f in TFLITE_FORMS))
        for name, paths in files.items():
            steps = {form: tflite_step(path, feed) for form, path in paths.items()}
            us = {form: [] for form in steps}
            for _ in range(rounds):
                for form, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(frames):
                        step()
                    us[form].append((time.perf_counter() - start) / frames * 1e6)
            cells = []
            for form in TFLITE_FORMS:
                if form not in us:
                    cells.append(f"{'-':>26}")
                    continue
                ratio = np.median(np.divide(us[form], us["litert-torch"])) if "litert-torch" in us else float("nan")
                cells.append(f"{np.median(us[form]):>10.2f} µs ({ratio:>5.2f}x)".rjust(26))
            print(f"{name:<16} " + " ".join(cells))


def check_anchor(path: str, module: object) -> None:
    """Refuse an anchor file that does not compute what ``module`` computes (say, written from other weights):
    three frames from zero states, outputs and states within 1e-5 of torch."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from benchmarks.litert_anchor import anchor_inputs

    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    x, *states = (t.numpy() for t in anchor_inputs(module))
    module.reset_states()
    for frame in np.random.default_rng(1).standard_normal((3, *x.shape)).astype("float32"):
        for d, value in zip(inputs, (frame, *states)):
            interpreter.set_tensor(d["index"], value)
        interpreter.invoke()
        y, *states = (interpreter.get_tensor(d["index"]) for d in outputs)
        with torch.no_grad():
            want = [module(torch.from_numpy(frame)).numpy(), *(s.numpy() for s in module.get_states())]
        error = max(float(np.abs(a - b).max()) for a, b in zip([y, *states], want))
        if error > 1e-5:
            raise ValueError(f"{path} does not compute what the module computes: max abs error {error:.3g}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor", help="folder of litert-torch files written by benchmarks.litert_anchor")
    main(parser.parse_args().anchor)
