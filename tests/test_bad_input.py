"""Every bad call of the README's table, on both frameworks: a clear error, and every carried state untouched."""

from __future__ import annotations

import numpy as np
import pytest

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
