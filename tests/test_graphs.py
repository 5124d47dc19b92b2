"""GraphStep's bookkeeping on the CPU (capture=False): the same numbers and states as the module's own calls."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.porting import torch_class
from models_torch.graphs import GraphStep
from tests.helpers import B, F, H, S

CELLS = ("lstm", "gru", "rnn")


def twins(cell: str, layers: int = 2, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    module = torch_class(cell)(F, H, S, num_layers=layers, dtype=dtype).eval()
    return module, copy.deepcopy(module)


def assert_same_states(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for x, y in zip(a.get_states(), b.get_states(), strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("cell", CELLS)
def test_steps_equal_the_modules_own_calls_state_included(cell, chunk):
    module, reference = twins(cell, dtype=torch.float64)
    step = GraphStep(module, batch_size=B, chunk=chunk)
    assert not step.captured
    x = torch.randn(B, S, 12 * chunk, F, dtype=torch.float64)
    with torch.no_grad():
        for t in range(0, x.shape[2], chunk):
            # contiguous, as in GraphStep's static input: the CPU kernels round a strided input differently (1e-17)
            part = x[:, :, t : t + chunk].contiguous()
            torch.testing.assert_close(step(part), reference(part), atol=0, rtol=0)
            assert_same_states(module, reference)


def test_resets_and_set_states_between_steps_are_respected():
    module, reference = twins("lstm")
    step = GraphStep(module, batch_size=B)
    x = [torch.randn(B, S, 1, F) for _ in range(9)]
    with torch.no_grad():
        for t in range(9):
            if t == 3:
                for m in (module, reference):
                    m.reset_states(streams=[1])
            if t == 5:
                for m in (module, reference):
                    m.reset_states()  # drops the state: the next step starts from zeros
            if t == 7:
                states = [torch.randn(module.num_layers, B, S, H) for _ in module.state_names]
                for m in (module, reference):
                    m.set_states(states)
            torch.testing.assert_close(step(x[t]), reference(x[t]), atol=0, rtol=0)
            assert_same_states(module, reference)


def test_the_module_state_is_a_copy_not_the_static_buffer():
    module, _ = twins("gru")
    step = GraphStep(module, batch_size=B)
    step(torch.randn(B, S, 1, F))
    held = module.get_states()[0]
    step.states[0].fill_(7.0)  # scribbling on the static buffer leaves the module's state alone
    torch.testing.assert_close(module.get_states()[0], held, atol=0, rtol=0)


def test_static_output_buffer_when_asked():
    module, _ = twins("rnn")
    step = GraphStep(module, batch_size=B, clone_output=False)
    out = step(torch.randn(B, S, 1, F))
    assert out is step.output


def test_refusals():
    module, _ = twins("lstm")
    step = GraphStep(module, batch_size=B, chunk=2)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 2, 4\)"):
        step(torch.randn(B, S, 1, F))
    with pytest.raises(ValueError, match="dtype"):
        step(torch.randn(B, S, 2, F, dtype=torch.float64))
    with pytest.raises(ValueError, match="CUDA"):
        GraphStep(module, batch_size=B, capture=True)
    with pytest.raises(ValueError, match="check_finite"):
        GraphStep(torch_class("gru")(F, H, S, check_finite=True), batch_size=B)
    with pytest.raises(ValueError, match="eval"):
        GraphStep(torch_class("gru")(F, H, S, num_layers=2, dropout=0.5), batch_size=B)
    module(torch.randn(3, S, 1, F))  # the module now carries a batch of 3
    with pytest.raises(ValueError, match="batch size 3"):
        step(torch.randn(B, S, 2, F))
    with pytest.raises(ValueError, match="batch size 3"):
        GraphStep(module, batch_size=B)
    module.reset_states()
    module.rnn.weight_hh_l0 = torch.nn.Parameter(module.rnn.weight_hh_l0.detach().clone())
    with pytest.raises(RuntimeError, match="replaced or moved"):
        step(torch.randn(B, S, 2, F))


def test_in_place_weight_updates_are_seen():
    module, reference = twins("gru")
    step = GraphStep(module, batch_size=B)
    with torch.no_grad():
        reference.rnn.weight_hh_l0.mul_(0.5)
        module.rnn.load_state_dict(reference.rnn.state_dict())  # copies in place: same addresses
        x = torch.randn(B, S, 1, F)
        torch.testing.assert_close(step(x), reference(x), atol=0, rtol=0)
