"""The fused path for Keras's torch backend: torch's own RNN op run on the Keras variables.

Keras's torch backend steps an LSTM through a Python loop on the CPU. Here the
whole stack of inner layers runs as ONE ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call
(oneDNN on the CPU, cuDNN on a GPU) through ``torch.func.functional_call``, with
parameters that are views of (or, for the GRU gate order, built from) the Keras
variables, so gradients reach the Keras variables. Layers the fused op cannot
serve (dropout, other activations, masking options) take the generic Keras path.

Example:
    >>> layer = MultiStateLSTM(8, num_streams=3)   # on KERAS_BACKEND=torch  # doctest: +SKIP
    >>> serves(layer)                                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
from typing import Any

import keras

from harness.layouts import LAYOUTS

_ACTIVATIONS = {"lstm": ("tanh", "sigmoid"), "gru": ("tanh", "sigmoid"), "rnn": None}


def serves(layer: Any) -> bool:
    """Whether ``layer`` (a multi-state layer) can run on the fused torch op."""
    if keras.backend.backend() != "torch" or not layer.fused:
        return False
    return all(_cell_served(layer.cell, rnn) for rnn in layer.rnn_layers)


def _cell_served(cell: str, rnn: Any) -> bool:
    c = rnn.cell
    if getattr(c, "dropout", 0) or getattr(c, "recurrent_dropout", 0) or rnn.go_backwards or rnn.unroll:
        return False
    if cell == "rnn":
        return c.activation.__name__ in ("tanh", "relu")
    if cell == "gru" and not c.reset_after:
        return False
    return (c.activation.__name__, c.recurrent_activation.__name__) == _ACTIVATIONS[cell]


@functools.lru_cache(maxsize=64)
def _template(cell: str, input_size: int, units: int, layers: int, bias: bool, nonlinearity: str, dtype: Any) -> Any:
    """A parameter-less (meta device) torch module of the stack's shape, to call with the Keras weights."""
    import torch

    classes = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    return classes[cell](
        input_size, units, num_layers=layers, bias=bias, batch_first=True, device="meta", dtype=dtype, **extra
    )


def _torch_order(blocks: Any, order: tuple[int, ...], units: int) -> Any:
    """Keras gate blocks (last axis) -> torch's order; no copy when the order is the same."""
    import torch

    if order == tuple(range(len(order))):
        return blocks
    parts = blocks.split(units, dim=-1)
    return torch.cat([parts[order.index(i)] for i in range(len(order))], dim=-1)


def _parameters(layer: Any) -> dict[str, Any]:
    """Torch-named parameters built from the Keras variables, keeping the autograd link."""
    import torch

    order, units, params = LAYOUTS[layer.cell].keras_order, layer.units, {}
    for i, rnn in enumerate(layer.rnn_layers):
        c = rnn.cell
        params[f"weight_ih_l{i}"] = _torch_order(c.kernel.value, order, units).T
        params[f"weight_hh_l{i}"] = _torch_order(c.recurrent_kernel.value, order, units).T
        if layer.use_bias:
            bias = _torch_order(c.bias.value, order, units)
            split = LAYOUTS[layer.cell].split_bias
            params[f"bias_ih_l{i}"] = bias[0] if split else bias
            params[f"bias_hh_l{i}"] = bias[1] if split else torch.zeros_like(bias)
    return params


def run(layer: Any, x: Any, initial: list, training: bool) -> tuple[Any, list]:
    """Run the whole stack on ``x`` ``(N, T, F)`` from ``initial`` (each ``(L, N, H)``) in one fused call."""
    from torch.func import functional_call

    nonlinearity = layer.rnn_layers[0].cell.activation.__name__
    module = _template(
        layer.cell, layer.input_size, layer.units, layer.num_layers, layer.use_bias, nonlinearity, x.dtype
    )
    module.train(training)
    hx = tuple(s.contiguous() for s in initial)
    out, final = functional_call(module, _parameters(layer), (x, hx if len(hx) > 1 else hx[0]))
    return out, list(final) if isinstance(final, tuple) else [final]
