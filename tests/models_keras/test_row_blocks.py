"""Row blocks on the Keras torch backend: the layer runs ``models_torch.ops``'s kernels, so a large chunk runs in row
blocks there too (``models_torch.ops.paths.block_rows``), with the one call's result bit for bit.

As in ``tests/models_torch/test_row_blocks.py``, the blocks are forced at a small row count by planting the rule's
answer; the reference is the same layer with the rule as it is (one call at these shapes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models_keras import MultiStateGRU, MultiStateLSTM
from tests.helpers import keras_backend

pytestmark = [
    pytest.mark.keras,
    pytest.mark.skipif(keras_backend() != "torch", reason="only the torch backend runs models_torch.ops's kernels"),
]

B, S, T, F, H = 4, 50, 5, 8, 16  # 200 rows: blocks of 64, 64 and 72 rows
BLOCK = 64


@pytest.mark.parametrize("layer_class", [MultiStateLSTM, MultiStateGRU])
@pytest.mark.parametrize("episodic", [False, True], ids=["plain", "resets"])
def test_the_torch_backend_runs_row_blocks_bit_for_bit(layer_class, episodic, monkeypatch):
    from models_torch.ops import paths

    layer = layer_class(H, S, batch_size=B, num_layers=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, S, T, F)).astype("float32")
    resets = (rng.random((B, S, T)) < 0.1) if episodic else None
    rule, calls = paths.block_rows, []
    op = layer_class.__name__.removeprefix("MultiState").lower()
    fused = getattr(torch, op)
    monkeypatch.setattr(torch, op, lambda *args: calls.append(op) or fused(*args))

    def two_chunks(forced: bool) -> tuple[list[np.ndarray], int]:
        monkeypatch.setattr(paths, "block_rows", (lambda *_: BLOCK) if forced else rule)
        layer.reset_states()
        calls.clear()
        with torch.no_grad():  # inference, as ``predict`` runs: recording autograd, an LSTM may differ in last bits
            outputs = [layer(x, resets=resets), layer(x[:, :, ::-1].copy(), resets=resets)]
        return [np.asarray(out.detach().cpu()) for out in outputs], len(calls)

    (one, one_calls), (blocks, block_calls) = two_chunks(False), two_chunks(True)
    assert block_calls >= 3 * one_calls > 0, f"{block_calls} fused calls in blocks, {one_calls} in one call"
    for name, want, got in zip(("output 1", "output 2"), one, blocks):
        assert np.array_equal(want, got), f"{name} differs by {np.abs(want - got).max():.3g}"
