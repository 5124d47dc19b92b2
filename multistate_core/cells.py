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
import functools
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Saturation:
    """How two 0/1 input flag columns reset and hold a gated cell inside one plain call (``models_torch.ops.saturate``).

    ``zero``/``hold``: per torch gate block, the sign of the drive the flag adds to it: -1 shuts the gate
    (sigmoid -> 0), +1 opens it. ``cancelled_bias``: the block whose input bias the zero flag cancels
    (GRU's n gate: its bias sits inside ``r * (...)`` and would survive a shut gate), or None.
    """

    zero: dict[int, int]
    hold: dict[int, int]
    cancelled_bias: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """One cell kind, as both frameworks know it.

    ``torch_class``/``keras_class``: the raw layer's class name in ``torch.nn`` / ``keras.layers``;
    ``torch_multistate``/``keras_multistate``: this project's class names. ``state_names``: the
    carried state tensors in ``get_states()`` order. ``gates``: gate blocks per weight matrix, in
    torch's order; ``keras_order``: Keras's blocks as indices of torch's. ``split_bias``: Keras keeps
    input and recurrent biases apart as ``(2, G*H)`` (GRU, ``reset_after=True``); otherwise it has one
    bias, their sum. ``activations``: each Keras activation attribute and the values the torch op
    computes (a simple RNN's torch ``nonlinearity`` is its ``activation``). ``torch_op``: the ATen
    op ``nn.LSTM``/``GRU``/``RNN.forward`` calls (``torch.lstm``, ...), ``{nonlinearity}`` standing for
    a simple RNN's; ``fused_op``/``cell_op`` spell it out. ``saturation``: how flag columns reset the
    cell inside one plain call, or None for a cell without gates.
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
    torch_op: str
    saturation: Saturation | None = None

    @property
    def num_states(self) -> int:
        """How many state tensors the cell carries (LSTM: h and c)."""
        return len(self.state_names)

    @property
    def nonlinearities(self) -> tuple[str, ...]:
        """The values of torch's ``nonlinearity`` (and Keras's ``activation``) the cell offers."""
        return self.activations["activation"]

    def fused_op(self, nonlinearity: str = "tanh") -> str:
        """The name of torch's fused sequence op: "lstm", "gru", "rnn_tanh" or "rnn_relu"."""
        return self.torch_op.format(nonlinearity=nonlinearity)

    def cell_op(self, nonlinearity: str = "tanh") -> str:
        """The name of torch's one-step op: "lstm_cell", "gru_cell", "rnn_tanh_cell" or "rnn_relu_cell"."""
        return f"{self.fused_op(nonlinearity)}_cell"


CELLS = {
    cell.name: cell
    for cell in (
        Cell(
            name="lstm",
            torch_class="LSTM",
            keras_class="LSTM",
            torch_multistate="MultiStateLSTM",
            keras_multistate="MultiStateLSTM",
            state_names=("h", "c"),
            gates=4,
            keras_order=(0, 1, 2, 3),
            split_bias=False,
            activations={"activation": ("tanh",), "recurrent_activation": ("sigmoid",)},
            torch_op="lstm",
            # gates i, f, g, o: a zero step shuts i, f, o (c = 0, h = 0); a hold step shuts i, opens f (c kept)
            saturation=Saturation(zero={0: -1, 1: -1, 3: -1}, hold={0: -1, 1: +1}),
        ),
        Cell(
            name="gru",
            torch_class="GRU",
            keras_class="GRU",
            torch_multistate="MultiStateGRU",
            keras_multistate="MultiStateGRU",
            state_names=("h",),
            gates=3,
            keras_order=(1, 0, 2),
            split_bias=True,
            activations={"activation": ("tanh",), "recurrent_activation": ("sigmoid",)},
            torch_op="gru",
            # gates r, z, n: a zero step shuts r and z and cancels n's input bias (h = 0); a hold step opens z
            saturation=Saturation(zero={0: -1, 1: -1}, hold={1: +1}, cancelled_bias=2),
        ),
        Cell(
            name="rnn",
            torch_class="RNN",
            keras_class="SimpleRNN",
            torch_multistate="MultiStateRNN",
            keras_multistate="MultiStateSimpleRNN",
            state_names=("h",),
            gates=1,
            keras_order=(0,),
            split_bias=False,
            activations={"activation": ("tanh", "relu")},
            torch_op="rnn_{nonlinearity}",
        ),
    )
}


def cell_of_torch(class_name: str) -> str:
    """The cell of a ``torch.nn`` class name ("LSTM" -> "lstm")."""
    return next(k for k, v in CELLS.items() if v.torch_class == class_name)


def cell_of_class(obj: object) -> str | None:
    """The cell of a layer (or layer class): a ``torch.nn`` or ``keras.layers`` RNN, or a multi-state layer of this
    project, subclasses included ("LSTM" -> "lstm"); None for anything else.

    Read from the class names along the method resolution order, a raw class's name only in its own framework
    (``keras.layers.RNN``, the generic wrapper, is no simple RNN).

    Example:
        >>> class MyLSTM: pass
        >>> MyLSTM.__name__, MyLSTM.__module__ = "LSTM", "torch.nn.modules.rnn"
        >>> cell_of_class(MyLSTM), cell_of_class(3)
        ('lstm', None)
    """
    return _cell_of_type(obj if isinstance(obj, type) else type(obj))


@functools.cache
def _cell_of_type(kind: type) -> str | None:
    for klass in kind.__mro__:
        root = klass.__module__.split(".")[0]
        for cell in CELLS.values():
            raw = cell.torch_class if root == "torch" else cell.keras_class if root == "keras" else None
            if klass.__name__ in (raw, cell.torch_multistate, cell.keras_multistate):
                return cell.name
    return None


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
