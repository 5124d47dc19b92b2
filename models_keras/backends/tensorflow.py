"""The TensorFlow backend's pieces: graph assertions, ``tf.scan``, ``tf.distribute`` replicas, XLA, ``tf.function``.

Imported only when Keras runs on TensorFlow (``models_keras.backends`` picks it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from models_keras.backends.portable import (
    NON_FINITE,
    check_dtype,
    exact_tanh,
    rnn_kwargs,
    run_fused,
    run_fused_stepped,
)

__all__ = [
    "check_dtype",
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
    return tf.executing_eagerly()


def run_time_checks(inputs: Any, batch: int, check_finite: bool, concrete: bool) -> Any:
    """Assertion ops the rest of the step depends on: the batch size where retracing relaxed it to ``None``,
    and, if asked, finite values (eager calls raise at once)."""
    if inputs.shape[0] is None:
        inputs = tf.ensure_shape(inputs, (batch,) + tuple(inputs.shape[1:]))
    if check_finite:
        inputs = tf.debugging.assert_all_finite(inputs, NON_FINITE)
    return inputs


def guard(value: Any, ok: Callable[[], Any], message: str, concrete: bool) -> Any:
    """``value`` after ``ok()`` holds: ``ValueError`` in an eager call, an assertion ``value`` depends on in a graph."""
    if concrete:
        if not bool(ok()):
            raise ValueError(message)
        return value
    if not tf.executing_eagerly():
        with tf.control_dependencies([tf.debugging.Assert(ok(), [message])]):
            return tf.identity(value)
    return value


def scan(step: Callable, carry: list, xs: tuple, out_zeros: Any) -> tuple[list, Any]:
    """``tf.scan`` (Keras's TensorFlow ``scan`` needs outputs shaped like the carry): the carry is stacked
    over time along with the output, its last step kept."""

    def accumulate(acc: tuple, inputs: tuple) -> tuple:
        return tuple(step(acc[0], inputs))

    carries, outs = tf.scan(accumulate, xs, initializer=(carry, out_zeros))
    return [[s[-1] for s in layer] for layer in carries], outs


def strategy_replicas() -> int:
    """Replicas of the ``tf.distribute`` strategy whose scope is active (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def in_replica() -> bool:
    """True inside one replica of a multi-replica ``tf.distribute`` step (where a call sees only its rows)."""
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1


@functools.cache
def on_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def in_graph() -> bool:
    return not tf.executing_eagerly()


def xla(fn: Callable) -> Callable:
    """``fn`` compiled with XLA by TensorFlow (Keras does so only on a GPU by default)."""
    return tf.function(fn, jit_compile=True)


def step_function(layer: Any, checked: Callable[[Any], Any], compiled: bool) -> Callable[[Any], Any]:
    """The layer's ``call`` in one ``tf.function`` (``compiled`` changes nothing: it is compiled anyway)."""
    run = tf.function(layer.call)

    def step(x: Any) -> Any:
        return run(checked(x))

    return step
