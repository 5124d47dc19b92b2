"""Fast paths for the multi-state layers, kept apart from the layer as Keras keeps backend kernels.

- torch backend: Keras steps an LSTM through a Python loop on the CPU. Here the
  whole stack runs as ONE ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call (oneDNN on the CPU,
  cuDNN on a GPU) through ``torch.func.functional_call``, with parameters that are
  views of (or, for the GRU gate order, built from) the Keras variables, so
  gradients reach them.
- TensorFlow: Keras compiles with XLA only on a GPU by default; for inference the
  stack's recurrence is wrapped in ``tf.function(jit_compile=True)`` here (training
  stays generic: TensorFlow cannot pass the loop's gradient lists across XLA).
- JAX: Keras already runs LSTM/GRU as one ``lax.scan`` with the input projection
  hoisted out, inside the jitted step; the generic path is used.

Configurations a fast path cannot serve (dropout, activations the torch op lacks,
``go_backwards``, ``unroll``) take the generic per-layer Keras path.

Example:
    >>> path_name(MultiStateLSTM(8, num_streams=3))   # on KERAS_BACKEND=torch  # doctest: +SKIP
    'torch-fused'
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import keras

from harness.layouts import LAYOUTS

_ACTIVATIONS = {"lstm": ("tanh", "sigmoid"), "gru": ("tanh", "sigmoid"), "rnn": None}


def path_name(layer: Any, training: bool | None = False) -> str:
    """Which path ``layer`` runs on: "torch-fused", "tf-xla" (inference only) or "generic"."""
    backend = keras.backend.backend()
    if not layer.fused or not all(_plain(rnn) for rnn in layer.rnn_layers):
        return "generic"
    if backend == "torch" and all(_torch_has(layer.cell, rnn.cell) for rnn in layer.rnn_layers):
        return "torch-fused"
    if backend == "tensorflow" and not training:  # gradients cannot cross XLA's while-loop boundary
        return "tf-xla"
    return "generic"


def runner(layer: Any, training: bool | None) -> Callable:
    """``run(x, initial, training) -> (output, [state (L, N, H), ...])`` for ``layer``'s path."""
    name = path_name(layer, training)
    if name == "torch-fused":
        return functools.partial(_run_torch, layer)
    if name == "tf-xla" and not _symbolic():
        if layer not in _XLA:
            import tensorflow as tf

            _XLA[layer] = tf.function(layer._run_layers, jit_compile=True)
        return _XLA[layer]
    return layer._run_layers


_XLA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _symbolic() -> bool:
    """Whether Keras is tracing shapes only (a subclassed model's first build): no compiled function then."""
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope()


def _plain(rnn: Any) -> bool:
    c = rnn.cell
    return not (getattr(c, "dropout", 0) or getattr(c, "recurrent_dropout", 0) or rnn.go_backwards or rnn.unroll)


def _torch_has(cell: str, c: Any) -> bool:
    """Whether torch's op computes what the Keras cell ``c`` does."""
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


def _run_torch(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """Run the whole stack on ``x`` ``(N, T, F)`` from ``initial`` (each ``(L, N, H)``) in one fused call."""
    from torch.func import functional_call

    nonlinearity = layer.rnn_layers[0].cell.activation.__name__
    module = _template(
        layer.cell, layer.input_size, layer.units, layer.num_layers, layer.use_bias, nonlinearity, x.dtype
    )
    module.train(bool(training))
    hx = tuple(s.contiguous() for s in initial)
    out, final = functional_call(module, _parameters(layer), (x, hx if len(hx) > 1 else hx[0]))
    return out, list(final) if isinstance(final, tuple) else [final]
