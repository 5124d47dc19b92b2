"""Whole-model porting (``port_weights`` on models): every layer kind round trip, refusals, leftovers, custom pairs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

import models_keras
import models_torch
from harness.porting import models as model_porting
from harness.porting import port_weights
from harness.porting.models import PortError, port_report, register_pair
from tests.conformance import assert_twins_match
from tests.helpers import B, F, H, S, T, random_input

pytestmark = pytest.mark.keras

E, A, C, V = 6, 2, 3, 7  # encoder width, actions, conv channels, vocabulary


# ---- the models, each built in torch and in Keras ---------------------------------------------


class Policy(torch.nn.Module):
    """An RL policy: Linear encoder -> MultiStateLSTM -> policy and value heads."""

    def __init__(self, units: int = H) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(F, E)
        self.core = models_torch.MultiStateLSTM(E, units, S, batch_size=B)
        self.policy = torch.nn.Linear(units, A)
        self.value = torch.nn.Linear(units, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.core(torch.relu(self.encoder(x)))
        return [self.policy(h), self.value(h)]


def keras_policy(heads: tuple[str, ...] = ("policy", "value"), extra: bool = False, units: int = H) -> keras.Model:
    x = keras.Input(batch_shape=(B, S, None, F))
    h = keras.layers.Dense(E, activation="relu", name="encoder")(x)
    if extra:
        h = keras.layers.Dense(E, name="extra")(h)
    h = models_keras.MultiStateLSTM(units, S, name="core")(h)
    sizes = {"policy": A, "value": 1}
    return keras.Model(x, [keras.layers.Dense(sizes[n], name=n)(h) for n in heads])


class BandSplit(torch.nn.Module):
    """A band-split-like model: Conv1d over time (channels first) -> MultiStateGRU -> LayerNorm -> Linear."""

    def __init__(self, kernel_size: int = 3, conv: type = torch.nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv(F, C, kernel_size, padding=kernel_size // 2)
        self.core = models_torch.MultiStateGRU(C, H, S, batch_size=B)
        self.norm = torch.nn.LayerNorm(H, eps=1e-3)
        self.out = torch.nn.Linear(H, A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, t, f = x.shape
        y = self.conv(x.reshape(b * s, t, f).transpose(1, 2)).transpose(1, 2).reshape(b, s, t, -1)
        return self.out(self.norm(self.core(y)))


def keras_band_split(
    kernel_size: int = 3, epsilon: float = 1e-3, padding: str = "same", dense_for_conv: bool = False
) -> keras.Model:
    x = keras.Input(batch_shape=(B, S, None, F))
    if dense_for_conv:
        y = keras.layers.Dense(C, name="conv")(x)
    else:
        conv = keras.layers.Conv1D(C, kernel_size, padding=padding, name="conv")
        y = keras.layers.TimeDistributed(conv, name="frames")(x)
    y = models_keras.MultiStateGRU(H, S, name="core")(y)
    y = keras.layers.LayerNormalization(epsilon=epsilon, name="norm")(y)
    return keras.Model(x, keras.layers.Dense(A, name="out")(y))


class Tokens(torch.nn.Module):
    """Embedding -> BatchNorm1d -> PReLU (channels first) -> plain GRU -> Linear, on token ids (B, T)."""

    def __init__(self, running_stats: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, E)
        self.norm = torch.nn.BatchNorm1d(E, eps=1e-3, track_running_stats=running_stats)
        self.act = torch.nn.PReLU(E)
        self.rnn = torch.nn.GRU(E, H, batch_first=True)
        self.out = torch.nn.Linear(H, A)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm(self.embed(tokens).transpose(1, 2))).transpose(1, 2)
        return self.out(self.rnn(y)[0])


def keras_tokens() -> keras.Model:
    tokens = keras.Input((None,), dtype="int32")
    y = keras.layers.Embedding(V, E, name="embed")(tokens)
    y = keras.layers.BatchNormalization(epsilon=1e-3, name="norm")(y)
    y = keras.layers.PReLU(shared_axes=[1], name="act")(y)
    y = keras.layers.GRU(H, return_sequences=True, name="rnn")(y)
    return keras.Model(tokens, keras.layers.Dense(A, name="out")(y))


MODELS = {
    "policy": (Policy, keras_policy, lambda rng: random_input(rng, (B, S, T, F)), T // 2),
    "band split": (BandSplit, keras_band_split, lambda rng: random_input(rng, (B, S, T, F)), T // 2),
    "tokens": (Tokens, keras_tokens, lambda rng: rng.integers(0, V, (B, T)).astype("int32"), T),
}


# ---- helpers ----------------------------------------------------------------------------------


def randomize_torch(module: torch.nn.Module, rng: np.random.Generator) -> torch.nn.Module:
    """Random values everywhere (running variances positive), so an unported or misplaced value shows;
    small (std 0.5) so that float32 outputs stay near 1 and the absolute tolerance means something."""
    with torch.no_grad():
        for name, value in module.state_dict(keep_vars=True).items():
            if value.is_floating_point():
                new = 0.5 * rng.standard_normal(tuple(value.shape))
                value.copy_(torch.as_tensor(np.abs(new) + 0.5 if "running_var" in name else new))
    return module.eval()


def randomize_keras(model: keras.Model, rng: np.random.Generator) -> keras.Model:
    for w in model.weights:
        if "state" not in w.name:  # a multi-state layer's carried state is not a parameter
            new = 0.5 * rng.standard_normal(tuple(w.shape))
            w.assign((np.abs(new) + 0.5 if "variance" in w.name else new).astype(w.dtype))
    return model


def run_torch(module: torch.nn.Module, x: np.ndarray, cut: int) -> list[np.ndarray]:
    """Outputs of ``x`` run in chunks of ``cut`` steps (state carried between them), joined on time."""
    with torch.no_grad():
        chunks = [module(torch.from_numpy(x[..., i : i + cut, :] if x.ndim == 4 else x)) for i in range(0, T, cut)]
    chunks = [c if isinstance(c, list) else [c] for c in chunks]
    return [np.concatenate([c[i].numpy() for c in chunks], axis=-2) for i in range(len(chunks[0]))]


def run_keras(model: keras.Model, x: np.ndarray, cut: int) -> list[np.ndarray]:
    chunks = [model(x[..., i : i + cut, :] if x.ndim == 4 else x) for i in range(0, T, cut)]
    chunks = [c if isinstance(c, list) else [c] for c in chunks]
    return [np.concatenate([keras.ops.convert_to_numpy(c[i]) for c in chunks], axis=-2) for i in range(len(chunks[0]))]


def snapshot(model) -> list[np.ndarray]:
    if isinstance(model, keras.layers.Layer):
        return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    return [v.detach().clone().numpy() for v in model.state_dict().values()]


def assert_untouched(model, before: list[np.ndarray]) -> None:
    for i, (a, b) in enumerate(zip(snapshot(model), before, strict=True)):
        assert np.array_equal(a, b), f"refused port changed destination weight {i} by {np.abs(a - b).max():.3g}"


# ---- (1) every layer kind, both directions ----------------------------------------------------


@pytest.mark.parametrize("direction", ["torch->keras", "keras->torch"])
@pytest.mark.parametrize("kind", MODELS)
def test_whole_model_round_trip_gives_equal_outputs(kind, direction, rng):
    make_torch, make_keras, make_input, cut = MODELS[kind]
    torch.manual_seed(0)
    module, model = make_torch(), make_keras()
    if direction == "torch->keras":
        assert port_weights(randomize_torch(module, rng), model) is model
    else:
        assert port_weights(randomize_keras(model, rng), module) is module
    module.eval()
    x = make_input(rng)
    assert_twins_match(run_keras(model, x, cut), run_torch(module, x, cut), f"{kind} {direction}: outputs")


# ---- (2) planted mismatches: each refused, naming the layers, the destination untouched -------


class Scale(torch.nn.Module):
    """A custom torch layer with a parameter: one learned scale per feature."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class WithHead(torch.nn.Module):
    """A module with an ``.rnn`` and more: the whole of it must be ported, not only ``.rnn``."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(F, H, batch_first=True)
        self.head = torch.nn.Linear(H, A)


def keras_sequential(*layers: keras.layers.Layer, features: int = F) -> keras.Sequential:
    model = keras.Sequential([keras.Input((features,)), *layers])
    return model


def built(layer: keras.layers.Layer, shape: tuple) -> keras.layers.Layer:
    layer.build(shape)
    return layer


# name: (make source, make destination, port_weights keyword arguments, what the message must name)
MISMATCHES = {
    "missing head": (Policy, lambda: keras_policy(heads=("policy",)), {}, ["torch 'value' (Linear)", "no partner"]),
    "missing head in the destination": (
        lambda: keras_policy(heads=("policy",)),
        Policy,
        {},
        ["torch 'value' (Linear): weight (1, 5), bias (1,) has no partner"],
    ),
    "extra layer": (
        Policy,
        lambda: keras_policy(extra=True),
        {},
        ["torch 'core' (MultiStateLSTM) cannot pair with Keras 'extra' (Dense)"],
    ),
    "transposed conv": (
        lambda: BandSplit(conv=torch.nn.ConvTranspose1d),
        keras_band_split,
        {},
        ["torch 'conv' (ConvTranspose1d) and Keras 'frames/conv' (Conv1D)", "no pair is registered"],
    ),
    "wrong kernel size": (
        lambda: BandSplit(kernel_size=5),
        keras_band_split,
        {},
        ["torch 'conv' (Conv1d) -> Keras 'frames/conv' (Conv1D)", "kernel_size=5 but Keras kernel_size=3"],
    ),
    "conv padding": (
        BandSplit,
        lambda: keras_band_split(padding="valid"),
        {},
        ["torch 'conv' (Conv1d) -> Keras 'frames/conv' (Conv1D)", "padding=(1,) but Keras padding='valid'"],
    ),
    "heads in the other order": (
        Policy,
        lambda: keras_policy(heads=("value", "policy")),
        {},
        ["torch 'policy' (Linear) -> Keras 'value' (Dense): the source converts to kernel (5, 2), bias (2,)"],
    ),
    "two candidates for one slot": (
        Policy,
        keras_policy,
        {"name_map": {"policy": "policy", "value": "policy"}},
        ["two candidates for one slot: sources 'policy', 'value' all map to destination 'policy'"],
    ),
    "name_map names no layer": (
        Policy,
        keras_policy,
        {"name_map": {"heads.0": "policy"}},
        ["name_map names source 'heads.0'", "known: 'encoder', 'core', 'policy', 'value'"],
    ),
    "wrong units": (
        Policy,
        lambda: keras_policy(units=H + 1),
        {},
        ["torch 'core' (MultiStateLSTM) -> Keras 'core' (MultiStateLSTM)", "hidden_size: source has 5"],
    ),
    "conv against dense in one slot": (
        BandSplit,
        lambda: keras_band_split(dense_for_conv=True),
        {},
        ["torch 'conv' (Conv1d) cannot pair with Keras 'conv' (Dense): a Conv1d pairs with Conv1D"],
    ),
    "batch norm without running stats": (
        lambda: Tokens(running_stats=False),
        keras_tokens,
        {},
        ["torch 'norm' (BatchNorm1d) -> Keras 'norm' (BatchNormalization)", "track_running_stats=False"],
    ),
    "layer norm eps": (
        BandSplit,
        lambda: keras_band_split(epsilon=1e-5),
        {},
        ["torch 'norm' (LayerNorm) -> Keras 'norm' (LayerNormalization)", "eps=0.001 but Keras epsilon=1e-05"],
    ),
    "unsupported torch layer with parameters": (
        lambda: torch.nn.Sequential(torch.nn.Linear(F, E), Scale(E), torch.nn.Linear(E, A)),
        lambda: keras_sequential(*(keras.layers.Dense(n, name=name) for n, name in ((E, "a"), (E, "b"), (A, "c")))),
        {},
        ["torch '1' (Scale) and Keras 'b' (Dense)", "no pair is registered for a torch Scale"],
    ),
    "unsupported Keras layer with weights": (
        lambda: keras_sequential(keras.layers.EinsumDense("bi,ij->bj", E, name="mix"), keras.layers.Dense(A)),
        lambda: torch.nn.Sequential(torch.nn.Linear(F, E), torch.nn.Linear(E, A)),
        {},
        ["torch '0' (Linear) cannot pair with Keras 'mix' (EinsumDense): a Linear pairs with Dense"],
    ),
    "module with .rnn and a head": (
        WithHead,
        lambda: built(keras.layers.LSTM(H), (None, None, F)),
        {},
        ["torch 'head' (Linear): weight (2, 5), bias (2,) has no partner"],
    ),
    "bias on one side only": (
        lambda: torch.nn.Linear(F, A, bias=False),
        lambda: built(keras.layers.Dense(A, name="d"), (None, F)),
        {},
        [
            "torch '<the model>' (Linear) -> Keras '<the model>' (Dense)",
            "converts to kernel (4, 2); the destination holds kernel (4, 2), bias (2,)",
        ],
    ),
    "unbuilt destination": (
        Policy,
        lambda: keras.Sequential([keras.layers.Dense(E, name="late")]),
        {},
        ["Keras 'late' (Dense) is not built"],
    ),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_planted_mismatch_is_refused_naming_the_layers(case):
    make_src, make_dst, kwargs, fragments = MISMATCHES[case]
    torch.manual_seed(0)
    src, dst = make_src(), make_dst()
    before = snapshot(dst)
    with pytest.raises(PortError) as refused:
        port_weights(src, dst, **kwargs)
    message = str(refused.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"the refusal does not name {missing}:\n{message}"
    assert "nothing was written" in message
    assert_untouched(dst, before)


# ---- (3) leftovers allowed explicitly, and name_map where order cannot decide ------------------


def test_allow_unported_ports_the_rest_and_lists_the_leftovers(rng):
    module, model = randomize_torch(Policy(), rng), keras_policy(heads=("policy",))
    report = port_report(module, model, allow_unported=True)
    assert [(p.source, p.destination) for p in report.pairs] == [
        ("torch 'encoder' (Linear)", "Keras 'encoder' (Dense)"),
        ("torch 'core' (MultiStateLSTM)", "Keras 'core' (MultiStateLSTM)"),
        ("torch 'policy' (Linear)", "Keras 'policy' (Dense)"),
    ], report.table()
    assert report.pairs[0].shapes == ((F, E), (E,)), report.table()
    assert report.unported_source == ["torch 'value' (Linear): weight (1, 5), bias (1,)"], report.table()
    assert report.unported_destination == [], report.table()
    with pytest.warns(UserWarning, match=r"left unported \(allow_unported=True\): torch 'value' \(Linear\)"):
        port_weights(module, model, allow_unported=True)
    x = random_input(rng, (B, S, T, F))
    assert_twins_match(run_keras(model, x, T)[0], run_torch(module, x, T)[0], "the ported policy head")


def test_name_map_pairs_what_order_cannot(rng):
    module, model = randomize_torch(Policy(), rng), keras_policy(heads=("value", "policy"))
    port_weights(module, model, name_map={"policy": "policy", "value": "value"})
    x = random_input(rng, (B, S, T, F))
    (value, policy), expected = run_keras(model, x, T // 2), run_torch(module, x, T // 2)
    assert_twins_match([policy, value], expected, "heads ported by name_map (policy, value)")


def test_two_models_of_one_framework_are_refused():
    with pytest.raises(TypeError, match="copies between torch and Keras; got two torch objects"):
        port_weights(Policy(), Policy())


# ---- (4) a custom layer pair in a few lines ---------------------------------------------------


class KerasScale(keras.layers.Layer):
    """The Keras twin of ``Scale``."""

    def build(self, input_shape: tuple) -> None:
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


@pytest.mark.parametrize("direction", ["torch->keras", "keras->torch"])
def test_register_pair_ports_a_custom_layer(direction, monkeypatch, rng):
    monkeypatch.setattr(model_porting, "_REGISTRY", list(model_porting._registry()))  # this test's pair only
    module = torch.nn.Sequential(torch.nn.Linear(F, E), Scale(E))
    model = keras_sequential(keras.layers.Dense(E), KerasScale())
    src, dst = (
        (randomize_torch(module, rng), model) if direction == "torch->keras" else (randomize_keras(model, rng), module)
    )
    with pytest.raises(PortError, match="no pair is registered for a torch Scale"):
        port_weights(src, dst)
    register_pair(
        Scale,
        KerasScale,
        to_keras=lambda t, k: [t.scale.detach().numpy()],
        to_torch=lambda k, t: {"scale": keras.ops.convert_to_numpy(k.scale)},
    )
    port_weights(src, dst)
    x = random_input(rng, (B, F))
    with torch.no_grad():
        assert_twins_match(model(x), module(torch.from_numpy(x)), "the custom pair's port")
