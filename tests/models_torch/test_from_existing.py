"""A user's own trained ``nn.LSTM``/``nn.GRU``/``nn.RNN`` made multi-state: ``from_module`` and ``load_state_dict``.

The reference is the user's plain module itself, called once per stream with its own state
(float64, the sequence in two chunks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models_torch import MultiStateGRU, MultiStateLSTM, MultiStateRNN
from models_torch.multistate import MultiStateBase
from tests.conformance import assert_chunked_equals_whole
from tests.helpers import B, F, H, S, T, weight_normed_rnn

CUT = 5


def plain(name: str) -> nn.RNNBase:
    """A seeded plain float64 module, each in another configuration a user might have trained."""
    torch.manual_seed(0)
    made = {
        "lstm, 2 layers, batch_first=False": lambda: nn.LSTM(F, H, num_layers=2),
        "gru, no bias": lambda: nn.GRU(F, H, bias=False, batch_first=True),
        "rnn relu, 2 layers": lambda: nn.RNN(F, H, num_layers=2, nonlinearity="relu", batch_first=True),
        "gru under weight norm": lambda: weight_normed_rnn("parametrization"),
    }[name]()
    return made.double().eval()


PLAIN = ("lstm, 2 layers, batch_first=False", "gru, no bias", "rnn relu, 2 layers", "gru under weight norm")


def per_stream(module: nn.RNNBase, x: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
    """``module`` run on each stream of ``x`` ``(B, S, t, F)`` from that stream's state (None: zeros)."""
    outputs, finals = [], []
    with torch.no_grad():
        for s, state in enumerate(states):
            xs = x[:, s] if module.batch_first else x[:, s].transpose(0, 1)
            out, final = module(xs, state)
            outputs.append(out if module.batch_first else out.transpose(0, 1))
            finals.append(final)
    return torch.stack(outputs, 1), finals


def stacked(finals: list) -> tuple[torch.Tensor, ...]:
    """Per-stream final states as the multi-state layout ``(L, B, S, H)``."""
    parts = [f if isinstance(f, tuple) else (f,) for f in finals]
    return tuple(torch.stack([p[i] for p in parts], 2) for i in range(len(parts[0])))


def assert_equals_per_stream_loop(module: nn.RNNBase, made: MultiStateBase, x: torch.Tensor) -> None:
    """``made`` on ``x`` in two chunks equals ``module`` run per stream: outputs and states at both boundaries."""
    states: list = [None] * S
    for i, chunk in enumerate((x[:, :, :CUT], x[:, :, CUT:])):
        expected, states = per_stream(module, chunk, states)
        with torch.no_grad():
            got = made(chunk)
        assert_chunked_equals_whole(got, expected, f"output of chunk {i}")
        for name, a, b in zip(made.state_names, made.get_states(), stacked(states), strict=True):
            assert_chunked_equals_whole(a, b, f"state {name} after chunk {i}")


@pytest.mark.parametrize("name", PLAIN)
def test_from_module_equals_the_plain_module_per_stream(name):
    module = plain(name)
    made = MultiStateBase.from_module(module, num_streams=S, batch_size=B)
    pairs = ((nn.LSTM, MultiStateLSTM), (nn.GRU, MultiStateGRU), (nn.RNN, MultiStateRNN))
    assert type(made) is next(ours for theirs, ours in pairs if isinstance(module, theirs))
    assert (made.batch_size, made.training, made.rnn.weight_ih_l0.dtype) == (B, False, torch.float64)
    x = torch.randn(B, S, T, F, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_equals_per_stream_loop(module, made, x)


def test_from_module_copies_the_weights_and_passes_options_on():
    module = plain("lstm, 2 layers, batch_first=False")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    made = MultiStateLSTM.from_module(module, num_streams=S, detach_states=False, dtype=torch.float32)
    assert (made.detach_states, made.rnn.weight_hh_l1.dtype, module.weight_hh_l1.dtype) == (
        False,
        torch.float32,
        torch.float64,
    )
    with torch.no_grad():
        made.rnn.weight_hh_l0.add_(1.0)  # training the copy ...
    changed = max((module.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert changed == 0.0, f"the user's module changed by {changed:.3g}: its weights were shared, not copied"


REFUSALS = {
    "GRU into MultiStateLSTM": (
        lambda: MultiStateLSTM.from_module(nn.GRU(F, H), num_streams=S),
        TypeError,
        "MultiStateLSTM.from_module expects a plain nn.LSTM, got GRU; for it use MultiStateGRU.from_module",
    ),
    "not a recurrent module": (
        lambda: MultiStateBase.from_module(nn.Linear(F, H), num_streams=S),
        TypeError,
        "expects a plain nn.LSTM or nn.GRU or nn.RNN, got Linear",
    ),
    "a multi-state module": (
        lambda: MultiStateGRU.from_module(MultiStateGRU(F, H, S), num_streams=S),
        TypeError,
        "expects a plain nn.GRU, got MultiStateGRU",
    ),
    "bidirectional": (
        lambda: MultiStateGRU.from_module(nn.GRU(F, H, bidirectional=True), num_streams=S),
        ValueError,
        "expects a one-directional module .*got bidirectional=True",
    ),
    "proj_size": (
        lambda: MultiStateLSTM.from_module(nn.LSTM(F, H, proj_size=2), num_streams=S),
        ValueError,
        "expects proj_size=0 .*got proj_size=2",
    ),
    "an option the weights fix": (
        lambda: MultiStateRNN.from_module(nn.RNN(F, H), num_streams=S, nonlinearity="relu", num_layers=2),
        ValueError,
        "expected nonlinearity='tanh', got nonlinearity='relu'; expected num_layers=1, got num_layers=2",
    ),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_from_module_refusals_name_what_was_expected(name):
    call, error, message = REFUSALS[name]
    with pytest.raises(error, match=message):
        call()


def test_load_state_dict_takes_a_plain_modules_state_dict():
    module = plain("gru, no bias")
    made = MultiStateGRU(F, H, S, bias=False, batch_size=B, dtype=torch.float64)
    made.load_state_dict(module.state_dict())
    x = torch.randn(B, S, T, F, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_equals_per_stream_loop(module, made, x)


def test_a_model_whose_plain_rnn_became_multi_state_loads_its_old_checkpoint():
    old = nn.ModuleDict({"encoder": plain("lstm, 2 layers, batch_first=False"), "head": nn.Linear(H, 1).double()})
    new = nn.ModuleDict(
        {"encoder": MultiStateLSTM(F, H, S, num_layers=2, dtype=torch.float64), "head": nn.Linear(H, 1).double()}
    )
    new.load_state_dict(old.state_dict())
    x = torch.randn(B, S, T, F, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert_equals_per_stream_loop(old["encoder"], new["encoder"], x)


def test_load_state_dict_still_reports_missing_and_unexpected_keys():
    made = MultiStateLSTM(F, H, S, num_layers=2)
    with pytest.raises(RuntimeError, match='Unexpected key.*"weight_ih_l2"'):
        made.load_state_dict(nn.LSTM(F, H, num_layers=3).state_dict())
    report = made.load_state_dict(nn.LSTM(F, H).state_dict(), strict=False)
    assert report.missing_keys == [f"rnn.{k}_l1" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert report.unexpected_keys == []
    both = {**made.state_dict(), "weight_ih_l0": torch.zeros(4 * H, F)}  # ambiguous: left for the strict check
    with pytest.raises(RuntimeError, match='Unexpected key.*"weight_ih_l0"'):
        made.load_state_dict(both)


def test_our_own_state_dicts_still_round_trip():
    source = MultiStateRNN(F, H, S, num_layers=2, nonlinearity="relu", dtype=torch.float64)
    target = MultiStateRNN(F, H, S, num_layers=2, nonlinearity="relu", dtype=torch.float64)
    target.load_state_dict(source.state_dict())
    x = torch.randn(B, S, T, F, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        error = (target(x) - source(x)).abs().max().item()
    assert error == 0.0, f"a state_dict round trip changed the output by {error:.3g}"
