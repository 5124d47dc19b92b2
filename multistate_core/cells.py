"""The one description of each cell (``lstm``, ``gru``, ``rnn``): classes, gates, activations, weight layout.

Everything that needs to know a cell (both model packages, porting, the fast paths,
the benchmarks, the tests) reads it from ``CELLS``; nothing else spells it out.

The neutral weight form is torch's: per layer ``weight_ih`` ``(G*H, F)``,
``weight_hh`` ``(G*H, H)``, ``bias_ih`` and ``bias_hh`` ``(G*H,)``. Keras holds
``kernel`` ``(F, G*H)``, ``recurrent_kernel`` ``(H, G*H)`` and ``bias``, with the
gate blocks in ``keras_order`` (indices of torch's blocks):

=====  ===========================  ==========================  =======================================
cell   torch gates                  Keras gates                 torch -> Keras
=====  ===========================  ==========================  =======================================
lstm   i, f, g, o                   i, f, c, o (same order)     transpose; bias = b_ih + b_hh
gru    r, z, n (reset after)        z, r, h (``reset_after``)   swap r/z blocks, transpose;
                                                                bias (2, 3H) = stack(b_ih, b_hh)
rnn    tanh or relu                 ``SimpleRNN(activation)``   transpose; bias = b_ih + b_hh
=====  ===========================  ==========================  =======================================

Keras -> torch for LSTM/RNN puts the Keras bias in ``bias_ih`` and zeros in ``bias_hh``.

Example:
    >>> CELLS["gru"].keras_order      # Keras z, r, h  =  torch blocks 1, 0, 2
    (1, 0, 2)
    >>> reorder(np.arange(6), (1, 0, 2), axis=0)
    array([2, 3, 0, 1, 4, 5])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell kind, as both frameworks know it.

    ``torch_class``/``keras_class``: the raw layer's class name in ``torch.nn`` / ``keras.layers``;
    ``torch_multistate``/``keras_multistate``: this project's class names. ``state_names``: the
    carried state tensors in ``get_states()`` order. ``split_bias``: Keras keeps input and
    recurrent biases apart as ``(2, G*H)`` (GRU, ``reset_after=True``); otherwise it has one
    bias, their sum. ``activations``: each Keras activation attribute and the values the torch
    op computes (a simple RNN's torch ``nonlinearity`` is its ``activation``).
    """

    name: str
    torch_class: str
    keras_class: str
    torch_multistate: str
    keras_multistate: str
    state_names: tuple[str, ...]
    gates: int
    keras_order: tuple[int, ...]
    split_bias: bool
    activations: dict[str, tuple[str, ...]]


CELLS = {
    cell.name: cell
    for cell in (
        Cell(
            "lstm",
            "LSTM",
            "LSTM",
            "MultiStateLSTM",
            "MultiStateLSTM",
            ("h", "c"),
            4,
            (0, 1, 2, 3),
            False,
            {"activation": ("tanh",), "recurrent_activation": ("sigmoid",)},
        ),
        Cell(
            "gru",
            "GRU",
            "GRU",
            "MultiStateGRU",
            "MultiStateGRU",
            ("h",),
            3,
            (1, 0, 2),
            True,
            {"activation": ("tanh",), "recurrent_activation": ("sigmoid",)},
        ),
        Cell("rnn", "RNN", "SimpleRNN", "MultiStateRNN", "MultiStateSimpleRNN", ("h",), 1, (0,), False,
             {"activation": ("tanh", "relu")}),
    )
}  # fmt: skip


def cell_of_torch(class_name: str) -> str:
    """The cell of a ``torch.nn`` class name ("LSTM" -> "lstm")."""
    return next(k for k, v in CELLS.items() if v.torch_class == class_name)


def cell_of_gates(gates: int) -> str | None:
    """The cell with ``gates`` gate blocks, or None."""
    return next((k for k, v in CELLS.items() if v.gates == gates), None)


def reorder(blocks: Any, order: tuple[int, ...], axis: int) -> Any:
    """Gate blocks along ``axis`` taken in ``order`` (numpy arrays and torch tensors alike; autograd kept).

    No copy when ``order`` is the identity.
    """
    if order == tuple(range(len(order))):
        return blocks
    size = blocks.shape[axis] // len(order)
    index = np.concatenate([np.arange(i * size, (i + 1) * size) for i in order])
    return blocks[(slice(None),) * (axis % blocks.ndim) + (index,)]


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The order that undoes ``order``."""
    return tuple(int(i) for i in np.argsort(order))


def to_keras(cell: str, torch_weights: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Torch's ``weight_ih, weight_hh[, bias_ih, bias_hh]`` -> Keras ``[kernel, recurrent_kernel(, bias)]``."""
    spec = CELLS[cell]
    order = spec.keras_order
    out = [reorder(torch_weights["weight_ih"], order, 0).T, reorder(torch_weights["weight_hh"], order, 0).T]
    if "bias_ih" in torch_weights:
        b_ih, b_hh = (reorder(torch_weights[k], order, 0) for k in ("bias_ih", "bias_hh"))
        out.append(np.stack([b_ih, b_hh]) if spec.split_bias else b_ih + b_hh)
    return out


def to_torch(cell: str, keras_weights: list[Any]) -> dict[str, Any]:
    """Keras ``[kernel, recurrent_kernel(, bias)]`` -> torch's names; a merged bias goes to ``bias_ih``.

    Works on numpy arrays and on torch tensors (the Keras torch backend's fast path
    builds its torch parameters with it, keeping the autograd link).
    """
    spec = CELLS[cell]
    back = inverse(spec.keras_order)
    out = {"weight_ih": reorder(keras_weights[0].T, back, 0), "weight_hh": reorder(keras_weights[1].T, back, 0)}
    if len(keras_weights) == 3:
        bias = reorder(keras_weights[2], back, -1)
        zeros = np.zeros_like(bias) if isinstance(bias, np.ndarray) else bias.new_zeros(bias.shape)
        out["bias_ih"], out["bias_hh"] = (bias[0], bias[1]) if spec.split_bias else (bias, zeros)
    return out
