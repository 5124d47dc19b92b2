"""``module.streaming_step()``: one chunk on a torch module's carried state without its per-call cost (issue 14).

Held against ``module(x)`` under ``torch.no_grad()`` on a twin module with the same weights: outputs
and every carried state after each chunk, every cell, 1 and 2 layers; states and weights changed
between calls are seen; bad input is refused before any state moves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.porting import torch_class
from models_torch.ops import step_runs
from tests.helpers import CELLS, B, F, H, S


class Triple(torch.nn.Module):
    """A parametrization: the weight run is three times the stored one."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 3 * weight


def twins(cell: str, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Two float64 modules in eval mode with the same weights and no state yet."""
    torch.manual_seed(0)
    first = torch_class(cell)(F, H, S, dtype=torch.float64, **kwargs).eval()
    second = torch_class(cell)(F, H, S, dtype=torch.float64, **kwargs).eval()
    second.load_state_dict(first.state_dict())
    return first, second


def assert_same(stepped: torch.nn.Module, called: torch.nn.Module, got: torch.Tensor, want: torch.Tensor) -> None:
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12)
    for mine, theirs in zip(stepped.get_states(), called.get_states(), strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-12)


def call(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_step_equals_the_module_call(cell, layers):
    stepped, called = twins(cell, num_layers=layers)
    step = stepped.streaming_step()
    whole = torch.randn(B, S, 9, F, dtype=torch.float64)
    for start, stop in [(0, 1), (1, 2), (2, 5), (5, 6), (6, 7), (7, 9)]:
        x = whole[:, :, start:stop]  # a slice of a longer recording: not contiguous
        assert_same(stepped, called, step(x), call(called, x))


@pytest.mark.parametrize("compiled", [False, True])
def test_streaming_step_sees_states_and_weights_changed_between_calls(compiled):
    """Also: the compiled step (AOTInductor) equals ``module(x)``, and no output aliases a carried state.
    (``tests/test_weight_changes.py`` holds ``module(x)`` and the plain step to every kind of weight change.)"""
    stepped, called = twins("lstm", num_layers=2)
    step = stepped.streaming_step(compiled=compiled)
    x = torch.randn(B, S, 1, F, dtype=torch.float64)
    changes = [
        lambda m: m.set_states([torch.full((2, B, S, H), 0.3, dtype=torch.float64)] * 2),
        lambda m: m.reset_states(streams=[1]),
        lambda m: call(m, x),  # the module itself moves the state
        lambda m: m.rnn.weight_hh_l0.data.mul_(0.5),  # in place, as an optimizer step does
        lambda m: setattr(m.rnn, "bias_ih_l1", torch.nn.Parameter(m.rnn.bias_ih_l1 + 0.1)),  # replaced
        lambda m: setattr(m.rnn.weight_ih_l1, "data", m.rnn.weight_ih_l1 * 0.7),  # new storage, same Parameter
        lambda m: torch.nn.utils.parametrize.register_parametrization(m.rnn, "weight_hh_l1", Triple()),
        lambda m: m.reset_states(),
    ]
    for change in changes:
        assert_same(stepped, called, step(x), call(called, x))
        change(stepped), change(called)
        y = step(x)
        assert_same(stepped, called, y, call(called, x))
        y += 1.0  # ``y += skip`` must not move the carried state (checked by the next comparison)
    if compiled:
        assert len(step.programs) == 1, "one input shape, one compiled program"


@pytest.mark.parametrize("run", ["module", "streaming_step"])
def test_the_output_does_not_alias_the_carried_state(run):
    """``y += skip`` on a one-frame output must not move the state carried to the next frame."""
    module, _ = twins("gru")
    step = module.streaming_step() if run == "streaming_step" else module
    with torch.no_grad():
        y = step(torch.randn(B, S, 1, F, dtype=torch.float64))
        before = module.get_states()[0]
        y += 1.0
    np.testing.assert_array_equal(module.get_states()[0].numpy(), before.numpy())


def test_a_one_frame_step_goes_straight_to_the_cell_op(monkeypatch):
    """The speed path: a small one-layer frame on the CPU does not pass through ``run_plain``."""
    stepped, called = twins("gru")
    step = stepped.streaming_step()
    x = torch.randn(B, S, 1, F, dtype=torch.float64)
    for _ in range(2):
        want = call(called, x)
        with monkeypatch.context() as patched:  # the name the step's runs call it by
            patched.setattr(step_runs, "run_plain", lambda *a: pytest.fail("one frame went through run_plain"))
            got = step(x)
        assert_same(stepped, called, got, want)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(B, S + 1, 1, F, dtype=torch.float64), "streams"),
        (torch.zeros(B + 1, S, 1, F, dtype=torch.float64), "batch"),
        (torch.zeros(B, S, 1, F + 1, dtype=torch.float64), "feature size"),
        (torch.zeros(B, S, 1, F), "dtype"),
        (torch.full((B, S, 1, F), float("nan"), dtype=torch.float64), "NaN"),
    ],
)
def test_streaming_step_refuses_bad_input_before_any_state_moves(x, message):
    module, _ = twins("gru", check_finite=True)
    step = module.streaming_step()
    step(torch.randn(B, S, 1, F, dtype=torch.float64))  # a plan for the good shape exists
    before = module.get_states()[0]
    with pytest.raises((ValueError, TypeError), match=message):
        step(x)
    np.testing.assert_array_equal(module.get_states()[0].numpy(), before.numpy())


def test_streaming_step_refuses_dropout_in_training_mode():
    module, _ = twins("lstm", num_layers=2, dropout=0.5)
    with pytest.raises(ValueError, match="eval"):
        module.train().streaming_step()(torch.zeros(B, S, 1, F, dtype=torch.float64))
    assert module.batch_size is None


def test_the_compiled_step_refuses_a_gpu_and_explains_a_failed_compile(monkeypatch):
    import torch._inductor

    module, _ = twins("gru")
    with pytest.raises(ValueError, match="runs on the CPU"):
        module.streaming_step(compiled=True)(torch.zeros(B, S, 1, F, dtype=torch.float64, device="meta"))

    def no_compiler(*args, **kwargs):
        raise OSError("g++: not found")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*g\\+\\+: not found"):
        module.streaming_step(compiled=True)(torch.zeros(B, S, 1, F, dtype=torch.float64))
    assert module.batch_size is None
