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
def layers() -> dict:
    """cell -> layer: each cell, two layers, built once (a Keras layer traces its calls once per shape: the
    tests share that cost)."""
    return {cell: layer_of(cell) for cell in ("lstm", "gru", "rnn")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, layers) -> dict:
    """cell -> (layer, path): each cell, two layers, exported once for the tests that read the file."""
    folder = tmp_path_factory.mktemp("tflite")
    out = {}
    for cell, layer in layers.items():
        result = export(layer, folder / f"{cell}.tflite", verify_steps=6)
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
    result = export(str(tmp_path / "gru.keras"), tmp_path / "gru.tflite", verify_steps=6)
    assert result.report.ok and result.num_streams == S
    model.predict_on_batch(x_of(B, 5))
    before = layer.get_states()
    export(model, tmp_path / "model.tflite", verify_steps=6)
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
    """A planted wiring fault: the LSTM's h_out and c_out come out swapped (of either form's chunk function)."""
    import tensorflow as tf

    def faulty(layer, *form):
        inner = chunk_function(layer, *form)

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
        export(layer, path, verify_steps=6)
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


# ---- the static form (frames=K), the reset input, torch sources ---------------------------------------

K = 3  # steps per call of the multi-frame static form
FORMS = [(1, True), (K, False), (1, False), (K, True)]  # (frames, reset input)


def torch_module_of(cell: str):
    """A torch multi-state module of the shapes above, seeded."""
    torch = pytest.importorskip("torch")
    from harness.porting import torch_class

    torch.manual_seed(0)
    return torch_class(cell)(F, H, S, num_layers=L).eval()


def resets_of(steps: int, seed: int = 2) -> np.ndarray:
    """Random resets (B, S, steps), about one step in five, one inside the first frame group."""
    resets = np.random.default_rng(seed).random((B, S, steps)) < 0.2
    resets[0, :, 1] = True
    return resets


def prove_static(source, path: str, frames: int, with_reset: bool, steps: int) -> float:
    """The file against its source over ``steps`` frames (in calls of ``frames``) with random resets when it takes
    them, outputs and every state at every call; the max abs error (asserted within 1e-6)."""
    runner = TFLiteRunner(path, threads=1)
    assert (runner.frames, runner.batch_size, runner.has_reset) == (frames, B, with_reset)
    resets = resets_of(steps) if with_reset else None
    report = check_parity({"source": source, "tflite": runner}, x_of(B, steps), [frames] * (steps // frames),
                          resets=resets, whole_state_checks=1)  # fmt: skip
    assert report.ok, report.failure_message()
    assert {c.tensor for c in report.comparisons} == {"output", *runner.state_names}
    assert report.max_abs_error <= 1e-6, f"max abs error {report.max_abs_error:.3g} beyond 1e-6"
    return report.max_abs_error


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("source", ["keras", "torch"])
@pytest.mark.parametrize("form", range(2))
def test_static_form_equals_the_source_with_resets(cell, source, form, layers, tmp_path):
    """Each cell, from each kind of source, in two of the four static forms (the other two with the other source):
    the file equals the source over 66 frames with random resets, every frame group, every state, within 1e-6."""
    frames, with_reset = FORMS[2 * form + (source == "torch")]
    model = layers[cell] if source == "keras" else torch_module_of(cell)
    path = tmp_path / "m.tflite"
    result = export(model, path, frames=frames, batch_size=B, resets=with_reset, verify_steps=3)
    assert result.report.ok and result.state_names == (("h", "c") if cell == "lstm" else ("h",))
    error = prove_static(model, str(path), frames, with_reset, 66)
    print(f"{cell} from {source}, frames={frames}, reset input {with_reset}: max abs error {error:.3g}")


@pytest.mark.slow
def test_every_tflite_form_over_1000_frames_with_resets(layers, tmp_path):
    """The acceptance run: every cell, from torch and from Keras, dynamic and static (1 and K frames), with and
    without the reset input, against the torch source over 1,000 frames (1,002 for K) with random resets where
    the file takes them, every call, every state, within 1e-6. A Keras source's file is held to the torch twin
    of the layer (``torch_twin``: the Keras layer itself runs 1,000 one-frame calls in minutes; the export's
    proof held the file to the layer)."""
    from harness.porting.layers import torch_twin

    worst = 0.0
    for cell in ("lstm", "gru", "rnn"):
        for source in ("keras", "torch"):
            model = layers[cell] if source == "keras" else torch_module_of(cell)
            reference = torch_twin(model).eval() if source == "keras" else model
            for frames in (None, 1, K):
                for with_reset in (False, True):
                    path = str(tmp_path / f"{cell}-{source}-{frames}-{with_reset}.tflite")
                    export(model, path, frames=frames, batch_size=B, resets=with_reset, verify_steps=6)
                    steps = 1002 if frames == K else 1000
                    if frames is None:  # the dynamic form: in chunks of 1 to 5 frames
                        runner = TFLiteRunner(path, threads=1)
                        plan = np.random.default_rng(5).integers(1, 6, 1000)
                        plan = [int(n) for n in plan[: np.searchsorted(np.cumsum(plan), steps)]]
                        x = x_of(B, sum(plan))
                        resets = resets_of(x.shape[2]) if with_reset else None
                        report = check_parity({"source": reference, "tflite": runner}, x, plan, resets=resets,
                                              whole_state_checks=1)  # fmt: skip
                        assert report.ok and report.max_abs_error <= 1e-6, report.failure_message()
                        error = report.max_abs_error
                    else:
                        error = prove_static(reference, path, frames, with_reset, steps)
                    worst = max(worst, error)
                    print(f"{cell} from {source}, frames={frames}, reset input {with_reset}: {error:.3g}")
    print(f"worst max abs error over 1,000 frames: {worst:.3g}")


def test_static_graph_has_no_dynamic_dimension_and_no_loop(layers, tmp_path):
    """Read the written model: every tensor's shape fixed, no WHILE, inputs and outputs in the documented order
    (the dynamic form, for contrast, has both)."""
    layer = layers["lstm"]
    for frames in (1, K):
        export(layer, tmp_path / f"s{frames}.tflite", frames=frames, resets=True, verify_steps=6)
    export(layer, tmp_path / "dynamic.tflite", resets=True, verify_steps=6)
    for name in ("s1", f"s{K}", "dynamic"):
        interpreter = TFLiteRunner(tmp_path / f"{name}.tflite").interpreter
        dynamic = [t["name"] for t in interpreter.get_tensor_details() if -1 in t["shape_signature"]]
        ops = {op["op_name"] for op in interpreter._get_ops_details()}
        order = [d["name"].removeprefix("serving_default_").removesuffix(":0") for d in interpreter.get_input_details()]
        assert order == ["x", "h", "c", "reset"], order
        signature = interpreter.get_signature_runner("serving_default").get_output_details()
        outputs = [d["index"] for d in interpreter.get_output_details()]
        assert outputs == [signature[n]["index"] for n in ("y", "h_out", "c_out")]
        if name == "dynamic":
            assert dynamic and "WHILE" in ops, (dynamic, ops)
        else:
            assert dynamic == [] and "WHILE" not in ops, (dynamic, ops)


def test_torch_file_to_static_tflite_from_the_command_line(tmp_path, capsys):
    """``python -m harness export m.pt m.tflite --frames 1 --batch 2``: the static file, proven against torch."""
    import torch

    from harness.cli import main

    torch.save(torch_module_of("gru").state_dict(), tmp_path / "gru.pt")
    assert main(["export", str(tmp_path / "gru.pt"), str(tmp_path / "gru.tflite"), "--streams", str(S),
                 "--frames", "1", "--batch", str(B)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "PASS" in printed and "x (2, S, 1, F)" in printed, printed
    runner = TFLiteRunner(tmp_path / "gru.tflite")
    assert (runner.frames, runner.batch_size, runner.num_streams, runner.num_layers) == (1, B, S, L)


def test_runner_of_a_static_file_refuses_another_batch_and_runs_groups_of_frames(layers, tmp_path):
    layer = layers["gru"]
    export(layer, tmp_path / "m.tflite", frames=K, verify_steps=6)
    runner = TFLiteRunner(tmp_path / "m.tflite")
    with pytest.raises(ValueError, match=f"fixed batch of {B}: x must have batch {B}, got shape \\(3, "):
        runner.run(x_of(3, K))
    with pytest.raises(ValueError, match=f"multiple of {K}"):
        runner.run(x_of(B, K + 1))
    with pytest.raises(ValueError, match="no reset input"):
        runner.run(x_of(B, K), resets=np.zeros((B, S, K), bool))
    x = x_of(B, 2 * K)
    whole = runner.run(x)  # two calls of K frames
    layer.reset_states()
    assert_twins_match(whole, np.asarray(layer(x)), "two groups of K frames vs the Keras layer")


# ---- planted faults in the reset input and the static graph: caught -----------------------------------


def reset_after_the_step(advance):
    """A planted fault: the states are cleared after the step instead of before it."""

    def faulty(cells, xw, states, reset):
        h, new = advance(cells, xw, states, None)
        return h, new if reset is None else tuple(steps.cleared(s, reset) for s in new)

    return faulty


def reset_by_multiplication(cleared):
    """A planted fault: the reset multiplies the state by zero (a NaN state survives it)."""
    import tensorflow as tf

    def faulty(state, reset):
        return state * (1.0 - tf.cast(reset, state.dtype))

    return faulty


@pytest.mark.parametrize("frames", [1, None])
def test_reset_by_multiplication_is_refused(frames, layers, tmp_path, monkeypatch):
    """The export's own NaN check: a reset that multiplies keeps a NaN state, and nothing is written."""
    monkeypatch.setattr(steps, "cleared", reset_by_multiplication(steps.cleared))
    with pytest.raises(ExportError, match="does not clear a NaN state"):
        export(layers["lstm"], tmp_path / "m.tflite", frames=frames, resets=True, verify_steps=6)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "module, target, fault",
    [(steps, "advance", reset_after_the_step), (ex.tflite_static, "static_chunk_function", swapped)],
)
@pytest.mark.parametrize("frames", [1, K])
def test_planted_fault_in_the_static_form_is_caught(module, target, fault, frames, layers, tmp_path, monkeypatch):
    layer = layers["lstm"]
    monkeypatch.setattr(module, target, fault(getattr(module, target)))
    with pytest.raises(ExportError, match="disagrees with the source|does not clear a NaN state"):
        export(layer, tmp_path / "m.tflite", frames=frames, resets=True, verify_steps=6)
    assert os.listdir(tmp_path) == []


# ---- the XNNPACK check ------------------------------------------------------------------------------------


def test_xnnpack_takes_the_whole_static_graph_but_not_the_dynamic_one(layers, tmp_path):
    from harness.export.xnnpack import delegation

    layer = layers["lstm"]
    export(layer, tmp_path / "static.tflite", frames=1, verify_steps=6)
    export(layer, tmp_path / "reset.tflite", frames=1, resets=True, verify_steps=6)
    export(layer, tmp_path / "dynamic.tflite", verify_steps=6)
    static, reset, dynamic = (delegation(tmp_path / f"{n}.tflite") for n in ("static", "reset", "dynamic"))
    print(static.summary(), reset.summary(), dynamic.summary(), sep="\n")
    assert static.taken == static.nodes > 0 and static.partitions == 1 and static.fallen_back == ()
    # XNNPACK takes no bools: the reset's selects (one per state) run on the builtin kernels, before one partition.
    assert reset.fallen_back == reset.on_bools == ("SELECT_V2", "SELECT_V2") and reset.partitions == 1
    assert "WHILE" in dynamic.fallen_back and dynamic.taken < dynamic.nodes / 2


def test_xnnpack_check_fails_a_static_graph_with_a_fallen_back_op(tmp_path):
    """A planted fallback: a simple RNN whose activation is an arc tangent (TFLite's ATAN2, which XNNPACK does not
    take) exports in the dynamic form, and is refused in the static one, naming the op; nothing written."""
    layer = layer_of("rnn", num_layers=1, activation=lambda v: keras.ops.arctan2(v, keras.ops.ones_like(v)))
    export(layer, tmp_path / "dynamic.tflite", verify_steps=6)  # no check: the dynamic form cannot be delegated
    with pytest.raises(
        ExportError, match=r"not every node runs on XNNPACK: .* fallen back to the builtin kernels: ATAN2"
    ):
        export(layer, tmp_path / "static.tflite", frames=1, verify_steps=6)
    assert sorted(os.listdir(tmp_path)) == ["dynamic.tflite"]
