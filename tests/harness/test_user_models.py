"""Users' own whole models, built in torch and in Keras, ported whole and proven equal chunk by chunk.

Written as a user would write them in their own suite: a band-split enhancer, an RL policy with two
heads and the seed's Keras audio model (bands -> one shared LSTM -> Concatenate -> Dense). Each is
ported torch -> Keras with ``port_weights`` and held by ``check_parity`` at the default tolerances:
every output and every carried state at every chunk boundary.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

import models_keras
import models_torch
from harness import check_parity
from harness.porting import port_weights
from harness.training import check_training_parity
from tests.helpers import random_input

pytestmark = pytest.mark.keras

B, S, T, F, E, H, A = 2, 4, 6, 4, 6, 8, 3  # batch, bands/streams, steps, features, encoder, units, actions


class Enhancer(torch.nn.Module):
    """Band-split enhancer: Linear encoder -> one LSTM shared over the bands -> LayerNorm -> Linear decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(F, E)
        self.rnn = models_torch.MultiStateLSTM(E, H, S)
        self.norm = torch.nn.LayerNorm(H)
        self.decoder = torch.nn.Linear(H, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.rnn(self.encoder(x))))


def keras_enhancer() -> keras.Model:
    x = keras.Input(batch_shape=(B, S, None, F))
    y = models_keras.MultiStateLSTM(H, S)(keras.layers.Dense(E)(x))
    y = keras.layers.LayerNormalization(epsilon=1e-5)(y)  # torch's LayerNorm eps
    return keras.Model(x, keras.layers.Dense(F)(y))


class Policy(torch.nn.Module):
    """RL policy: MLP encoder -> LSTM -> actor (action logits) and critic (value) heads."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(F, E), torch.nn.Tanh(), torch.nn.Linear(E, E), torch.nn.Tanh())
        self.core = models_torch.MultiStateLSTM(E, H, S)
        self.actor = torch.nn.Linear(H, A)
        self.critic = torch.nn.Linear(H, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.core(self.mlp(x))
        return self.actor(h), self.critic(h)


def keras_policy() -> keras.Model:
    x = keras.Input(batch_shape=(B, S, None, F))
    y = keras.layers.Dense(E, activation="tanh")(keras.layers.Dense(E, activation="tanh")(x))
    h = models_keras.MultiStateLSTM(H, S)(y)
    return keras.Model(x, [keras.layers.Dense(A)(h), keras.layers.Dense(1)(h)])


class SeedModel(torch.nn.Module):
    """The seed's audio model in torch: each band through one shared LSTM (its own state), concatenated, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = models_torch.MultiStateLSTM(F, H, S)
        self.dense = torch.nn.Linear(S * H, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.cat([self.shared(x[:, k], stream=k) for k in range(S)], dim=-1))


def keras_seed_model() -> keras.Model:
    """As ``harness.seed`` builds it: Input -> bands -> shared LSTM (stream=k) -> Concatenate -> Dense."""
    inputs = keras.Input(batch_shape=(B, S, None, F))
    shared = models_keras.MultiStateLSTM(H, S)
    bands = [shared(inputs[:, k], stream=k) for k in range(S)]
    return keras.Model(inputs, keras.layers.Dense(F)(keras.layers.Concatenate(axis=-1)(bands)))


class ActingPolicy(torch.nn.Module):
    """RL policy with two inputs, its observation and the index of its previous action (integers, kept as they
    are): each encoded (Linear, Embedding), summed -> LSTM -> actor."""

    def __init__(self) -> None:
        super().__init__()
        self.observe = torch.nn.Linear(F, E)
        self.recall = torch.nn.Embedding(A, E)
        self.core = models_torch.MultiStateLSTM(E, H, S)
        self.actor = torch.nn.Linear(H, A)

    def forward(self, obs: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        return self.actor(self.core(torch.tanh(self.observe(obs) + self.recall(prev_action))))


def keras_acting_policy() -> keras.Model:
    obs = keras.Input(batch_shape=(B, S, None, F), name="obs")
    prev_action = keras.Input(batch_shape=(B, S, None), dtype="int32", name="prev_action")
    y = keras.layers.Add()([keras.layers.Dense(E)(obs), keras.layers.Embedding(A, E)(prev_action)])
    h = models_keras.MultiStateLSTM(H, S)(keras.layers.Activation("tanh")(y))
    return keras.Model([obs, prev_action], keras.layers.Dense(A)(h))  # a dict finds its inputs by these names


MODELS = {
    "enhancer": (Enhancer, keras_enhancer),
    "policy": (Policy, keras_policy),
    "seed": (SeedModel, keras_seed_model),
    "acting": (ActingPolicy, keras_acting_policy),
}


@pytest.fixture(scope="module")
def ported() -> dict[str, tuple[torch.nn.Module, keras.Model]]:
    """Each user model in torch and its Keras twin with the torch weights ported whole (``port_weights``).

    Built once for the module: the planted faults reuse the Keras models, whose compiled predict functions
    are the costly part of a check (the checks leave every model as they found it).
    """
    pairs = {}
    for name, (torch_model, keras_model) in MODELS.items():
        torch.manual_seed(0)
        pairs[name] = (module := torch_model(), port_weights(module, keras_model()))
    return pairs


@pytest.mark.parametrize("name, outputs", [("enhancer", {"output"}), ("policy", {"output.0", "output.1"}),
                                            ("seed", {"output"})])  # fmt: skip
def test_a_users_whole_model_ports_and_matches_at_every_boundary(rng, ported, name, outputs):
    torch_model, keras_model = ported[name]
    report = check_parity({"torch": torch_model, "keras": keras_model}, random_input(rng, (B, S, T, F)), "halves")
    assert report.ok, report.failure_message()
    cross = [c for c in report.comparisons if c.pair == "keras vs torch"]
    assert {c.tensor for c in cross} == outputs | {"h", "c"}  # every output and state held across frameworks
    assert {c.chunk for c in cross} == {0, 1}


def test_a_nudged_head_fails_on_that_output_alone(rng, ported):
    torch_model, keras_model = ported["policy"]
    (critic,) = [layer for layer in keras_model.layers if getattr(layer, "units", None) == 1]
    kernel, bias = critic.get_weights()
    critic.set_weights([kernel, bias + 1e-3])
    try:
        report = check_parity({"torch": torch_model, "keras": keras_model}, random_input(rng, (B, S, T, F)), "halves")
    finally:
        critic.set_weights([kernel, bias])
    assert {(c.pair, c.tensor) for c in report.failures()} == {("keras vs torch", "output.1")}, report.table()


class ForgetfulEnhancer(Enhancer):
    """A planted fault: the model resets its recurrent state at every call, so nothing is carried across chunks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rnn.reset_states()
        return super().forward(x)


def test_a_model_that_drops_its_state_between_chunks_fails(rng, ported):
    enhancer, keras_model = ported["enhancer"]
    forgetful = ForgetfulEnhancer()
    forgetful.load_state_dict(enhancer.state_dict())
    report = check_parity({"keras": keras_model, "torch": forgetful}, random_input(rng, (B, S, T, F)), "halves")
    failed = {(c.pair, c.tensor, c.chunk) for c in report.failures()}
    assert ("torch chunked vs whole", "output", 1) in failed and ("torch vs keras", "output", 1) in failed
    assert not any(chunk == 0 for _, _, chunk in failed)  # the first chunk starts from zeros on both sides


def test_a_model_without_carried_state_is_refused_naming_the_runner_protocol(rng):
    x = random_input(rng, (B, S, T, F))
    plain = keras.Model(inputs := keras.Input((S, None, F)), keras.layers.Dense(F)(inputs))
    for model in (torch.nn.Sequential(torch.nn.Linear(F, F)), plain):
        with pytest.raises(ValueError, match="holds no multi-state layer.*harness.parity.Runner"):
            check_parity({"model": model}, x, "halves")


def test_the_policy_trains_alike_in_torch_and_keras(rng, ported):
    torch_model, keras_model = ported["policy"]
    x = random_input(rng, (B, S, T, F))
    targets = [random_input(rng, (B, S, T, A)), random_input(rng, (B, S, T, 1))]
    report = check_training_parity(torch_model, x, targets, "halves", keras_model=keras_model, steps=2)
    assert report.ok, report.table()
    # planted fault: a torch policy whose critic gradient never reaches the core trains apart from its Keras twin
    detached = DetachedCritic()
    detached.load_state_dict(torch_model.state_dict())
    bad = check_training_parity(detached, x, targets, "halves", keras_model=keras_model, steps=2)
    assert not bad.ok and bad.max_rel_weight_error > 10 * bad.rtol, bad.table()


class DetachedCritic(Policy):
    """A planted fault: the critic learns from a detached core output, so training updates differ from Keras's."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.core(self.mlp(x))
        return self.actor(h), self.critic(h.detach())


def acting_inputs(rng) -> dict:
    return {"obs": random_input(rng, (B, S, T, F)), "prev_action": rng.integers(0, A, (B, S, T))}


def test_a_model_of_two_inputs_gets_them_chunked_alike_by_position_and_by_name(rng, ported):
    torch_model, keras_model = ported["acting"]
    x = acting_inputs(rng)
    for given in (x, (x["obs"], x["prev_action"])):  # forward(**x) and a Keras dict; forward(*x) and a list
        report = check_parity({"torch": torch_model, "keras": keras_model}, given, "halves")
        assert report.ok, report.failure_message()
        cross = {(c.tensor, c.chunk) for c in report.comparisons if c.pair == "keras vs torch"}
        assert cross == {(tensor, chunk) for tensor in ("output", "h", "c") for chunk in (0, 1)}
    assert report.input_shape == {"x[0]": (B, S, T, F), "x[1]": (B, S, T)} and report.input_dtype == "float32"


class ForgetsItsLastAction(ActingPolicy):
    """A planted fault: the second input is taken and ignored (as if wired to zeros)."""

    def forward(self, obs: torch.Tensor, prev_action: torch.Tensor) -> torch.Tensor:
        return super().forward(obs, torch.zeros_like(prev_action))


def test_a_model_that_ignores_its_second_input_fails_on_every_chunk(rng, ported):
    torch_model, keras_model = ported["acting"]
    forgetful = ForgetsItsLastAction()
    forgetful.load_state_dict(torch_model.state_dict())
    report = check_parity({"keras": keras_model, "torch": forgetful}, acting_inputs(rng), "halves")
    failed = {(c.pair, c.tensor, c.chunk) for c in report.failures()}
    expected = {("torch vs keras", tensor, chunk) for tensor in ("output", "h", "c") for chunk in (0, 1)}
    assert failed == expected, report.table()  # each side is consistent in itself: only the cross rows fail


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prev_action": (B, S, T - 1)}, r"same batch \(axis 0\) and time \(axis 2\).*"
         r"x\['obs'\] \(2, 4, 6, 4\), x\['prev_action'\] \(2, 4, 5\)"),
        ({"obs": (B + 1, S, T, F)}, r"x\['obs'\] \(3, 4, 6, 4\), x\['prev_action'\] \(2, 4, 6\)"),
        ({"prev_action": (B, S)}, r"each be \(batch, ·, time, ...\).*x\['prev_action'\] \(2, 4\)"),
    ],
    ids=["time", "batch", "rank"],
)  # fmt: skip
def test_inputs_that_disagree_are_refused_naming_each_shape_before_any_state_moves(rng, ported, change, message):
    torch_model, keras_model = ported["acting"]
    x = acting_inputs(rng) | {name: rng.integers(0, A, shape) for name, shape in change.items()}
    carried = torch.ones(1, B, S, H)
    torch_model.core.set_states([carried, carried])
    try:
        with pytest.raises(ValueError, match=message):
            check_parity({"torch": torch_model, "keras": keras_model}, x, "halves")
        assert all(torch.equal(state, carried) for state in torch_model.core.get_states())
    finally:
        torch_model.core.reset_states()


def test_the_two_input_policy_trains_alike_in_torch_and_keras(rng, ported):
    torch_model, keras_model = ported["acting"]
    x, target = acting_inputs(rng), random_input(rng, (B, S, T, A))
    report = check_training_parity(torch_model, x, target, "halves", keras_model=keras_model, steps=2)
    assert report.ok, report.table()


def test_several_inputs_with_resets_or_to_an_exported_file_are_refused(rng, ported):
    torch_model, keras_model = ported["acting"]
    x = acting_inputs(rng)
    with pytest.raises(ValueError, match=r"a multi-state module takes one input x \(B, S, T, F\), got \{"):
        check_training_parity(torch_model.core, x, random_input(rng, (B, S, T, H)), "halves")
    with pytest.raises(ValueError, match="a model with several inputs takes its resets as one of them"):
        check_parity({"torch": torch_model}, x, "halves", resets=np.zeros((B, S, T), bool))
    with pytest.raises(ValueError, match=r"exported files \['onnx'\] take one input x"):
        check_parity({"torch": torch_model, "onnx": "policy.onnx"}, x, "halves")
    with pytest.raises(ValueError, match="x holds no input"):
        check_parity({"torch": torch_model}, (), "halves")
    with pytest.raises(ValueError, match=r"nested list at x\[0\], x\[1\]; .* pass np.asarray\(x\)"):
        check_parity({"torch": torch_model}, x["obs"].tolist(), "halves")  # one input, as nested lists
