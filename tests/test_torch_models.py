"""The PyTorch multi-state modules against plain torch computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import PLANS, assert_parity
from harness.porting import torch_class
from tests.helpers import B, F, H, PerStreamLoop, S, T, random_input

VARIANTS = {"lstm": {}, "gru": {}, "rnn-tanh": {"nonlinearity": "tanh"}, "rnn-relu": {"nonlinearity": "relu"}}


def make(variant: str, dtype: str = "float32", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    cell = variant.split("-")[0]
    return torch_class(cell)(F, H, S, dtype=getattr(torch, dtype), **VARIANTS[variant], **kwargs)


def states_of(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    return tuple(s.clone() for s in model.get_states())


def assert_bit_identical(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), f"max abs difference {(x - y).abs().max().item():.3g}, expected bit-identical"


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", VARIANTS)
def test_chunked_equals_whole(cell, layers, plan, dtype, rng):
    model = make(cell, dtype, num_layers=layers)
    report = assert_parity({"torch": model}, random_input(rng, (B, S, T, F), dtype), plan)
    print(report.table())


@pytest.mark.parametrize("cell", VARIANTS)
def test_each_stream_equals_inner_rnn_alone(cell, rng):
    model = make(cell, "float64", num_layers=2)
    x = torch.from_numpy(random_input(rng, (B, S, T, F), "float64"))
    with torch.no_grad():
        y = model(x)
        for s in range(S):
            alone, _ = model.rnn(x[:, s])
            torch.testing.assert_close(y[:, s], alone, atol=1e-13, rtol=0)


@pytest.mark.parametrize("plan", ["halves", "random", "ones"])
def test_matches_hand_rolled_per_band_loop(plan, dtype, rng):
    model = make("lstm", dtype, num_layers=2)
    x = random_input(rng, (B, S, T, F), dtype)
    assert_parity({"torch": model, "per-band loop": PerStreamLoop(model.rnn, S)}, x, plan)


@pytest.mark.parametrize("cell", VARIANTS)
def test_per_stream_calls_in_any_order_equal_stacked_call(cell, rng):
    stacked, single = make(cell), make(cell)
    x = torch.from_numpy(random_input(rng, (B, S, T, F)))
    order_rng = np.random.default_rng(7)
    with torch.no_grad():
        for start, stop in [(0, 5), (5, 6), (6, T)]:
            expected = stacked(x[:, :, start:stop])
            for s in order_rng.permutation(S):
                got = single(x[:, s, start:stop], stream=int(s))
                torch.testing.assert_close(got, expected[:, s], atol=1e-6, rtol=0)
    for a, b in zip(single.get_states(), stacked.get_states()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_per_stream_call_moves_only_that_stream(rng):
    model = make("lstm")
    model(torch.from_numpy(random_input(rng, (B, S, T, F))))
    before = states_of(model)
    model(torch.from_numpy(random_input(rng, (B, T, F))), stream=1)
    after = states_of(model)
    for old, new in zip(before, after):
        assert torch.equal(old[:, :, [0, 2]], new[:, :, [0, 2]])
        assert not torch.equal(old[:, :, 1], new[:, :, 1])


@pytest.mark.parametrize("how", ["streams", "mask"])
def test_reset_some_streams_leaves_others_bit_identical(how, rng):
    model = make("lstm", num_layers=2)
    model(torch.from_numpy(random_input(rng, (B, S, T, F))))
    before = states_of(model)
    mask = torch.zeros(B, S, dtype=torch.bool)
    if how == "streams":
        model.reset_states(streams=[1])
        mask[:, 1] = True
    else:
        mask[0, 2] = mask[1, 0] = True
        model.reset_states(mask=mask.numpy())
    for old, new in zip(before, model.get_states()):
        keep = ~mask[None, :, :, None].expand_as(old)
        assert torch.equal(new[keep], old[keep])
        assert torch.all(new[~keep] == 0)
        assert torch.any(old[~keep] != 0)


def test_truncated_bptt_training_carries_state_and_trains(rng):
    model = make("lstm", num_layers=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.from_numpy(random_input(rng, (B, S, T, F)))
    target = torch.from_numpy(random_input(rng, (B, S, T, H)))
    before = [p.detach().clone() for p in model.parameters()]
    for start in range(0, T, 6):
        carried = states_of(model) if start else None
        loss = torch.nn.functional.mse_loss(model(x[:, :, start : start + 6]), target[:, :, start : start + 6])
        opt.zero_grad()
        loss.backward()  # a second chunk would fail here if the state kept the previous graph
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
        if carried is not None:
            assert not torch.equal(carried[0], model.get_states()[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(not s.requires_grad for s in model.get_states())


def test_full_bptt_option_keeps_graph_across_chunks(rng):
    model = make("gru", "float64", detach_states=False)
    x = torch.from_numpy(random_input(rng, (B, S, T, F), "float64")).requires_grad_()
    model(x[:, :, :10])
    model(x[:, :, 10:]).sum().backward()
    assert x.grad[:, :, :10].abs().sum() > 0, "gradient did not reach the first chunk through the carried state"


def test_initial_state_and_return_state_are_stateless(rng):
    model = make("lstm", "float64")
    x = torch.from_numpy(random_input(rng, (B, S, T, F), "float64"))
    with torch.no_grad():
        carried_out = model(x)
        carried_states = states_of(model)
        zeros = tuple(torch.zeros_like(s) for s in carried_states)
        out, states = model(x, initial_state=zeros, return_state=True)
    torch.testing.assert_close(out, carried_out, atol=0, rtol=0)
    assert_bit_identical(states, carried_states)
    assert_bit_identical(model.get_states(), carried_states)


def test_state_follows_to_and_set_states_accepts_numpy(rng):
    model = make("lstm")
    model(torch.from_numpy(random_input(rng, (B, S, T, F))))
    model.to(torch.float64)
    assert all(s.dtype == torch.float64 for s in model.get_states())
    numpy_states = [rng.standard_normal((1, B, S, H)) for _ in range(2)]
    model.set_states(numpy_states)
    assert_bit_identical(model.get_states(), [torch.from_numpy(s) for s in numpy_states])
    assert "h" not in model.state_dict() and "c" not in model.state_dict()


def test_batch_size_change_needs_reset(rng):
    model = make("gru")
    model(torch.from_numpy(random_input(rng, (B, S, 4, F))))
    with pytest.raises(ValueError, match="batch size 5 but the carried state was made for batch size 2"):
        model(torch.from_numpy(random_input(rng, (5, S, 4, F))))
    model.reset_states()
    assert model(torch.from_numpy(random_input(rng, (5, S, 4, F)))).shape == (5, S, 4, H)


def test_training_streams_do_not_interact(rng):
    """The second chunk's gradient of the shared weights is the sum of each stream's own (state carried)."""
    model = make("lstm", "float64", num_layers=2)
    x = torch.from_numpy(random_input(rng, (B, S, T, F), "float64"))
    target = torch.from_numpy(random_input(rng, (B, S, T, H), "float64"))
    chunks = [slice(0, 5), slice(5, T)]
    for c in chunks:
        model.zero_grad()
        ((model(x[:, :, c]) - target[:, :, c]) ** 2).sum().backward()
    together = [p.grad.clone() for p in model.parameters()]

    alone = [torch.zeros_like(p) for p in model.parameters()]
    for s in range(S):
        state = None
        for c in chunks:
            model.rnn.zero_grad()
            out, state = model.rnn(x[:, s, c], state)
            ((out - target[:, s, c]) ** 2).sum().backward()
            state = tuple(t.detach() for t in state)
        alone = [a + p.grad for a, p in zip(alone, model.rnn.parameters())]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cell", VARIANTS)
def test_direct_op_equals_the_modules_own_forward(cell, rng):
    """``segments.fused`` calls the op ``nn.LSTM``/``GRU``/``RNN.forward`` calls: same outputs, states, gradients."""
    from models_torch import segments

    model = make(cell, "float64", num_layers=2)
    x = torch.from_numpy(random_input(rng, (B * S, T, F), "float64"))
    states = tuple(torch.from_numpy(random_input(rng, (2, B * S, H), "float64")) for _ in model.state_names)
    results = []
    for run in (
        lambda: segments.fused(model.rnn, x, states),
        lambda: model.rnn(x, states if len(states) > 1 else states[0]),
    ):
        model.zero_grad()
        out, new = run()
        new = new if isinstance(new, tuple) else (new,)
        (out.sum() + sum(s.sum() for s in new)).backward()
        results.append([out, *new, *(p.grad.clone() for p in model.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b), f"max abs difference {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cell", VARIANTS)
def test_one_step_through_the_cell_ops_equals_the_fused_op(cell, layers, rng, monkeypatch):
    """A one-frame chunk takes ``torch.lstm_cell``/``gru_cell``/``rnn_*_cell``: the fused op's numbers and gradients."""
    from models_torch.ops import kernels

    model = make(cell, "float64", num_layers=layers)
    x = random_input(rng, (B, S, 1, F), "float64")
    start = tuple(random_input(rng, (layers, B, S, H), "float64") for _ in model.state_names)
    results = []
    for cells in (True, False):
        monkeypatch.setattr(kernels, "CELL_STEP_MACS", 10**12 if cells else 0)
        model.zero_grad()
        inputs = [torch.from_numpy(a).requires_grad_(True) for a in (x, *start)]
        out, new = model(inputs[0], initial_state=inputs[1:], return_state=True)
        (out.sum() + sum((s**2).sum() for s in new)).backward()
        results.append([out, *new, *(p.grad.clone() for p in model.parameters()), *(a.grad for a in inputs)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=0, atol=1e-12)


def test_one_frame_streaming_takes_the_cell_ops(rng, monkeypatch):
    """Planted fault for the dispatch: with the fused op broken, a one-frame call still runs; a longer one fails."""
    model = make("gru")
    monkeypatch.setattr(torch, "gru", None)  # the fused op is gone
    model(torch.from_numpy(random_input(rng, (B, S, 1, F), "float32")))
    with pytest.raises(TypeError):
        model(torch.from_numpy(random_input(rng, (B, S, 2, F), "float32")))
