"""The backend pieces every Keras backend can run (``keras.ops`` only); the backend modules take what they share.

A function here that only a framework can serve raises ``NotImplementedError``, as Keras's own
``backend.lstm`` does where a backend has no fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

NON_FINITE = "input holds NaN or Inf; state left as it was"


def holds_values(x: Any) -> bool:
    """Whether ``x`` holds values (not a traced placeholder); Keras's symbolic scope is the caller's check."""
    return True


def run_time_checks(inputs: Any, batch: int, check_finite: bool, concrete: bool) -> Any:
    """``inputs``, checked for NaN/Inf if asked, where the values are known (``concrete``).

    The batch size needs no check here: only TensorFlow relaxes it to ``None`` on retracing.
    """
    if check_finite and concrete and not bool(ops.all(ops.isfinite(inputs))):
        raise ValueError(NON_FINITE)
    return inputs


def guard(value: Any, ok: Callable[[], Any], message: str, concrete: bool) -> Any:
    """``value``, after ``ok()`` (a boolean tensor) holds: ``ValueError(message)`` where the values are known.

    A compiled step cannot raise: there nothing is checked (TensorFlow overrides this with an assertion).
    """
    if concrete and not bool(ok()):
        raise ValueError(message)
    return value


def scan(step: Callable, carry: list, xs: tuple, out_zeros: Any) -> tuple[list, Any]:
    """``keras.ops.scan(step, carry, xs)``: the final carry and the outputs stacked over time."""
    return ops.scan(step, carry, xs)


def exact_tanh(x: Any) -> Any:
    """``tanh`` in ``x``'s own dtype."""
    return ops.tanh(x)


def rnn_kwargs(rnn_class: type, use_bias: bool, kwargs: dict, exact_tanh: Callable) -> dict:
    """The inner Keras layers' keyword arguments, adjusted around this backend's float64 bugs (none here)."""
    return kwargs


def check_dtype(dtype: str) -> None:
    """Refuse a variable dtype this backend would silently compute in another one (none here)."""


def strategy_replicas() -> int:
    """Replicas of the active ``tf.distribute`` strategy: 1 off TensorFlow."""
    return 1


def in_replica() -> bool:
    """Inside one replica of a multi-replica ``tf.distribute`` step: never off TensorFlow."""
    return False


def in_graph() -> bool:
    """Whether a TensorFlow graph is being traced: never off TensorFlow."""
    return False


def on_gpu() -> bool:
    """Whether this backend computes on a GPU (none known here)."""
    return False


def xla(fn: Callable) -> Callable:
    """``fn`` compiled with XLA by TensorFlow: TensorFlow only."""
    raise NotImplementedError("XLA compilation of a Keras call is TensorFlow's")


def run_fused(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """The whole stack on ``x`` ``(N, T, F)`` in one framework call: torch and JAX (cuDNN) only."""
    raise NotImplementedError("this backend has no fused recurrent kernel")


def run_fused_stepped(
    layer: Any, x: Any, initial: list, resets: Any, lengths: Any, training: bool | None
) -> tuple[Any, list]:
    """The fused call extended to resets and lengths: torch only."""
    raise NotImplementedError("this backend has no fused recurrent kernel for resets and lengths")


def step_function(layer: Any, checked: Callable[[Any], Any], compiled: bool) -> Callable[[Any], Any]:
    """A streaming step without Keras's per-call cost: ``layer`` itself where the backend has none."""
    return layer
