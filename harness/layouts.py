"""How each cell's weights are laid out in torch and in Keras: one table drives both directions.

The neutral form is torch's: per layer (and direction) ``weight_ih`` ``(G*H, F)``,
``weight_hh`` ``(G*H, H)``, ``bias_ih`` and ``bias_hh`` ``(G*H,)``. Keras holds
``kernel`` ``(F, G*H)``, ``recurrent_kernel`` ``(H, G*H)`` and ``bias``, with the
gate blocks in ``keras_order`` (indices of torch's blocks).

Example:
    >>> LAYOUTS["gru"].keras_order      # Keras z, r, h  =  torch blocks 1, 0, 2
    (1, 0, 2)
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CellLayout:
    """One row of the DESIGN.md weight-layout table.

    ``split_bias``: Keras keeps input and recurrent biases apart as ``(2, G*H)``
    (GRU with ``reset_after=True``); otherwise Keras has one bias, their sum.
    ``keras_activations``: the Keras activation settings that compute what the torch cell does.
    """

    torch_class: str
    gates: int
    keras_order: tuple[int, ...]
    split_bias: bool
    keras_activations: dict[str, str]


LAYOUTS = {
    "lstm": CellLayout("LSTM", 4, (0, 1, 2, 3), False, {"activation": "tanh", "recurrent_activation": "sigmoid"}),
    "gru": CellLayout("GRU", 3, (1, 0, 2), True, {"activation": "tanh", "recurrent_activation": "sigmoid"}),
    "rnn": CellLayout("RNN", 1, (0,), False, {"activation": "tanh"}),
}


def cell_of_torch(class_name: str) -> str:
    return next(k for k, v in LAYOUTS.items() if v.torch_class == class_name)


def _reorder(blocks: np.ndarray, order: tuple[int, ...], axis: int) -> np.ndarray:
    parts = np.split(blocks, len(order), axis=axis)
    return np.concatenate([parts[i] for i in order], axis=axis)


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(order))


def to_keras(cell: str, torch_weights: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Torch's ``weight_ih, weight_hh[, bias_ih, bias_hh]`` -> Keras ``[kernel, recurrent_kernel(, bias)]``."""
    layout = LAYOUTS[cell]
    order = layout.keras_order
    out = [_reorder(torch_weights["weight_ih"], order, 0).T, _reorder(torch_weights["weight_hh"], order, 0).T]
    if "bias_ih" in torch_weights:
        b_ih, b_hh = (_reorder(torch_weights[k], order, 0) for k in ("bias_ih", "bias_hh"))
        out.append(np.stack([b_ih, b_hh]) if layout.split_bias else b_ih + b_hh)
    return out


def to_torch(cell: str, keras_weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Keras ``[kernel, recurrent_kernel(, bias)]`` -> torch's names; a merged bias goes to ``bias_ih``."""
    layout = LAYOUTS[cell]
    back = _inverse(layout.keras_order)
    out = {"weight_ih": _reorder(keras_weights[0].T, back, 0), "weight_hh": _reorder(keras_weights[1].T, back, 0)}
    if len(keras_weights) == 3:
        bias = keras_weights[2]
        b_ih, b_hh = (bias[0], bias[1]) if layout.split_bias else (bias, np.zeros_like(bias))
        out["bias_ih"], out["bias_hh"] = _reorder(b_ih, back, 0), _reorder(b_hh, back, 0)
    return out
