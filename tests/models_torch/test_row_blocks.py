"""Row blocks (``models_torch.ops.paths.block_rows``, ``ops.row_blocks``): a large CPU chunk runs as torch's fused
op on blocks of rows, one after another, and must give exactly what one call gives.

The blocks are forced at small row counts by planting the rule's answer (``paths.block_rows`` returns
``BLOCK`` rows); the reference is the same module with the rule as it is, which keeps these chunks in one
call. Forward outputs and carried states are compared bit for bit (``torch.equal``) in inference. Gradients
differ by the order in which the blocks' weight gradients are summed: within ``default_tolerance("blocks",
"float32")`` of each gradient's largest entry, for a loss with random weights on the outputs (measured here:
1.4e-6; the row allows for more rows summed: 2.2e-5 at 16,384 rows x 16 steps in the benchmark sweep).
Recording autograd, an LSTM runs oneDNN's training kernel, which can round the last rows of a chunk
differently (1.3e-8 here, at 200 rows; none at 16,384 or 16,448 rows, T=16): its outputs are held to the
same tolerance there, a GRU's and a simple RNN's bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import default_tolerance
from harness.porting import torch_class
from models_torch.ops import paths
from models_torch.ops.kernels import Stack
from models_torch.ops.row_blocks import block_bounds

B, S, T, F, H = 4, 50, 5, 8, 16  # 200 rows: blocks of 64, 64 and 72 rows
BLOCK = 64
FUSED_OPS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GRADIENTS = default_tolerance("blocks", "float32")
LAYERS = pytest.mark.parametrize("layers", [1, 2])
EPISODES = pytest.mark.parametrize("episodic", [False, True], ids=["plain", "resets-lengths"])
CELLS = pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch):
    """``blocked(forced, fn)``: ``fn()`` with the rule as it is (``forced=False``) or planted to blocks of ``BLOCK``
    rows, and the number of fused-op calls it made."""
    rule, calls = paths.block_rows, []
    for name in FUSED_OPS:
        op = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _op=op, _name=name: calls.append(_name) or _op(*args))

    def run(forced: bool, fn):
        monkeypatch.setattr(paths, "block_rows", (lambda *_: BLOCK) if forced else rule)
        calls.clear()
        return fn(), len(calls)

    return run


def _module(cell: str, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch_class(cell)(F, H, S, num_layers=layers, batch_size=B)


def _episodes(episodic: bool) -> dict:
    """Resets at step 3 of some streams and lengths of 4 or 5: an LSTM or GRU saturates its gates (blocks per
    layer call), a simple RNN cuts the time axis into plain calls (blocks per piece)."""
    if not episodic:
        return {}
    rng = np.random.default_rng(1)
    resets = torch.zeros(B, S, T, dtype=torch.bool)
    resets[..., 3] = torch.as_tensor(rng.random((B, S)) < 0.3)
    return {"resets": resets, "lengths": torch.as_tensor(rng.choice([4, T], size=(B, S)))}


def _run(module: torch.nn.Module, x: torch.Tensor, episodes: dict) -> list[torch.Tensor]:
    """Two chunks from zero states, the second from the first's carried state: both outputs and the final states."""
    module.reset_states()
    first = module(x, **episodes)
    second, states = module(x.flip(2), return_state=True, **episodes)
    return [first, second, *states]


def _input(requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(B, S, T, F, generator=torch.Generator().manual_seed(2)).requires_grad_(requires_grad)


@LAYERS
@EPISODES
@CELLS
def test_blocked_forward_is_the_one_call_bit_for_bit(cell, layers, episodic, blocked):
    module, episodes = _module(cell, layers), _episodes(episodic)
    with torch.no_grad():
        one, one_calls = blocked(False, lambda: _run(module, _input(), episodes))
        blocks, block_calls = blocked(True, lambda: _run(module, _input(), episodes))
    assert block_calls >= 3 * one_calls > 0, f"{block_calls} fused calls in blocks, {one_calls} in one call"
    for name, want, got in zip(("output 1", "output 2", "state", "state"), one, blocks):
        assert torch.equal(want, got), f"{name} differs by {float((want - got).abs().max()):.3g}"


def test_a_blocked_streaming_step_is_the_one_call_bit_for_bit(blocked):
    module, x = _module("gru", 2), _input()

    def two_chunks() -> torch.Tensor:
        module.reset_states()
        step = module.streaming_step()
        step(x)
        return step(x.flip(2))  # from the carried state

    with torch.no_grad():
        (one, one_calls), (blocks, block_calls) = (blocked(forced, two_chunks) for forced in (False, True))
    assert block_calls == 3 * one_calls == 6, f"{block_calls} fused calls in blocks, {one_calls} in one call"
    assert torch.equal(one, blocks), f"outputs differ by {float((one - blocks).abs().max()):.3g}"


@EPISODES
@CELLS
def test_blocked_gradients_are_the_one_calls_within_the_blocks_tolerance(cell, episodic, blocked):
    """Outputs, states, input and weight gradients of a 2-layer stack in training; weight gradients sum per block."""
    module, episodes = _module(cell, 2), _episodes(episodic)

    def gradients() -> list[torch.Tensor]:
        x = _input(requires_grad=True)
        module.zero_grad(set_to_none=True)
        outputs = _run(module, x, episodes)
        out = torch.cat(outputs[:2], 2)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
        return [*(o.detach() for o in outputs), x.grad, *(p.grad for p in module.parameters())]

    one, one_calls = blocked(False, gradients)
    blocks, block_calls = blocked(True, gradients)
    assert block_calls >= 3 * one_calls > 0, f"{block_calls} fused calls in blocks, {one_calls} in one call"
    if cell != "lstm":
        for name, want, got in zip(("output 1", "output 2", "state"), one, blocks):
            assert torch.equal(want, got), f"{name} differs by {float((want - got).abs().max()):.3g}"
    for want, got in zip(one, blocks):
        scale = want.abs().max()
        error = float(((want - got).abs() - GRADIENTS.rtol * want.abs()).max() / scale)
        assert error <= GRADIENTS.atol, f"{tuple(want.shape)}: {error:.3g} of its largest entry {float(scale):.3g}"


def _stack(hidden: int = 32, layers: int = 1, **kwargs) -> Stack:
    rnn = torch.nn.GRU(32, hidden, num_layers=layers, dropout=0.5 if layers > 1 else 0.0)
    return Stack("gru", [rnn._flat_weights[k * 4 : (k + 1) * 4] for k in range(layers)], **kwargs)


@pytest.mark.parametrize("hidden", [32, 128])
def test_the_rule_blocks_a_large_cpu_chunk_within_the_cache_share(hidden):
    stack, steps = _stack(hidden), 16
    row_bytes = steps * (32 + 3 * hidden + hidden) * 4
    for rows in (16_384, 65_536):
        size = paths.block_rows(stack, rows, steps, "cpu")
        aligned = size % paths.ROW_ALIGN == 0 and paths.MIN_BLOCK_ROWS <= size <= rows // paths.MIN_BLOCKS
        assert aligned, f"{rows} rows: blocks of {size}"
        fits = size * row_bytes <= paths.cache_bytes() / paths.CACHE_SHARE or size == paths.MIN_BLOCK_ROWS
        assert fits, f"{rows} rows: blocks of {size} rows, {size * row_bytes} bytes, cache {paths.cache_bytes()}"


def test_the_rule_keeps_one_call_for_small_chunks_gpus_and_dropout_in_training():
    rows = 1 << 17
    assert paths.block_rows(_stack(), rows, 16, "cpu") < rows  # the same chunk blocks on the CPU
    assert paths.block_rows(_stack(), rows, 16, "cuda") == rows
    assert paths.block_rows(_stack(layers=2, training=True, dropout=0.5), rows, 16, "cpu") == rows
    assert paths.block_rows(_stack(layers=2, training=False, dropout=0.5), rows, 16, "cpu") < rows
    for small in (1, 64, paths.MIN_BLOCKS * paths.MIN_BLOCK_ROWS - 1):
        assert paths.block_rows(_stack(128), small, 16, "cpu") == small


def test_blocks_start_every_size_rows_and_the_last_takes_the_rest():
    assert block_bounds(200, 64) == [0, 64, 128, 200]
    assert block_bounds(192, 64) == [0, 64, 128, 192]
    assert block_bounds(127, 64) == [0, 127]
    with pytest.raises(ValueError, match="at least 1 row, got size=0"):
        block_bounds(10, 0)


def test_the_cache_size_is_read_from_sysfs_text():
    assert [paths._size_bytes(t) for t in ("32768K\n", "1M", "512")] == [32 * 2**20, 2**20, 512]
    assert paths.cache_bytes() >= 2**16
