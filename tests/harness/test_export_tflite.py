"""TFLite export (``harness.export.to_tflite``) and the LiteRT runner (``harness.export.runners.TFLiteRunner``): every
cell held to the Keras source at every chunk boundary, every refusal leaving no file behind, and planted
faults caught by the verification."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests.helpers import keras_backend

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(keras_backend() != "tensorflow", reason="the TFLite converter needs the TensorFlow backend"),
]

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import harness.export.tflite_steps as steps  # noqa: E402
import harness.export.to_tflite as ex  # noqa: E402
from harness import check_parity, default_tolerance  # noqa: E402
from harness.export import (  # noqa: E402
    ExportError,
    TFLiteRunner,  # noqa: E402
    export,
)
from harness.parity.runners import as_runner  # noqa: E402
from harness.porting.layers import keras_class  # noqa: E402
from tests.conformance import assert_chunked_equals_whole, assert_twins_match  # noqa: E402

S, F, H, L, B = 3, 4, 8, 2, 2


def layer_of(cell: str, num_layers: int = L, **kwargs) -> keras.layers.Layer:
    """A built multi-state layer with random weights and a carried batch of ``B``."""
    keras.utils.set_random_seed(0)
    layer = keras_class(cell)(H, S, num_layers=num_layers, batch_size=B, **kwargs)
    layer(np.zeros((B, S, 1, F), "float32"))
    layer.reset_states()
    return layer


def x_of(batch: int, steps: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, S, steps, F)).astype("float32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """cell -> (layer, path): each cell, two layers, exported once for the tests that read the file."""
    folder = tmp_path_factory.mktemp("tflite")
    out = {}
    for cell in ("lstm", "gru", "rnn"):
        layer = layer_of(cell)
        result = export(layer, folder / f"{cell}.tflite", verify_steps=16)
        assert result.report.ok and result.exporter == "tflite" and result.state_names == layer.state_names
        out[cell] = (layer, str(folder / f"{cell}.tflite"))
    return out


# ---- every cell, stacked: the file equals the Keras source --------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_file_equals_keras_source_over_200_steps(cell, exported):
    """Outputs and every state at every chunk boundary, 200 steps in random chunks (ones included), float32."""
    layer, path = exported[cell]
    runner = TFLiteRunner(path, threads=1)
    report = check_parity({"keras": layer, "tflite": runner}, x_of(B, 200), "random", seed=3)
    assert report.ok, report.failure_message()
    atol = default_tolerance("cross", "float32").atol  # the file vs its Keras source, float32
    assert report.max_abs_error <= atol, f"{cell}: max abs error {report.max_abs_error:.3g} beyond atol={atol:g}"
    assert {c.tensor for c in report.comparisons} == {"output", *layer.state_names}
    print(f"{cell}: max abs error over 200 steps {report.max_abs_error:.3g}")


def test_signature_and_dynamic_batch_and_time(exported):
    layer, path = exported["lstm"]
    runner = TFLiteRunner(path)
    inputs = runner.interpreter.get_signature_runner("serving_default").get_input_details()
    assert tuple(inputs["x"]["shape_signature"]) == (-1, S, -1, F)
    assert tuple(inputs["h"]["shape_signature"]) == tuple(inputs["c"]["shape_signature"]) == (L, -1, S, H)
    assert (runner.state_names, runner.num_streams, runner.num_layers, runner.hidden_size) == (("h", "c"), S, L, H)
    x = x_of(3, 7)
    whole = runner.run(x)  # batch 3 (the file was verified at batch 2), 7 steps at once
    runner.reset()
    rows = [TFLiteRunner(path) for _ in range(3)]  # each row alone, one frame at a time
    per_row = np.concatenate(
        [np.concatenate([r.run(x[i : i + 1, :, t : t + 1]) for t in range(7)], 2) for i, r in enumerate(rows)]
    )
    assert_chunked_equals_whole(per_row, whole, "each row alone, one frame at a time, vs the batch at once")


def test_keras_file_source_and_callers_states_left_alone(tmp_path):
    from harness.porting.files import write_keras_file

    layer = layer_of("gru", num_layers=1)
    model = keras.Model(inputs := keras.Input(batch_shape=(B, S, None, F)), layer(inputs))
    write_keras_file(model, tmp_path / "gru.keras")
    result = export(str(tmp_path / "gru.keras"), tmp_path / "gru.tflite", verify_steps=16)
    assert result.report.ok and result.num_streams == S
    model.predict_on_batch(x_of(B, 5))
    before = layer.get_states()
    export(model, tmp_path / "model.tflite", verify_steps=16)
    assert all(np.array_equal(a, b) for a, b in zip(before, layer.get_states()))
    assert isinstance(as_runner(str(tmp_path / "model.tflite")), TFLiteRunner)


# ---- refusals: clear errors, nothing written ----------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: layer_of("lstm", dtype="float64"), "float64/float64"),
        (lambda: layer_of("gru", return_sequences=False), "return_sequences=False"),
        (lambda: keras_class("rnn")(H, S), "no carried state yet"),
        (lambda: layer_of("rnn", activation=lambda v: keras.ops.erfinv(keras.ops.tanh(v))), "Custom ops: Erfinv"),
    ],
)
def test_unsupported_is_refused(make, match, tmp_path):
    with pytest.raises(ExportError, match=match):
        export(make(), tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_other_keras_backends_are_refused(tmp_path, monkeypatch):
    layer = layer_of("gru", num_layers=1)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ExportError, match="jax Keras backend: the TFLite converter needs KERAS_BACKEND=tensorflow"):
        export(layer, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_streams_and_batch_must_agree(tmp_path):
    layer = layer_of("gru", num_layers=1)
    with pytest.raises(ExportError, match="num_streams=5 but the Keras layer has 3"):
        export(layer, tmp_path / "m.tflite", num_streams=5)
    with pytest.raises(ExportError, match="batch_size=4 but the Keras layer carries a batch of 2"):
        export(layer, tmp_path / "m.tflite", batch_size=4)


# ---- planted faults: the verification catches them ------------------------------------------------


def perturbed(weights):
    """A planted fault: every weight 1e-3 off."""

    def faulty(cell):
        return {k: v + np.float32(1e-3) for k, v in weights(cell).items()}

    return faulty


def swapped(chunk_function):
    """A planted wiring fault: the LSTM's h_out and c_out come out swapped."""
    import tensorflow as tf

    def faulty(layer):
        inner = chunk_function(layer)

        def chunk(*args):
            out = inner(*args)
            return {**out, "h_out": out["c_out"], "c_out": out["h_out"]}

        return tf.function(chunk, input_signature=inner.input_signature, autograph=False)

    return faulty


@pytest.mark.parametrize("module, target, fault", [(steps, "_weights", perturbed), (ex, "chunk_function", swapped)])
def test_planted_fault_is_caught_and_nothing_written(module, target, fault, tmp_path, monkeypatch):
    layer = layer_of("lstm", num_layers=1)
    path = tmp_path / "m.tflite"
    path.write_bytes(b"the previous good file")
    monkeypatch.setattr(module, target, fault(getattr(module, target)))
    with pytest.raises(ExportError, match="disagrees with the source"):
        export(layer, path, verify_steps=16)
    assert path.read_bytes() == b"the previous good file"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_parity_engine_catches_a_swapped_state_file(tmp_path, monkeypatch):
    """A file whose h_out/c_out are swapped loads, but parity fails on the states of the first chunk."""
    layer = layer_of("lstm", num_layers=1)
    monkeypatch.setattr(ex, "chunk_function", swapped(ex.chunk_function))
    (tmp_path / "bad.tflite").write_bytes(ex.convert(layer))
    report = check_parity({"keras": layer, "tflite": TFLiteRunner(tmp_path / "bad.tflite")}, x_of(B, 12), "halves")
    assert not report.ok
    first = [c for c in report.failures() if c.pair == "tflite vs keras" and c.chunk == 0]
    assert {c.tensor for c in first} == {"h", "c"}


# ---- the runner refuses what is not an exported chunk model; LiteRT or tf.lite --------------------


def test_runner_refuses_corrupted_and_foreign_files(exported, tmp_path):
    import tensorflow as tf

    good = open(exported["gru"][1], "rb").read()
    (tmp_path / "truncated.tflite").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.tflite").write_bytes(b"\x00not tflite at all" * 10)
    for name in ("truncated.tflite", "garbage.tflite"):
        with pytest.raises(ValueError, match="not a valid TFLite model"):
            TFLiteRunner(tmp_path / name)
    holder = tf.Module()
    holder.f = tf.function(lambda a: {"b": a * 2}, input_signature=[tf.TensorSpec((2, 2), tf.float32, name="a")])
    foreign = tf.lite.TFLiteConverter.from_concrete_functions([holder.f.get_concrete_function()], holder).convert()
    (tmp_path / "foreign.tflite").write_bytes(foreign)
    with pytest.raises(ValueError, match="not a multi-state chunk model"):
        TFLiteRunner(tmp_path / "foreign.tflite")
    with pytest.raises(FileNotFoundError):
        TFLiteRunner(tmp_path / "missing.tflite")


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_runner_contract_and_tf_lite_fallback(exported, monkeypatch):
    layer, path = exported["lstm"]
    runner = TFLiteRunner(path, threads=1)
    assert runner.interpreter_name == "ai_edge_litert.interpreter.Interpreter" or "ai_edge_litert" not in sys.modules
    with pytest.raises(RuntimeError, match="no state yet"):
        runner.states()
    with pytest.raises(ValueError, match="3 streams"):
        runner.run(np.zeros((1, 2, 1, F), "float32"))
    y = runner.run(x_of(2, 3))
    with pytest.raises(ValueError, match="call reset"):
        runner.run(x_of(1, 3))
    with pytest.raises(ValueError, match="states lack"):
        runner.set_states({"h": np.zeros((L, 1, S, H))})
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # LiteRT not installed
    fallback = TFLiteRunner(path, threads=1)
    assert fallback.interpreter_name.endswith("Interpreter") and "ai_edge_litert" not in fallback.interpreter_name
    assert_twins_match(fallback.run(x_of(2, 3)), y, "the tf.lite interpreter vs LiteRT's")


def test_main_job_includes_the_tflite_backend(capsys, tmp_path):
    """``python -m harness parity`` lists ``tflite`` where Keras runs on TensorFlow, and proves the file vs torch
    (the summary's worst row; every row and the device LiteRT ran on in ``--report``)."""
    from harness.cli import installed_backends, main

    assert "tflite" in installed_backends()
    report = tmp_path / "parity.md"
    assert main(["parity", "--backend", "tflite", "--cell", "rnn", "--report", str(report)]) == 0
    printed, written = capsys.readouterr().out, report.read_text()
    assert "PASS" in printed and "tflite vs torch" in printed, printed
    assert "tflite vs torch" in written and "tflite=litert-cpu" in written, written[:3000]
