"""Per-step resets and per-stream lengths (issue 13): torch against a step-by-step reference, Keras against torch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import default_tolerance
from harness.porting import keras_class, keras_twin, port_weights, read_weights, torch_class
from models_keras import multistate_layers
from multistate_core.cells import CELLS as CELL_SPECS
from multistate_core.cells import to_keras
from tests.conformance import assert_gradients_match, assert_twins_match
from tests.helpers import CELLS, B, F, H, S, T
from tests.reference import ReferenceRunner, reference_run


def make_module(cell: str, dtype: str = "float64", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch_class(cell)(F, H, S, dtype=getattr(torch, dtype), **kwargs)


def plan(rng: np.random.Generator, rate: float = 0.2, steps: int = T) -> tuple[np.ndarray, np.ndarray]:
    """Random resets ``(B, S, T)`` and lengths ``(B, S)`` in ``[0, T]``, with 0 and T present."""
    resets = rng.random((B, S, steps)) < rate
    lengths = rng.integers(0, steps + 1, (B, S))
    lengths[0, 0], lengths[-1, -1] = 0, steps
    return resets, lengths


def random_states(module, rng, dtype="float64") -> tuple[torch.Tensor, ...]:
    n = len(module.state_names)
    return tuple(torch.from_numpy(rng.standard_normal((module.num_layers, B, S, H)).astype(dtype)) for _ in range(n))


def chunk_lengths(lengths: np.ndarray, start: int, size: int) -> np.ndarray:
    """A whole-sequence length seen by the chunk ``[start, start + size)``."""
    return np.clip(lengths - start, 0, size)


def run_chunked(module, x, resets, lengths, cuts):
    """``module`` over ``x`` in chunks cut at ``cuts``; returns the whole output and the states after each chunk."""
    bounds = [0, *cuts, x.shape[2]]
    outs, states = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        outs.append(
            module(
                torch.from_numpy(x[:, :, a:b]),
                resets=torch.from_numpy(resets[:, :, a:b]),
                lengths=torch.from_numpy(chunk_lengths(lengths, a, b - a)),
            )
        )
        states.append(module.get_states())
    return torch.cat(outs, 2), states


# ---- torch --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_chunked_equals_whole_equals_reference(cell, layers, dtype, rng):
    module = make_module(cell, dtype, num_layers=layers)
    x = rng.standard_normal((B, S, T, F)).astype(dtype)
    resets, lengths = plan(rng)
    start = random_states(module, rng, dtype)
    ref_out, ref_states = reference_run(module, torch.from_numpy(x), start, resets=resets, lengths=lengths)
    with torch.no_grad():
        module.set_states(start)
        whole = module(torch.from_numpy(x), resets=torch.from_numpy(resets), lengths=torch.from_numpy(lengths))
        assert_twins_match(whole, ref_out)
        for got, want in zip(module.get_states(), ref_states):
            assert_twins_match(got, want)
        for cut in range(1, T):  # every chunk boundary
            module.set_states(start)
            out, after = run_chunked(module, x, resets, lengths, [cut])
            assert_twins_match(out, ref_out)
            _, mid_states = reference_run(
                module,
                torch.from_numpy(x[:, :, :cut]),
                start,
                resets=resets[:, :, :cut],
                lengths=np.minimum(lengths, cut),
            )
            for got, want in zip(after[0], mid_states):
                assert_twins_match(got, want)
            for got, want in zip(after[1], ref_states):
                assert_twins_match(got, want)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_per_stream_matches_reference(cell, rng):
    module = make_module(cell)
    x = rng.standard_normal((B, S, T, F))
    resets, lengths = plan(rng)
    start = random_states(module, rng)
    ref_out, ref_states = reference_run(module, torch.from_numpy(x), start, resets=resets, lengths=lengths)
    with torch.no_grad():
        module.set_states(start)
        for k in range(S):
            out = module(
                torch.from_numpy(x[:, k]),
                k,
                resets=torch.from_numpy(resets[:, k]),
                lengths=torch.from_numpy(lengths[:, k]),
            )
            assert_twins_match(out, ref_out[:, k])
    for got, want in zip(module.get_states(), ref_states):
        assert_twins_match(got, want)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_length_zero_keeps_state(cell, rng):
    module = make_module(cell)
    start = random_states(module, rng)
    module.set_states(start)
    lengths = np.zeros((B, S), dtype=np.int64)
    lengths[1, 2] = T
    resets = np.ones((B, S, T), dtype=bool)  # ignored where the length is 0
    out = module(torch.from_numpy(rng.standard_normal((B, S, T, F))), resets=resets, lengths=lengths)
    after = module.get_states()
    keep = torch.from_numpy(lengths == 0)[None, :, :, None]
    for a, s in zip(after, start):
        assert torch.equal(torch.where(keep, a, s), s)
        assert not torch.equal(a[:, 1, 2], s[:, 1, 2])
    assert bool(out[torch.from_numpy(lengths == 0)].eq(0).all())


@pytest.mark.parametrize("cell", CELLS)
def test_torch_no_gradient_across_a_reset(cell, rng):
    module = make_module(cell)
    start = tuple(s.requires_grad_(True) for s in random_states(module, rng))
    resets = np.zeros((B, S, T), dtype=bool)
    resets[0, 1, 4] = resets[1, 0, 7] = True
    x = torch.from_numpy(rng.standard_normal((B, S, T, F)))
    out, final = module(x, resets=resets, initial_state=start, return_state=True)
    loss = out[:, :, 7:].sum() + sum(f.sum() for f in final)  # everything after both resets
    grads = torch.autograd.grad(loss, start)
    for g in grads:
        assert bool(g[:, 0, 1].eq(0).all()) and bool(g[:, 1, 0].eq(0).all())  # reset streams: none
        assert bool(g[:, 0, 0].ne(0).any())  # a stream without reset: some


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(CELLS),
    steps=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    rate=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    data=st.data(),
)
def test_torch_random_plans_match_reference(cell, steps, seed, rate, data):
    rng = np.random.default_rng(seed)
    module = make_module(cell)
    x = rng.standard_normal((B, S, steps, F))
    resets, lengths = plan(rng, rate, steps)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, steps - 1)), max_size=3)))) if steps > 1 else []
    start = random_states(module, rng)
    ref_out, ref_states = reference_run(module, torch.from_numpy(x), start, resets=resets, lengths=lengths)
    with torch.no_grad():
        module.set_states(start)
        out, after = run_chunked(module, x, resets, lengths, cuts)
    assert_twins_match(out, ref_out)
    for got, want in zip(after[-1], ref_states):
        assert_twins_match(got, want)


def test_torch_common_path_is_unchanged(rng):
    """No reset inside the chunk and full lengths: exactly the plain call."""
    module = make_module("lstm")
    x = torch.from_numpy(rng.standard_normal((B, S, T, F)))
    resets = np.zeros((B, S, T), dtype=bool)
    plain = module(x)
    module.reset_states()
    assert torch.equal(module(x, resets=resets, lengths=np.full((B, S), T)), plain)


TORCH_BAD = [
    ({"resets": np.zeros((B, S, T - 1), bool)}, "resets must have shape"),
    ({"resets": np.zeros((B, S, T), np.int64)}, "resets must be boolean"),
    ({"lengths": np.full((B,), T)}, "lengths must have shape"),
    ({"lengths": np.full((B, S), float(T))}, "lengths must be integers"),
    ({"lengths": np.full((B, S), -1)}, "lengths must lie in"),
    ({"lengths": np.full((B, S), T + 1)}, "lengths must lie in"),
]


@pytest.mark.parametrize(("kwargs", "message"), TORCH_BAD)
def test_torch_bad_step_args_leave_state(kwargs, message, rng):
    module = make_module("lstm")
    module.set_states(random_states(module, rng))
    before = module.get_states()
    with pytest.raises(ValueError, match=message):
        module(torch.from_numpy(rng.standard_normal((B, S, T, F))), **kwargs)
    for a, b in zip(module.get_states(), before):
        assert torch.equal(a, b)


# ---- Keras --------------------------------------------------------------------------------------------


def keras_layer(module):
    layer = keras_twin(module)
    layer.batch_size = B
    layer.build((B, S, None, F))
    return layer


@pytest.mark.keras
@pytest.mark.parametrize("cell", CELLS)
def test_keras_matches_torch_chunked(cell, rng):
    module = make_module(cell, num_layers=2)
    layer = keras_layer(module)
    x = rng.standard_normal((B, S, T, F))
    resets, lengths = plan(rng)
    start = random_states(module, rng)
    module.set_states(start)
    layer.set_states([s.numpy() for s in start])
    with torch.no_grad():
        for a, b in ((0, 5), (5, 6), (6, T)):
            xs, rs, ns = x[:, :, a:b], resets[:, :, a:b], chunk_lengths(lengths, a, b - a)
            want = module(torch.from_numpy(xs), resets=rs, lengths=ns)
            got = layer(xs, resets=rs, lengths=ns)
            assert_twins_match(keras.ops.convert_to_numpy(got), want)
            for k, t in zip(layer.get_states(), module.get_states()):
                assert_twins_match(k, t)


@pytest.mark.keras
def test_keras_per_stream_and_first_step_resets(rng):
    module = make_module("gru")
    layer = keras_layer(module)
    x = rng.standard_normal((B, S, T, F))
    resets, lengths = plan(rng)
    resets[:, :, 1:] = False  # first-step resets only: the fast path
    with torch.no_grad():
        for k in range(S):
            want = module(torch.from_numpy(x[:, k]), k, resets=resets[:, k], lengths=lengths[:, k])
            got = layer(x[:, k], stream=k, resets=resets[:, k], lengths=lengths[:, k])
            assert_twins_match(keras.ops.convert_to_numpy(got), want)
        want = module(torch.from_numpy(x), resets=resets)
        got = layer(x, resets=resets)
    assert_twins_match(keras.ops.convert_to_numpy(got), want)
    for k, t in zip(layer.get_states(), module.get_states()):
        assert_twins_match(k, t)


def stepped_model(module, *, with_mask: bool = False) -> keras.Model:
    """A functional model: inputs ``x``, ``resets`` and ``lengths`` (or ``x`` through ``Masking``)."""
    layer = keras_twin(module)
    x_in = keras.Input(batch_shape=(B, S, None, F), dtype="float64")
    if with_mask:
        return keras.Model(x_in, layer(keras.layers.Masking(0.0, dtype="float64")(x_in)))
    r_in = keras.Input(batch_shape=(B, S, None), dtype="bool")
    n_in = keras.Input(batch_shape=(B, S), dtype="int32")
    return keras.Model([x_in, r_in, n_in], layer(x_in, resets=r_in, lengths=n_in))


@pytest.mark.keras
@pytest.mark.parametrize("cell", CELLS)
def test_keras_functional_model_with_reset_inputs(cell, rng):
    module = make_module(cell)
    model = stepped_model(module)
    x = rng.standard_normal((B, S, T, F))
    resets, lengths = plan(rng)
    with torch.no_grad():
        for a, b in ((0, 7), (7, T)):
            xs, rs, ns = x[:, :, a:b], resets[:, :, a:b], chunk_lengths(lengths, a, b - a).astype("int32")
            want = module(torch.from_numpy(xs), resets=rs, lengths=ns)
            assert_twins_match(model.predict_on_batch([xs, rs, ns]), want)
    (layer,) = multistate_layers(model)
    for k, t in zip(layer.get_states(), module.get_states()):
        assert_twins_match(k, t)


@pytest.mark.keras
def test_keras_mask_equals_lengths(rng):
    module = make_module("lstm")
    x = rng.standard_normal((B, S, T, F))
    _, lengths = plan(rng)
    valid = np.arange(T)[None, None, :] < lengths[:, :, None]
    x = np.where(valid[..., None], x, 0.0)
    with torch.no_grad():
        want = module(torch.from_numpy(x), lengths=lengths)
    model = stepped_model(module, with_mask=True)
    assert_twins_match(model.predict_on_batch(x), want)
    layer = keras_layer(module)
    assert_twins_match(keras.ops.convert_to_numpy(layer(x, mask=valid)), want)
    for k, t in zip(layer.get_states(), module.get_states()):
        assert_twins_match(k, t)


def torch_last_outputs(y: torch.Tensor, lengths: np.ndarray) -> np.ndarray:
    """torch's rule read off the sequence output ``(B, S, T, H)``: ``y[b, s, length - 1]``, zeros for length 0."""
    last = y.detach().numpy()[np.arange(B)[:, None], np.arange(S)[None, :], np.maximum(lengths - 1, 0)]
    return np.where((lengths > 0)[..., None], last, 0.0)


@pytest.mark.keras
@pytest.mark.parametrize(("how", "cell"), [("lengths=", "lstm"), ("mask=", "gru"), ("Masking", "rnn")])
def test_keras_last_output_follows_the_torch_rule(how, cell, rng):
    """``return_sequences=False``: the output of each stream's last valid step in the chunk, zeros for length 0
    (not the carried h), equal to torch's ``y[..., length - 1, :]`` on the same weights and states; through
    ``lengths=``, ``mask=`` and a ``Masking`` layer (float64, 1e-12)."""
    module = make_module(cell)
    layer = keras_class(cell)(H, S, return_sequences=False, batch_size=B, dtype="float64")
    layer.build((B, S, T, F))
    port_weights(module, layer)
    lengths = np.array([[0, T, 5], [1, 0, T]])  # empty, full and partial streams
    valid = np.arange(T) < lengths[..., None]
    x = np.where(valid[..., None], rng.standard_normal((B, S, T, F)), 0.0)
    start = random_states(module, rng)  # a carried h far from zero
    module.set_states(start)
    with torch.no_grad():
        want = torch_last_outputs(module(torch.from_numpy(x), lengths=torch.from_numpy(lengths)), lengths)
    layer.set_states([s.numpy() for s in start])
    if how == "Masking":
        inputs = keras.Input(batch_shape=(B, S, T, F), dtype="float64")
        got = keras.Model(inputs, layer(keras.layers.Masking(0.0, dtype="float64")(inputs))).predict_on_batch(x)
    else:
        got = layer(x, **({"lengths": lengths} if how == "lengths=" else {"mask": valid}))
    error = float(np.abs(keras.ops.convert_to_numpy(got) - want).max())
    assert error <= 1e-12, f"{how}: max error {error:.3g} against torch's y[..., length - 1, :] / zeros"
    for k, t in zip(layer.get_states(), module.get_states()):
        assert_twins_match(k, t)


@pytest.mark.keras
@pytest.mark.parametrize("cell", CELLS)
def test_keras_training_step_with_resets_matches_torch(cell, rng):
    """One SGD step on a chunk with resets and lengths: the same weights afterwards on both sides."""
    module = make_module(cell)
    model = stepped_model(module)
    x = rng.standard_normal((B, S, T, F))
    target = rng.standard_normal((B, S, T, H))
    resets, lengths = plan(rng)
    lr = 0.1
    frozen = [] if CELL_SPECS[cell].split_bias else [p for n, p in module.rnn.named_parameters() if "bias_hh" in n]
    for p in frozen:
        p.requires_grad_(False)
    out = module(torch.from_numpy(x), resets=resets, lengths=lengths)
    loss = torch.nn.functional.mse_loss(out, torch.from_numpy(target))
    loss.backward()
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        from harness.training.twins import _sum_of_squares_loss

        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr / target.size), loss=_sum_of_squares_loss())
        keras_loss = float(np.asarray(model.train_on_batch([x, resets, lengths.astype("int32")], target)))
    finally:
        keras.config.set_floatx(floatx)
    np.testing.assert_allclose(keras_loss / target.size, loss.item(), rtol=1e-6)
    (layer,) = multistate_layers(model)
    for tl, kl in zip(read_weights(module).layers, read_weights(layer).layers):
        for t, k in zip(to_keras(cell, tl), to_keras(cell, kl)):
            assert_gradients_match(k, t)
    for k, t in zip(layer.get_states(), module.get_states()):
        assert_gradients_match(k, t)


KERAS_BAD = [
    ({"resets": np.zeros((B, S, T - 1), bool)}, "resets must have shape"),
    ({"resets": np.zeros((B, S, T), np.int32)}, "resets must be boolean"),
    ({"lengths": np.full((B,), T, np.int32)}, "lengths must have shape"),
    ({"lengths": np.full((B, S), float(T))}, "lengths must be integers"),
    ({"lengths": np.full((B, S), -1, np.int32)}, "lengths must lie in"),
    ({"lengths": np.full((B, S), T + 1, np.int32)}, "lengths must lie in"),
    ({"mask": np.ones((B, S), bool)}, "mask must have shape"),
    ({"mask": np.ones((B, S, T), np.int32)}, "mask must be boolean"),
    ({"mask": np.arange(T)[None, None, :] % 2 == 0}, "mask must be right-padded"),
]


@pytest.mark.keras
@pytest.mark.parametrize(("kwargs", "message"), KERAS_BAD)
def test_keras_bad_step_args_leave_state(kwargs, message, rng):
    module = make_module("lstm")
    layer = keras_layer(module)
    layer.set_states([s.numpy() for s in random_states(module, rng)])
    before = layer.get_states()
    if "mask" in kwargs and kwargs["mask"].shape == (1, 1, T):
        kwargs = {"mask": np.broadcast_to(kwargs["mask"], (B, S, T))}
    with pytest.raises(ValueError, match=message):
        layer(rng.standard_normal((B, S, T, F)), **kwargs)
    for a, b in zip(layer.get_states(), before):
        assert np.array_equal(a, b)


@pytest.mark.keras
def test_keras_bad_step_args_in_a_functional_graph():
    layer = keras_twin(make_module("lstm"))
    x_in = keras.Input(batch_shape=(B, S, None, F), dtype="float64")
    with pytest.raises(ValueError, match="resets must be boolean"):
        layer(x_in, resets=keras.Input(batch_shape=(B, S, None), dtype="int32"))
    with pytest.raises(ValueError, match="lengths must have shape"):
        layer(x_in, lengths=keras.Input(batch_shape=(B, S, 1), dtype="int32"))


@pytest.mark.keras
def test_keras_common_path_is_unchanged(rng):
    """No reset inside the chunk and full lengths (eager): the layer's usual fast path, bit for bit."""
    from models_keras import fast_paths

    layer = keras_layer(make_module("lstm"))
    path = fast_paths.path_name(layer, False)
    x = rng.standard_normal((B, S, T, F))
    plain = keras.ops.convert_to_numpy(layer(x))
    layer.reset_states()
    same = layer(x, resets=np.zeros((B, S, T), bool), lengths=np.full((B, S), T, "int32"))
    assert np.array_equal(keras.ops.convert_to_numpy(same), plain)
    assert fast_paths.path_name(layer, False) == path


class IgnoresResets(ReferenceRunner):
    """Planted fault: takes resets but never applies them."""

    def run(self, x, resets=None, lengths=None):
        return super().run(x, lengths=lengths)


class NoStepArgs:
    """A runner whose ``run(x)`` cannot take resets or lengths."""

    def reset(self) -> None: ...

    def run(self, x):
        return x

    def states(self) -> dict:
        return {}


def _episodes(rng, steps: int = T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.standard_normal((B, S, steps, F))
    return x, rng.random((B, S, steps)) < 0.15, rng.integers(steps // 2, steps + 1, (B, S))


@pytest.mark.parametrize("cell", CELLS)
def test_engine_proves_resets_and_lengths_against_the_reference(cell, rng):
    from harness import check_parity

    module = make_module(cell)
    x, resets, lengths = _episodes(rng)
    report = check_parity(
        {"torch": module, "reference": ReferenceRunner(module)}, x, "random", resets=resets, lengths=lengths
    )
    assert report.ok, report.failure_message()
    planted = check_parity(
        {"torch": module, "ignores resets": IgnoresResets(module)}, x, "random", resets=resets, lengths=lengths
    )
    assert not planted.ok
    first = planted.first_failure()
    bad = np.argwhere(resets & (np.arange(T) < lengths[:, :, None]))
    assert first.pair == "ignores resets vs torch" and first.where["step"] >= bad[:, 2].min(), first


def test_engine_refuses_step_args_a_runner_cannot_take(rng):
    from harness import check_parity

    x, resets, lengths = _episodes(rng)
    with pytest.raises(ValueError, match="'plain' cannot take resets/lengths"):
        check_parity({"plain": NoStepArgs()}, x, "halves", resets=resets)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 12\]"):
        check_parity({"torch": make_module("gru")}, x, "halves", lengths=lengths + T)


@pytest.mark.keras
@pytest.mark.parametrize("cell", CELLS)
def test_engine_proves_keras_resets_and_lengths_against_torch(cell, rng):
    from harness import check_parity

    module = make_module(cell)
    x, resets, lengths = _episodes(rng)
    models = {"torch": module, "keras layer": keras_twin(module), "keras model": stepped_model(module)}
    # Equal chunks: one traced shape per model (a random plan retraces each chunk length on JAX, ~3x the time);
    # the resets and lengths still fall on both sides of each boundary.
    report = check_parity(models, x, [T // 3] * 3, resets=resets, lengths=lengths.astype("int32"))
    assert report.ok, report.failure_message()


@pytest.mark.keras
@pytest.mark.parametrize("cell", CELLS)
def test_training_parity_holds_with_resets_and_lengths(cell, rng):
    from harness import check_training_parity

    module = make_module(cell)
    x, resets, lengths = _episodes(rng)
    target = rng.standard_normal((B, S, T, H))
    report = check_training_parity(module, x, target, [5, T - 5], lr=0.2, steps=4, resets=resets, lengths=lengths)
    assert report.ok, report.table()


@pytest.mark.keras
def test_training_parity_catches_a_module_that_ignores_resets(rng):
    """Planted fault: the torch side trains as if no stream restarted; the training check must fail."""
    from harness import check_training_parity

    class IgnoresResetsInTraining(type(make_module("gru"))):
        def forward(self, x, stream=None, *, resets=None, **kwargs):
            return super().forward(x, stream, **kwargs)

    torch.manual_seed(0)
    module = IgnoresResetsInTraining(F, H, S, dtype=torch.float64)
    x, resets, lengths = _episodes(rng)
    report = check_training_parity(module, x, rng.standard_normal((B, S, T, H)), [5, T - 5], resets=resets)
    assert not report.ok, report.table()


PATHS = [(c, p) for c in CELLS for p in ("cuts", "packed", "saturated") if (c, p) != ("rnn", "saturated")]  # no gates


def _folded_run(module, x, states, resets, lengths, path):
    """``inner_rnn.run`` on the folded rows of ``module``, the chooser planted to answer ``path`` ("cuts",
    "packed", "saturated"; None: its own answer); output and states unfolded, and what the chooser itself chose."""
    from models_torch import inner_rnn
    from models_torch.ops import paths

    chosen = []

    def planted(*args, **kwargs):
        chosen.append(choose(*args, **kwargs))
        return chosen[-1] if path is None else paths.Path(path)

    layers, choose = module.num_layers, paths.path_for
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(paths, "path_for", planted)
        out, new = inner_rnn.run(
            module.rnn,
            x.reshape(B * S, T, F),
            tuple(s.reshape(layers, B * S, H) for s in states),
            resets=torch.from_numpy(resets).reshape(B * S, T),
            lengths=torch.from_numpy(lengths).reshape(B * S),
        )
    return out.reshape(B, S, T, H), tuple(s.reshape(layers, B, S, H) for s in new), chosen[0]


@pytest.mark.parametrize(("cell", "path"), PATHS)
def test_every_segment_path_equals_the_reference(cell, path, rng):
    """Cutting the time axis, packing the segments and saturating the gates: the same numbers (float64, 1e-12)."""
    module = make_module(cell, num_layers=2)
    x, resets, lengths = _episodes(rng)
    states = tuple(torch.from_numpy(rng.standard_normal((2, B, S, H))) for _ in module.state_names)
    want, want_states = reference_run(module, torch.from_numpy(x), states, resets=resets, lengths=lengths)
    with torch.no_grad():
        out, new, _ = _folded_run(module, torch.from_numpy(x), states, resets, lengths, path)
    assert_twins_match(out, want)
    for got, expected in zip(new, want_states, strict=True):
        assert_twins_match(got, expected)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saturated_gates_pass_the_same_gradients_as_packed_segments(cell, rng):
    """Every weight, input and initial-state gradient through the saturated path equals the packed one (1e-12)."""
    module = make_module(cell, num_layers=2)
    x, resets, lengths = _episodes(rng)
    target = torch.from_numpy(rng.standard_normal((B, S, T, H)))
    start = [x] + [rng.standard_normal((2, B, S, H)) for _ in module.state_names]
    grads = {}
    for path in ("packed", "saturated"):
        inputs = [torch.from_numpy(a).requires_grad_(True) for a in start]
        out, new, _ = _folded_run(module, inputs[0], tuple(inputs[1:]), resets, lengths, path)
        loss = ((out - target) ** 2).sum() + sum((s**2).sum() for s in new)
        grads[path] = torch.autograd.grad(loss, inputs + list(module.parameters()))
    for got, want in zip(grads["saturated"], grads["packed"], strict=True):
        assert_twins_match(got, want)


def test_saturation_too_weak_to_shut_the_gates_is_caught(rng, monkeypatch):
    """Planted fault: flag weights of 8.5 instead of ~1e307 let the old state leak through a reset."""
    from models_torch.ops import saturate

    weak = saturate.flag_columns
    monkeypatch.setattr(saturate, "flag_columns", lambda *a: weak(*a).clamp(-8.5, 8.5))
    module = make_module("lstm", num_layers=2)
    x, resets, lengths = _episodes(rng)
    states = tuple(torch.from_numpy(rng.standard_normal((2, B, S, H))) for _ in module.state_names)
    want, _ = reference_run(module, torch.from_numpy(x), states, resets=resets, lengths=lengths)
    with torch.no_grad():
        out, _, _ = _folded_run(module, torch.from_numpy(x), states, resets, lengths, "saturated")
    error = float((out - want.detach()).abs().max())
    assert error > 1e-6, f"a leaking reset went unnoticed: max error {error:.1e}"


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(("cell", "path"), [(c, p) for c in CELLS for p in ("cuts", "packed", None)])
def test_a_reset_inside_the_chunk_clears_a_non_finite_state(cell, path, value, rng):
    """NaN/Inf carried into a chunk is gone after a reset at step 4: the same numbers as starting there from zeros.

    On the saturated path a zero step would keep it (0 * NaN = NaN): the chooser (``path`` None) must take
    another; the cutting paths are held to it planted.
    """
    module = make_module(cell, num_layers=2)
    x, resets = rng.standard_normal((B, S, T, F)), np.zeros((B, S, T), bool)
    resets[:, :, 4] = True
    states = tuple(torch.full((2, B, S, H), value, dtype=torch.float64) for _ in module.state_names)
    with torch.no_grad():
        out, new, chosen = _folded_run(module, torch.from_numpy(x), states, resets, np.full((B, S), T), path)
        zeros = tuple(torch.zeros_like(s) for s in states)
        want, want_states = reference_run(module, torch.from_numpy(x[:, :, 4:]), zeros)
    assert chosen.value != "saturated", f"a non-finite state took the saturated path ({value})"
    assert_twins_match(out[:, :, 4:], want)
    for got, expected in zip(new, want_states, strict=True):
        assert_twins_match(got, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_an_lstm_or_gru_on_the_cpu_takes_the_saturated_path(cell, rng, monkeypatch):
    """Dispatch, with the saturated path planted broken: LSTM/GRU must reach it (the equality tests would pass on
    cuts or packed too), a simple RNN must not, and neither must a chunk holding NaN."""
    from models_torch.ops import segments

    def broken(*args):
        raise RuntimeError("saturated path taken")

    monkeypatch.setattr(segments, "run_saturated", broken)
    module = make_module(cell)
    x, resets, lengths = _episodes(rng)
    x_t = torch.from_numpy(x)
    with torch.no_grad():
        if cell == "rnn":
            module(x_t, resets=resets, lengths=lengths)
        else:
            with pytest.raises(RuntimeError, match="saturated path taken"):
                module(x_t, resets=resets, lengths=lengths)
        x_t[0, 0, 0, 0] = float("nan")
        module(x_t, resets=resets, lengths=lengths)


# ---- absurd weights: the saturated path only where its drive provably dominates (issue 23, item 6) ----------

# (tensor, gate block, value) per case: "huge" is the dtype's largest power of ten, beyond the flag drive (max / 4).
# Block 1 is LSTM f / GRU z (shut by a zero step, opened by a hold step); the last is LSTM o / GRU n.
ABSURD = {
    "bias huge": ("bias_ih_l0", 1, "huge"),
    "bias +inf (layer 2)": ("bias_hh_l1", 1, np.inf),
    "bias -inf": ("bias_ih_l0", 1, -np.inf),
    "last block bias +inf": ("bias_ih_l0", -1, np.inf),
    "input weight inf": ("weight_ih_l0", 1, np.inf),
    "recurrent weight huge": ("weight_hh_l0", 1, "huge"),
}
HUGE = {"float32": 1e38, "float64": 1e308}


def absurd_module(cell: str, dtype: str, case: str) -> torch.nn.Module:
    """A 2-layer module whose ``case`` weight is huge or infinite: column 0 of a weight matrix, a whole bias."""
    module = make_module(cell, dtype, num_layers=2)
    name, block, value = ABSURD[case]
    weight = getattr(module.rnn, name)
    size = module.hidden_size
    rows = slice(block * size, (block + 1) * size or None)
    with torch.no_grad():
        (weight[rows, 0] if weight.dim() == 2 else weight[rows]).fill_(HUGE[dtype] if value == "huge" else value)
    return module


def _episode_steps(rng, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[torch.Tensor, ...]]:
    x, resets, lengths = _episodes(rng)
    lengths[0, 0], resets[:, :, 5] = 0, True  # a stream of length 0, and a reset inside every stream
    states = tuple(torch.from_numpy(rng.standard_normal((2, B, S, H)).astype(dtype)) for _ in range(2))
    return x.astype(dtype), resets, lengths, states


def absurd_error(cell: str, dtype: str, case: str, rng) -> float:
    """``module(x, resets=, lengths=)`` of an absurd-weight module against the per-step reference: the largest
    error over the output and every carried state (NaN counts as Inf)."""
    module = absurd_module(cell, dtype, case)
    x, resets, lengths, states = _episode_steps(rng, dtype)
    states = states[: len(module.state_names)]
    want, want_states = reference_run(module, torch.from_numpy(x), states, resets=resets, lengths=lengths)
    assert all(bool(torch.isfinite(t).all()) for t in (want, *want_states)), "the reference itself is not finite"
    module.set_states(states)
    with torch.no_grad():
        out = module(torch.from_numpy(x), resets=torch.from_numpy(resets), lengths=torch.from_numpy(lengths))
    pairs = zip((out, *module.get_states()), (want, *want_states))
    return max(float((a - b).detach().abs().nan_to_num(np.inf).max()) for a, b in pairs)


@pytest.mark.parametrize("case", list(ABSURD))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_absurd_weights_take_an_exact_path(cell, dtype, case, rng):
    """A bias of 1e38 (float32) or Inf, an infinite or huge weight: the flag drive cannot shut the gates, so the chunk
    must leave the saturated path; output and states equal the per-step reference (float64 1e-12, float32 1e-5)."""
    error, allowed = absurd_error(cell, dtype, case, rng), default_tolerance("cross", dtype).atol
    assert error <= allowed, f"{cell} {dtype} {case}: max error {error:.3g} against the per-step reference"


@pytest.mark.parametrize(
    ("fault", "case"),
    [("magnitude bound ignored", "bias huge"), ("predicate always true", "bias +inf (layer 2)")],
)
def test_planted_saturation_predicate_faults_are_caught(fault, case, rng, monkeypatch):
    """Planted faults: with the pre-activation bound read as 0 (finite huge weights pass) or the whole predicate
    answering True (infinite ones pass), the state leaks through a reset and the comparison above fails."""
    from models_torch.ops import paths, saturate

    if fault == "magnitude bound ignored":
        monkeypatch.setattr(saturate, "preactivation_bound", lambda *args: 0.0)
    else:
        monkeypatch.setattr(paths, "drive_dominates", lambda *args: True)
    errors = {cell: absurd_error(cell, "float32", case, rng) for cell in ("lstm", "gru")}
    assert all(e > 1e-3 for e in errors.values()), f"{fault}: a leaking reset went unnoticed: {errors}"


def test_sane_chunks_keep_the_saturated_path(rng, monkeypatch):
    """The bound is no blanket refusal: inputs of 1e6 and 1e20 (float64), carried states of 1e3, weights of 10
    still take the saturated path (planted broken, so reaching it raises)."""
    from models_torch.ops import segments

    monkeypatch.setattr(segments, "run_saturated", lambda *args: (_ for _ in ()).throw(RuntimeError("saturated")))
    module = make_module("gru", num_layers=2)
    with torch.no_grad():
        module.rnn.weight_hh_l1.fill_(10.0)
    x, resets, lengths, states = _episode_steps(rng, "float64")
    module.set_states((states[0] * 1e3,))
    for scale in (1e6, 1e20):
        with pytest.raises(RuntimeError, match="saturated"), torch.no_grad():
            module(torch.from_numpy(x * scale), resets=torch.from_numpy(resets), lengths=torch.from_numpy(lengths))


@pytest.mark.keras
@pytest.mark.parametrize("case", ["bias huge", "input weight inf"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras_absurd_weights_equal_the_per_step_reference(cell, case, rng):
    """The same weights ported to Keras (the torch backend shares the saturated path): float64, 1e-12."""
    module = absurd_module(cell, "float64", case)
    layer = keras_layer(module)
    x, resets, lengths, states = _episode_steps(rng, "float64")
    states = states[: len(module.state_names)]
    want, want_states = reference_run(module, torch.from_numpy(x), states, resets=resets, lengths=lengths)
    layer.set_states([s.numpy() for s in states])
    got = keras.ops.convert_to_numpy(layer(x, resets=resets, lengths=lengths))
    for a, b in zip((got, *layer.get_states()), (want, *want_states)):
        assert_twins_match(a, b)
