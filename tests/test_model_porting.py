"""Whole-model porting (``port_weights`` on models): every layer kind round trip, refusals, leftovers, custom pairs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

import models_keras
import models_torch
from harness import model_porting
from harness.model_porting import PortError, port_report, register_pair
from harness.porting import port_weights
from tests.helpers import B, F, H, S, T, random_input

pytestmark = pytest.mark.keras

E, A, C, V = 6, 2, 3, 7  # encoder width, actions, conv channels, vocabulary
ATOL = 1e-5  # float32 across frameworks


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


def keras_band_split(kernel_size: int = 3, epsilon: float = 1e-3, padding: str = "same") -> keras.Model:
    x = keras.Input(batch_shape=(B, S, None, F))
    y = keras.layers.TimeDistributed(keras.layers.Conv1D(C, kernel_size, padding=padding, name="conv"))(x)
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
    "policy": (Policy, keras_policy, lambda rng: random_input(rng, (B, S, T, F)), T // 3),
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
    for i, (got, expected) in enumerate(zip(run_keras(model, x, cut), run_torch(module, x, cut), strict=True)):
        error = float(np.abs(got - expected).max())
        assert error <= ATOL, f"{kind} {direction}: output {i} differs by {error:.3g}"
