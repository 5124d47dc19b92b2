"""Weight porting between torch and Keras: every pair, both directions, refusals, files."""

from __future__ import annotations

import pickle

import keras
import numpy as np
import pytest
import torch

from harness import assert_parity
from harness.porting import convert_file, describe, keras_twin, port_weights, torch_twin
from harness.porting.files import read_torch_file, write_torch_file
from models_keras import exact, reset_all_states
from models_torch import MultiStateRNN
from tests.conformance import assert_bit_identical, assert_twins_match
from tests.helpers import CELLS, B, F, H, S, T, keras_backend, random_input, weight_normed_rnn
from tests.keras_helpers import torch_and_keras

pytestmark = pytest.mark.keras

TORCH_RAW = {
    "lstm": lambda **k: torch.nn.LSTM(F, H, batch_first=True, dtype=torch.float64, **k),
    "gru": lambda **k: torch.nn.GRU(F, H, batch_first=True, dtype=torch.float64, **k),
    "rnn-tanh": lambda **k: torch.nn.RNN(F, H, batch_first=True, dtype=torch.float64, **k),
    "rnn-relu": lambda **k: torch.nn.RNN(F, H, batch_first=True, dtype=torch.float64, nonlinearity="relu", **k),
}
KERAS_RAW = {
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
    "rnn-tanh": keras.layers.SimpleRNN,
    "rnn-relu": keras.layers.SimpleRNN,
}


def keras_raw(cell: str, use_bias: bool = True, bidirectional: bool = False) -> keras.layers.Layer:
    """A raw float64 Keras layer; on JAX with the exact tanh (Keras 3.15's tanh drops float64 there)."""
    cls = KERAS_RAW[cell]
    kwargs = exact.safe_rnn_kwargs(cls, use_bias, {"activation": "relu"} if cell == "rnn-relu" else {})
    layer = cls(H, use_bias=use_bias, return_sequences=True, return_state=True, dtype="float64", **kwargs)
    return keras.layers.Bidirectional(layer, dtype="float64") if bidirectional else layer


def run_torch(rnn: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out, state = rnn(torch.from_numpy(x))
    state = state if isinstance(state, tuple) else (state,)
    return [out.numpy()] + [s.numpy() for s in state]


def run_keras(layer: keras.layers.Layer, x: np.ndarray) -> list[np.ndarray]:
    """Output and final states, stacked per direction as torch stacks them ((dirs, B, H))."""
    out, *states = (keras.ops.convert_to_numpy(t) for t in layer(x))
    per_dir = len(states) // (2 if isinstance(layer, keras.layers.Bidirectional) else 1)
    return [out] + [np.stack(states[i::per_dir]) for i in range(per_dir)]


def raw_cases():
    for cell in TORCH_RAW:
        for bias in (True, False):
            for bidirectional in (False, True):
                float64_bug = cell.startswith("rnn") and keras_backend() == "torch"
                marks = (
                    [
                        pytest.mark.xfail(
                            strict=True,
                            reason="Keras 3.15 SimpleRNN computes float64 matmuls in "
                            "float32 on torch (see models_keras/exact.py)",
                        )
                    ]
                    if float64_bug
                    else []
                )
                yield pytest.param(cell, bias, bidirectional, marks=marks, id=f"{cell}-bias{bias}-bi{bidirectional}")


@pytest.mark.parametrize("direction", ["torch->keras", "keras->torch"])
@pytest.mark.parametrize(("cell", "bias", "bidirectional"), list(raw_cases()))
def test_raw_layers_float64_parity(cell, bias, bidirectional, direction, rng):
    torch.manual_seed(0)
    t = TORCH_RAW[cell](bias=bias, bidirectional=bidirectional)
    k = keras_raw(cell, bias, bidirectional)
    x = random_input(rng, (B, T, F), "float64")
    if direction == "torch->keras":
        port_weights(t, k)
    else:
        k.build((None, None, F))
        port_weights(k, t)
    assert_twins_match(run_keras(k, x), run_torch(t, x), f"{cell} {direction}: Keras vs torch")


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_multistate_float64_parity_both_directions(cell, layers, bias, rng):
    module, model = torch_and_keras(cell, "float64", num_layers=layers, bias=bias)
    x = random_input(rng, (B, S, T, F), "float64")
    assert_parity({"torch": module, "keras": model}, x, "random")
    back = torch_twin(model.layers[-1])
    for name, p in module.rnn.named_parameters():
        if not name.startswith("bias"):
            assert_bit_identical(getattr(back.rnn, name), p, f"{name} after torch -> keras -> torch")
    assert_parity({"torch": module, "torch -> keras -> torch": back}, x, "halves")


def test_our_mapping_agrees_with_keras_torch_backend_mapping(rng):
    """Keras's own torch backend maps Keras LSTM/GRU weights to torch's cuDNN layout; ours must agree."""
    import importlib

    from multistate_core.cells import to_torch

    keras_torch_rnn = importlib.import_module("keras.src.backend.torch.rnn")

    for cell, prepare in (("lstm", keras_torch_rnn.prepare_lstm_params), ("gru", keras_torch_rnn.prepare_gru_params)):
        gates = 4 if cell == "lstm" else 3
        bias_shape = (gates * H,) if cell == "lstm" else (2, gates * H)
        kernel, recurrent, bias = (rng.standard_normal(s) for s in ((F, gates * H), (H, gates * H), bias_shape))
        theirs = prepare(torch.from_numpy(kernel), torch.from_numpy(recurrent), torch.from_numpy(bias), "cpu")
        ours = to_torch(cell, [kernel, recurrent, bias])
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), theirs, strict=True):
            np.testing.assert_array_equal(ours[name], value.numpy(), err_msg=f"{cell} {name}")


def snapshot(obj) -> list[np.ndarray]:
    if isinstance(obj, keras.layers.Layer):
        return [keras.ops.convert_to_numpy(w).copy() for w in obj.weights]
    return [p.detach().clone().numpy() for p in obj.parameters()]


REFUSALS = {
    "proj_size": (lambda: torch.nn.LSTM(F, H, proj_size=2), lambda: keras.layers.LSTM(H), "proj_size=2"),
    "gru reset_after=False": (
        lambda: keras.layers.GRU(H, reset_after=False),
        lambda: torch.nn.GRU(F, H),
        "reset_after=False",
    ),
    "lstm relu": (lambda: keras.layers.LSTM(H, activation="relu"), lambda: torch.nn.LSTM(F, H), "activation='relu'"),
    "hard_sigmoid": (
        lambda: keras.layers.LSTM(H, recurrent_activation="hard_sigmoid"),
        lambda: torch.nn.LSTM(F, H),
        "recurrent_activation='hard_sigmoid'",
    ),
    "input size": (
        lambda: torch.nn.GRU(F + 1, H),
        lambda: keras.layers.GRU(H),
        "input_size: source has 5, destination expects 4",
    ),
    "hidden size": (
        lambda: torch.nn.GRU(F, H + 1),
        lambda: keras.layers.GRU(H),
        "hidden_size: source has 6, destination expects 5",
    ),
    "layer count": (
        lambda: torch.nn.LSTM(F, H, num_layers=2),
        lambda: keras.layers.LSTM(H),
        "num_layers: source has 2, destination expects 1",
    ),
    "cell type": (
        lambda: torch.nn.GRU(F, H),
        lambda: keras.layers.LSTM(H),
        "cell: source has 'gru', destination expects 'lstm'",
    ),
    "activation": (
        lambda: torch.nn.RNN(F, H, nonlinearity="relu"),
        lambda: keras.layers.SimpleRNN(H),
        "activation: source has 'relu'",
    ),
    "bias": (lambda: torch.nn.RNN(F, H, bias=False), lambda: keras.layers.SimpleRNN(H), "bias: source has False"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_leaves_destination_untouched(case):
    make_src, make_dst, message = REFUSALS[case]
    src, dst = make_src(), make_dst()
    for layer in (src, dst):
        if isinstance(layer, keras.layers.Layer):
            layer.build((None, None, F))
    before = snapshot(dst)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        port_weights(src, dst)
    for a, b in zip(snapshot(dst), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bidirectional_of_another_cell_is_refused_by_name():
    @keras.saving.register_keras_serializable("test_porting")
    class PlainCell(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units, self.state_size, self.activation = units, units, keras.activations.tanh

        def call(self, x, states):
            return x, states

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    with pytest.raises(TypeError, match="cannot port weights of Keras Bidirectional: expected LSTM/GRU") as error:
        describe(keras.layers.Bidirectional(keras.layers.RNN(PlainCell(H))))
    print(error.value)


@pytest.mark.parametrize(("first", "second"), [(".pt", ".keras"), (".safetensors", ".weights.h5"), (".pth", ".keras")])
def test_file_round_trip_reproduces_outputs(first, second, tmp_path, rng):
    torch.manual_seed(0)
    module = torch.nn.LSTM(F, H, num_layers=2, batch_first=True)
    write_torch_file(module.state_dict(), tmp_path / f"a{first}")
    to_keras = convert_file(tmp_path / f"a{first}", tmp_path / f"b{second}", num_streams=S, batch_size=B)
    back = convert_file(tmp_path / f"b{second}", tmp_path / f"c{first}")
    assert to_keras.report.ok and back.report.ok, back.report.failure_message()
    x = torch.from_numpy(random_input(rng, (B, S, T, F)))
    back.torch_model.reset_states()
    with torch.no_grad():
        expected = torch.stack([module(x[:, s])[0] for s in range(S)], 1)
        assert_twins_match(back.torch_model(x), expected, f"the {first} file read back vs its source module")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{first}", f"b{second}", f"c{first}"], "temporary left"


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".keras", ".weights.h5"])
def test_truncated_file_is_a_clear_error(suffix, tmp_path):
    module, _ = torch_and_keras("gru")
    source = tmp_path / "source.pt"
    write_torch_file(module.rnn.state_dict(), source)
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        good = source
    elif suffix == ".safetensors":
        write_torch_file(module.rnn.state_dict(), good)
    else:
        convert_file(source, good, num_streams=S, batch_size=B)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = "out.keras" if suffix in (".pt", ".safetensors") else "out.pt"
    with pytest.raises(ValueError, match="cannot read .*bad"):
        convert_file(bad, tmp_path / other)
    assert not (tmp_path / other).exists()


class Payload:
    def __reduce__(self):
        return (print, ("pickle payload ran",))


def test_pickle_payload_in_pt_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight_ih_l0": Payload()}, f)
    with pytest.raises(ValueError, match="cannot read"):
        read_torch_file(path)
    assert "pickle payload ran" not in capsys.readouterr().out


def test_keras_twin_and_torch_twin_agree_float32(rng):
    torch.manual_seed(1)
    module = MultiStateRNN(F, H, S, nonlinearity="relu")
    layer = keras_twin(module)
    assert layer.rnn_layers[0].cell.activation.__name__ == "relu"
    assert_parity(
        {"torch": module, "keras": layer, "back": torch_twin(layer)}, random_input(rng, (B, S, T, F)), "halves"
    )


def test_a_weight_normed_state_dict_ports_to_what_the_module_computes(tmp_path, rng):
    """Weight norm keeps ``g``/``v`` in the state_dict (here ``parametrizations.weight_hh_l0.original0``/``1``;
    both forms: ``test_cli_export_of_a_weight_normed_state_dict``); the port recomputes the weight from them
    and matches the weight-normed module itself."""
    rnn = weight_normed_rnn("parametrization")
    torch.save(rnn.state_dict(), tmp_path / "wn.pt")
    result = convert_file(tmp_path / "wn.pt", tmp_path / "wn.keras", num_streams=S, batch_size=B)
    x = random_input(rng, (B, S, T, F))
    with torch.no_grad():
        expected = np.stack([rnn(torch.from_numpy(x[:, s]))[0].numpy() for s in range(S)], 1)
    reset_all_states(result.keras_model)  # the parity check ran it
    assert result.report.ok, result.report.failure_message()
    assert_twins_match(result.keras_model(x), expected, "the ported file vs the weight-normed module")
