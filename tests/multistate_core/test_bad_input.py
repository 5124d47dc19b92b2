"""Every bad call of the README's table, on both frameworks: a clear error, and every carried state untouched."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conformance import assert_bit_identical, assert_chunked_equals_whole
from tests.helpers import BAD_CALLS, B, F, H, S, T, random_input

CASES = [
    pytest.param(framework, name, marks=[pytest.mark.keras] if framework == "keras" else [], id=f"{framework}-{name}")
    for name, (_, _, frameworks) in BAD_CALLS.items()
    for framework in frameworks
]


def _model_and_tensor(framework: str, rng: np.random.Generator):
    """An LSTM whose state was made for batch ``B`` and moved by one call, and its framework's tensor maker."""
    x = random_input(rng, (B, S, T, F))
    if framework == "torch":
        import torch

        from models_torch import MultiStateLSTM

        torch.manual_seed(0)
        model = MultiStateLSTM(F, H, S)
        model(torch.from_numpy(x))
        return model, lambda shape, dtype="float32": torch.zeros(shape, dtype=getattr(torch, dtype))
    from models_keras import MultiStateLSTM

    model = MultiStateLSTM(H, S)
    model(x)
    return model, lambda shape, dtype="float32": np.zeros(shape, dtype)


def _numpy_states(model) -> list[np.ndarray]:
    return [np.array(s) for s in model.numpy_states()]


@pytest.mark.parametrize(("framework", "case"), CASES)
def test_bad_call_is_refused_and_state_unchanged(framework, case, rng):
    model, tensor = _model_and_tensor(framework, rng)
    before = _numpy_states(model)
    call, message, _ = BAD_CALLS[case]
    with pytest.raises(ValueError, match=message) as error:
        call(model, tensor)
    print(error.value)
    for old, new in zip(before, _numpy_states(model), strict=True):
        np.testing.assert_array_equal(new, old)


# ---- another batch size: the refusal's advice works (issue 23, item 12) ---------------------------------------


def test_torch_batch_size_advice_is_true(rng):
    """Without batch_size= the refusal says reset_states(), and after it the other batch runs (the numbers of a fresh
    module); with batch_size=2 it says the batch size is fixed, stays refused after reset_states(), and a module built
    as it says runs the batch (the old module's numbers on the rows they share)."""
    import torch

    from models_torch import MultiStateLSTM

    x = torch.from_numpy(random_input(rng, (B + 1, S, T, F)))
    torch.manual_seed(0)
    free = MultiStateLSTM(F, H, S)
    free(x[:B])
    with pytest.raises(ValueError, match=r"call reset_states\(\) first") as error:
        free(x)
    print(error.value)
    free.reset_states()
    fresh = MultiStateLSTM(F, H, S)
    fresh.load_state_dict(free.state_dict())
    with torch.no_grad():
        assert_bit_identical(free(x), fresh(x), f"after reset_states(), the batch of {B + 1} vs a fresh module's")

    fixed = MultiStateLSTM(F, H, S, batch_size=B)
    fixed.load_state_dict(free.state_dict())
    advice = rf"fixed by batch_size= and reset_states\(\) keeps it: build a new module with batch_size={B + 1}"
    for _ in range(2):  # before and after reset_states()
        with pytest.raises(ValueError, match=advice) as error:
            fixed(x)
        fixed.reset_states()
    print(error.value)
    rebuilt = MultiStateLSTM(F, H, S, batch_size=B + 1)
    rebuilt.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        assert_chunked_equals_whole(rebuilt(x)[:B], fixed(x[:B]), "the rebuilt module vs the old one on shared rows")


@pytest.mark.keras
def test_keras_batch_size_advice_is_true(rng):
    """A batch other than Input(batch_shape=(2, ...)) fixes: the refusal says the batch size is fixed and reset_states()
    keeps it; after reset_states() it stays refused with the same message; both rebuilds it names (a layer with
    batch_size=3, a model with keras.Input(batch_shape=(3, ...))) run the batch with the old layer's numbers."""
    import keras

    from harness import port_weights
    from models_keras import MultiStateLSTM

    x = random_input(rng, (B + 1, S, T, F))
    inputs = keras.Input(batch_shape=(B, S, None, F))
    layer = MultiStateLSTM(H, S)
    model = keras.Model(inputs, layer(inputs))
    advice = (
        rf"fixed by its state variables .* and reset_states\(\) keeps it: build a new layer with batch_size={B + 1}, "
        rf"or a model with keras.Input\(batch_shape=\({B + 1}, \.\.\.\)\)"
    )
    for _ in range(2):  # before and after reset_states()
        with pytest.raises(ValueError, match=advice) as error:
            model(x)
        layer.reset_states()
    print(error.value)
    want = keras.ops.convert_to_numpy(model(x[:B]))
    by_layer = port_weights(layer, MultiStateLSTM(H, S, batch_size=B + 1))
    by_layer.build_weights(F)
    new_inputs = keras.Input(batch_shape=(B + 1, S, None, F))
    new_layer = MultiStateLSTM(H, S)
    by_input = keras.Model(new_inputs, new_layer(new_inputs))
    port_weights(layer, new_layer)
    for name, run in (("batch_size=", by_layer), ("keras.Input(batch_shape=...)", by_input)):
        got = keras.ops.convert_to_numpy(run(x))[:B]
        assert_chunked_equals_whole(got, want, f"rebuilt with {name} vs the old layer on shared rows")
