"""The torch path chooser (``models_torch.ops.paths.path_for``): which path each kind of chunk takes.

The runners themselves are held equal to the per-step reference in ``test_resets.py`` and
``test_torch_models.py``; here the choice is asserted from the facts, each case against a fact changed.
"""

import numpy as np
import pytest
import torch

from models_torch.inner_rnn import stack_of
from models_torch.ops.kernels import Stack
from models_torch.ops.paths import Path, path_for
from multistate_core.cells import CELLS

ROWS, STEPS, F, H = 6, 10, 3, 4


def stack(cell: str, layers: int = 1, **kwargs) -> Stack:
    rnn = getattr(torch.nn, CELLS[cell].torch_class)(F, H, num_layers=layers, dropout=0.5 if layers > 1 else 0.0)
    return Stack(cell, [rnn._flat_weights[k * 4 : (k + 1) * 4] for k in range(layers)], **kwargs)


def choose(cell: str, resets=None, lengths=None, x=None, **kwargs) -> Path:
    x = torch.zeros(ROWS, STEPS, F) if x is None else x
    chunk = (x, tuple(torch.zeros(kwargs.get("layers", 1), ROWS, H) for _ in CELLS[cell].state_names))
    made = stack(cell, **kwargs)
    return path_for(made, ROWS, STEPS, "cpu", resets=resets, lengths=lengths, chunk=chunk)


def inner_reset() -> np.ndarray:
    resets = np.zeros((ROWS, STEPS), bool)
    resets[2, 5] = True
    return resets


@pytest.mark.parametrize("cell", CELLS)
def test_a_plain_chunk_takes_the_cell_ops_for_one_small_step_only(cell):
    small = stack(cell)
    assert path_for(small, ROWS, 1, "cpu") is Path.CELL_OPS
    assert path_for(small, ROWS, 2, "cpu") is Path.PLAIN
    assert path_for(small, ROWS, 1, "cuda") is Path.PLAIN
    assert path_for(small, 10**6, 1, "cpu") is Path.PLAIN  # too many multiply-adds per step
    assert path_for(stack(cell, 2, training=True, dropout=0.5), ROWS, 1, "cpu") is Path.PLAIN


@pytest.mark.parametrize("cell", CELLS)
def test_resets_and_lengths_pick_the_path_by_cell_and_chunk(cell):
    first = np.zeros((ROWS, STEPS), bool)
    first[1, 0] = True
    assert choose(cell, resets=first) is Path.FIRST_STEP_RESET
    assert choose(cell, lengths=np.full(ROWS, STEPS)) is Path.PLAIN
    gated = CELLS[cell].saturation is not None
    assert choose(cell, resets=inner_reset()) is (Path.SATURATED if gated else Path.CUTS)
    assert choose(cell, resets=inner_reset(), x=torch.full((ROWS, STEPS, F), np.nan)) is Path.CUTS
    every_step = np.ones((ROWS, STEPS), bool)  # a cut at every step: packing costs less
    packed = choose(cell, resets=every_step, x=torch.full((ROWS, STEPS, F), np.inf))
    assert packed is Path.PACKED
    dropout = choose(cell, resets=inner_reset(), layers=2, training=True, dropout=0.5)
    assert dropout is Path.CUTS  # flag columns would be dropped between layers


def test_a_compiled_step_is_never_replaced():
    gru = stack("gru")
    assert path_for(gru, ROWS, 1, "cpu", compiled=True) is Path.COMPILED
    with pytest.raises(ValueError, match="runs on the CPU, not cuda"):
        path_for(gru, ROWS, 1, "cuda", compiled=True)


def test_an_rnn_of_no_known_cell_is_refused():
    class Custom(torch.nn.RNNBase):
        pass

    rnn = Custom("LSTM", F, H, batch_first=True)
    with pytest.raises(TypeError, match="expected an nn.LSTM, nn.GRU or nn.RNN"):
        stack_of(rnn, torch.zeros(ROWS, 1, F), (torch.zeros(1, ROWS, H),) * 2)
    with pytest.raises(ValueError, match="unknown cell 'lstm2'"):
        _ = Stack("lstm2", []).fused_op
