"""Fast paths for the multi-state layers, kept apart from the layer as Keras keeps backend kernels.

- torch backend: Keras steps an LSTM through a Python loop on the CPU. Here the
  whole stack runs as ONE ``nn.LSTM``/``nn.GRU``/``nn.RNN`` call (oneDNN on the CPU,
  cuDNN on a GPU) through ``torch.func.functional_call``, with contiguous parameters
  built from the Keras variables (``multistate_core.cells.to_torch``), so gradients reach them.
- TensorFlow: Keras compiles with XLA only on a GPU by default; for inference the
  stack's recurrence, and the step loop that takes resets and lengths, are wrapped in
  ``tf.function(jit_compile=True)`` (``xla``; training stays generic: TensorFlow cannot
  pass the loop's gradient lists across XLA).
- JAX: Keras already runs LSTM/GRU as one ``lax.scan`` with the input projection
  hoisted out, inside the jitted step; on an NVIDIA GPU a float32 LSTM stack runs
  through cuDNN instead (``jax.experimental.rnn.lstm``, ``run_jax_cudnn``; never run
  on a GPU here, its weight layout tested on the CPU against ``lstm_ref``).

Configurations a fast path cannot serve (dropout, activations the torch op lacks,
``go_backwards``, ``unroll``) take the generic per-layer Keras path.

Example:
    >>> path_name(MultiStateLSTM(8, num_streams=3))   # on KERAS_BACKEND=torch  # doctest: +SKIP
    'torch-fused'
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras

from multistate_core.cells import CELLS, to_torch

if TYPE_CHECKING:  # the torch kernels load only under the torch backend
    from models_torch.ops.kernels import Stack


def path_name(layer: Any, training: bool | None = False) -> str:
    """Which path ``layer`` runs on: "torch-fused", "jax-cudnn", "tf-xla" (inference only) or "generic"."""
    backend = keras.backend.backend()
    if not layer.fused or not all(_plain(rnn) for rnn in layer.rnn_layers):
        return "generic"
    torch_has = all(_torch_has(layer.cell, rnn.cell) for rnn in layer.rnn_layers)
    if backend == "torch" and torch_has:
        return "torch-fused"
    if backend == "jax" and torch_has and layer.cell == "lstm" and layer.compute_dtype == "float32" and _jax_on_gpu():
        return "jax-cudnn"
    if backend == "tensorflow" and not training:  # gradients cannot cross XLA's while-loop boundary
        return "tf-xla"
    return "generic"


def _jax_on_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def cudnn_lstm_weights(layer: Any) -> Any:
    """The stack's LSTM weights as cuDNN's flat vector (``jax.experimental.rnn``'s layout).

    Every layer's ``W_ih`` ``(4H, F)`` and ``W_hh`` ``(4H, H)`` in torch's gate order (which is
    Keras's), then every layer's ``b_ih`` and ``b_hh`` (the Keras bias and zeros; zeros without bias).
    """
    import jax.numpy as jnp

    matrices, biases = [], []
    for rnn in layer.rnn_layers:
        kernel, recurrent, *bias = (w.value for w in rnn.cell.weights)
        weights = to_torch(layer.cell, [kernel, recurrent])
        matrices += [weights["weight_ih"].ravel(), weights["weight_hh"].ravel()]
        zeros = jnp.zeros(4 * layer.units, kernel.dtype)
        biases += [bias[0] if bias else zeros, zeros]  # LSTM gates are in the same order: the bias as it is
    return jnp.concatenate(matrices + biases)


def run_jax_cudnn(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """Run the whole LSTM stack on ``x`` ``(N, T, F)`` through cuDNN (``jax.experimental.rnn.lstm``).

    Differentiable (the op has a cuDNN backward). Runs on NVIDIA GPUs only; its weight layout is
    tested on the CPU against ``jax.experimental.rnn.lstm_ref``.
    """
    import jax.numpy as jnp
    from jax.experimental import rnn

    lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
    y, h, c = rnn.lstm(
        x,
        initial[0],
        initial[1],
        cudnn_lstm_weights(layer),
        lengths,
        input_size=layer.input_size,
        hidden_size=layer.units,
        num_layers=layer.num_layers,
        dropout=0.0,
        bidirectional=False,
    )
    return y, [h, c]


def xla(fn: Callable) -> Callable:
    """``fn`` compiled with XLA by TensorFlow."""
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def symbolic() -> bool:
    """Whether Keras is tracing shapes only (a subclassed model's first build): no compiled function then.

    Keras 3 has no public spelling of this; ``tests/test_keras_models.py`` fails loudly if it moves.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope()


def _plain(rnn: Any) -> bool:
    c = rnn.cell
    return not (getattr(c, "dropout", 0) or getattr(c, "recurrent_dropout", 0) or rnn.go_backwards or rnn.unroll)


def _torch_has(cell: str, c: Any) -> bool:
    """Whether torch's op computes what the Keras cell ``c`` does."""
    if cell == "gru" and not c.reset_after:
        return False
    return all(getattr(c, attr).__name__ in allowed for attr, allowed in CELLS[cell].activations.items())


@functools.lru_cache(maxsize=64)
def _template(cell: str, input_size: int, units: int, layers: int, bias: bool, nonlinearity: str, dtype: Any) -> Any:
    """A parameter-less (meta device) torch module of the stack's shape, to call with the Keras weights."""
    import torch

    extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    return getattr(torch.nn, CELLS[cell].torch_class)(
        input_size, units, num_layers=layers, bias=bias, batch_first=True, device="meta", dtype=dtype, **extra
    )


def parameters(layer: Any) -> dict[str, Any]:
    """Torch-named, contiguous parameters built from the Keras variables, keeping the autograd link.

    Contiguous: cuDNN flattens the weights into one buffer and refuses strided views.
    """
    params = {}
    for i, rnn in enumerate(layer.rnn_layers):
        weights = [w.value for w in rnn.cell.weights]
        for name, value in to_torch(layer.cell, weights).items():
            params[f"{name}_l{i}"] = value.contiguous()
    return params


def torch_fused(layer: Any, dtype: Any, params: dict[str, Any], stack: Stack) -> Callable:
    """``fused(x, hx) -> (output, [final states])``: the whole stack as ONE torch RNN call with the Keras weights.

    ``x`` is an ``(N, T, F)`` tensor (``models_torch.ops.kernels.run_plain`` on ``stack``: torch's op, or its
    cell ops for a small one-step chunk) or a ``PackedSequence`` (an ``nn`` module of the stack's shape
    through ``functional_call`` on ``params``, ``parameters(layer)``); ``hx`` a sequence of ``(L, N, H)``
    states.
    """
    import torch
    from torch.func import functional_call

    from models_torch.ops.kernels import run_plain

    def fused(x: Any, initial: Any) -> tuple[Any, list]:
        if isinstance(x, torch.Tensor):
            out, final = run_plain(stack, x, tuple(initial))
            return out, list(final)
        module = _template(
            layer.cell, layer.input_size, layer.units, layer.num_layers, layer.use_bias, stack.nonlinearity, dtype
        )
        module.train(stack.training)
        hx = tuple(s.contiguous() for s in initial)
        out, final = functional_call(module, params, (x, hx if len(hx) > 1 else hx[0]))
        return out, list(final) if isinstance(final, tuple) else [final]

    return fused


def torch_stack(layer: Any, params: dict[str, Any], training: bool | None) -> Stack:
    """The stack as ``models_torch.ops.kernels`` runs it, on the torch-named ``params`` of ``parameters(layer)``."""
    from models_torch.ops.kernels import Stack

    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if layer.use_bias else ())
    layers = [[params[f"{name}_l{k}"] for name in names] for k in range(layer.num_layers)]
    nonlinearity = layer.rnn_layers[0].cell.activation.__name__
    return Stack(layer.cell, layers, bool(training), nonlinearity=nonlinearity)


def run_torch(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """Run the whole stack on ``x`` ``(N, T, F)`` from ``initial`` (each ``(L, N, H)``) in one fused call."""
    params = parameters(layer)
    return torch_fused(layer, x.dtype, params, torch_stack(layer, params, training))(x, initial)
