"""The JAX backend's pieces: tracers, the float64 workarounds, cuDNN's LSTM on a GPU, the ``jax.jit`` streaming step.

Imported only when Keras runs on JAX (``models_keras.backends`` picks it). Keras already runs
LSTM/GRU as one ``lax.scan`` with the input projection hoisted out, inside the jitted step; on an
NVIDIA GPU a float32 LSTM stack runs through cuDNN instead (``run_fused``; never run on a GPU
here, its weight layout tested on the CPU against ``jax.experimental.rnn.lstm_ref``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
from jax.experimental import rnn

from models_keras.backends.portable import (
    guard,
    in_graph,
    in_replica,
    run_fused_stepped,
    run_time_checks,
    scan,
    strategy_replicas,
    xla,
)
from multistate_core.cells import CELLS, to_torch

__all__ = [
    "check_dtype",
    "cudnn_lstm_weights",
    "exact_tanh",
    "guard",
    "holds_values",
    "in_graph",
    "in_replica",
    "on_gpu",
    "rnn_kwargs",
    "run_fused",
    "run_fused_stepped",
    "run_time_checks",
    "scan",
    "step_function",
    "strategy_replicas",
    "xla",
]


def holds_values(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def exact_tanh(x: Any) -> Any:
    """``jnp.tanh``: Keras 3.15's ``ops.tanh`` computes float64 in float32 on JAX."""
    return jnp.tanh(x)


def rnn_kwargs(rnn_class: type, use_bias: bool, kwargs: dict, exact_tanh: Callable) -> dict:
    """The default ``activation="tanh"`` becomes ``exact_tanh``. Without a bias, Keras's fused JAX LSTM/GRU
    make zero biases with ``jnp.zeros``, float64 in x64 mode, and ``lax.scan`` then refuses a float32 carry:
    the generic loop there."""
    kwargs = dict(kwargs)
    if kwargs.get("activation", "tanh") == "tanh":
        kwargs["activation"] = exact_tanh
    if not use_bias and jax.config.jax_enable_x64 and issubclass(rnn_class, (keras.layers.LSTM, keras.layers.GRU)):  # type: ignore[attr-defined]  # stub lacks the flag
        kwargs.setdefault("use_cudnn", False)
    return kwargs


def check_dtype(dtype: str) -> None:
    """float64 needs JAX's x64 mode, otherwise JAX computes in float32."""
    if dtype == "float64" and not jax.config.jax_enable_x64:  # type: ignore[attr-defined]  # the jax.config stub lacks its runtime flags
        raise ValueError(
            "float64 on the JAX backend needs JAX's x64 mode, otherwise JAX computes in float32: "
            "set JAX_ENABLE_X64=1 or call jax.config.update('jax_enable_x64', True) before building the layer"
        )


@functools.cache
def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def cudnn_lstm_weights(layer: Any) -> Any:
    """The stack's LSTM weights as cuDNN's flat vector (``jax.experimental.rnn``'s layout).

    Every layer's ``W_ih`` ``(4H, F)`` and ``W_hh`` ``(4H, H)`` in torch's gate order (which is
    Keras's), then every layer's ``b_ih`` and ``b_hh`` (the Keras bias and zeros; zeros without bias).
    """
    matrices, biases = [], []
    for layer_rnn in layer.rnn_layers:
        kernel, recurrent, *bias = (w.value for w in layer_rnn.cell.weights)
        weights = to_torch(layer.cell, [kernel, recurrent])
        matrices += [weights["weight_ih"].ravel(), weights["weight_hh"].ravel()]
        zeros = jnp.zeros(CELLS[layer.cell].gates * layer.units, kernel.dtype)
        biases += [bias[0] if bias else zeros, zeros]  # LSTM gates are in the same order: the bias as it is
    return jnp.concatenate(matrices + biases)


def run_fused(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """Run the whole LSTM stack on ``x`` ``(N, T, F)`` through cuDNN (``jax.experimental.rnn.lstm``).

    Differentiable (the op has a cuDNN backward). Runs on NVIDIA GPUs only.
    """
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


def step_function(layer: Any, checked: Callable[[Any], Any], compiled: bool) -> Callable[[Any], Any]:
    """The layer's own ``call``, compiled once by ``jax.jit`` through ``layer.stateless_call`` on the
    variables' stored arrays; the new states are assigned back (``compiled`` changes nothing)."""
    run = jax.jit(lambda trainable, others, x: layer.stateless_call(trainable, others, x))
    held: list = []  # the layer's variables, listed once it is built (Keras walks its tree on each listing)

    def step(x: Any) -> Any:
        x = checked(x)
        if not held:
            states = {id(v) for v in layer.state_variables}
            others = layer.non_trainable_variables
            held[:] = [layer.trainable_variables, others, [(k, v) for k, v in enumerate(others) if id(v) in states]]
        trainable, others, states = held
        # The stored arrays, as stateless_call takes them (``.value`` would also autocast each one, every frame).
        y, new = run([v._value for v in trainable], [v._value for v in others], x)
        for k, variable in states:  # inference moves nothing else
            variable.assign(new[k])
        return y

    return step
