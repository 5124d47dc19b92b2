"""Reliability: atomic state under failures, non-finite input, long runs, and fuzzing the public API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import check_parity, default_tolerance
from harness.porting import torch_class
from models_torch import inner_rnn
from tests.conformance import assert_twins_match
from tests.helpers import B, F, H, PerStreamLoop, S, random_input


def test_error_mid_computation_leaves_state_bit_identical(rng, monkeypatch):
    model = torch_class("lstm")(F, H, S, num_layers=2)
    model(torch.from_numpy(random_input(rng, (B, S, 6, F))))
    before = model.get_states()

    def fail(*args, **kwargs):
        raise RuntimeError("planted failure inside the fused call")

    monkeypatch.setattr(inner_rnn, "run_segmented", fail)
    for call in (lambda: model(torch.zeros(B, S, 3, F)), lambda: model(torch.zeros(B, 3, F), stream=1)):
        with pytest.raises(RuntimeError, match="planted failure"):
            call()
        for a, b in zip(model.get_states(), before):
            assert torch.equal(a, b)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_check_finite_refuses_non_finite_input(value, rng):
    model = torch_class("gru")(F, H, S, check_finite=True)
    model(torch.from_numpy(random_input(rng, (B, S, 6, F))))
    before = model.get_states()
    x = torch.from_numpy(random_input(rng, (B, S, 6, F)))
    x[1, 2, 3, 0] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(x)
    assert torch.equal(model.get_states()[0], before[0])
    unchecked = torch_class("gru")(F, H, S)  # the documented default: no check, no error
    out = unchecked(x)
    if np.isnan(value):
        assert torch.isnan(out[1, 2, 3:]).all(), "a NaN input must show in that stream's later outputs"


def test_long_run_drift_is_bounded_torch():
    """10,000 steps in chunks of 1,000 vs whole, float32: the error stays bounded."""
    model = torch_class("lstm")(F, H, S, num_layers=2)
    x = np.random.default_rng(0).standard_normal((1, S, 10_000, F)).astype("float32")
    report = check_parity({"torch": model}, x, [1_000] * 10, whole_state_checks=2)
    assert report.ok, report.failure_message()
    curve = report.curve("torch chunked vs whole")
    atol = default_tolerance("same", "float32").atol
    assert len(curve) == 10 and max(e for _, e in curve) <= atol, f"max abs error by chunk {curve}, beyond {atol:g}"


OPERATIONS = st.one_of(
    st.tuples(st.just("stacked"), st.integers(1, 4)),
    st.tuples(st.just("stream"), st.integers(1, 4), st.integers(0, S - 1)),
    st.tuples(st.just("reset streams"), st.lists(st.integers(0, S - 1), max_size=S)),
    st.tuples(st.just("reset mask"), st.lists(st.booleans(), min_size=B * S, max_size=B * S)),
    st.tuples(st.just("bad stream"), st.integers(S, S + 3)),
    st.tuples(st.just("bad batch"), st.integers(1, 4)),
)


@settings(max_examples=40, deadline=None)
@given(cell=st.sampled_from(["lstm", "gru", "rnn"]), operations=st.lists(OPERATIONS, min_size=1, max_size=12))
def test_fuzz_interleaved_api_calls_match_the_per_stream_loop(cell, operations):
    """Any interleaving of stacked calls, per-stream calls, resets and refused calls equals the hand loop."""
    torch.manual_seed(0)
    model = torch_class(cell)(F, H, S, dtype=torch.float64, batch_size=B)
    loop = PerStreamLoop(model.rnn, S)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for op in operations:
            before = model.get_states()
            if op[0] == "stacked":
                x = torch.from_numpy(rng.standard_normal((B, S, op[1], F)))
                got, expected = model(x), torch.stack([loop.call(x[:, s], s) for s in range(S)], 1)
            elif op[0] == "stream":
                x = torch.from_numpy(rng.standard_normal((B, op[1], F)))
                got, expected = model(x, stream=op[2]), loop.call(x, op[2])
            elif op[0] in ("reset streams", "reset mask"):
                mask = np.zeros((B, S), bool)
                if op[0] == "reset streams":
                    mask[:, op[1]] = True
                    model.reset_states(streams=op[1])
                else:
                    mask = np.array(op[1]).reshape(B, S)
                    model.reset_states(mask=mask)
                for s in range(S):
                    loop.reset_rows(mask[:, s], s)
                continue
            else:
                with pytest.raises(ValueError):
                    if op[0] == "bad stream":
                        model(torch.zeros(B, 2, F, dtype=torch.float64), stream=op[1])
                    else:
                        model(torch.zeros(B + op[1], S, 2, F, dtype=torch.float64))
                for a, b in zip(model.get_states(), before):
                    assert torch.equal(a, b)
                continue
            assert_twins_match(got, expected, f"{op}: the module vs the per-stream loop")
