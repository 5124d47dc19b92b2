"""A streaming step for the Keras multi-state layers: one chunk on the carried state, without Keras's per-call cost.

An eager ``layer(x)`` spends most of a one-frame step in Keras's own dispatch (input conversion,
scopes, ``keras.ops`` tree handling; README, "Measured here"). For frame-by-frame inference loops,
``layer.streaming_step()`` returns ``step(x) -> y``: the same numbers and the same carried state as
``layer(x)``, on each backend its cheapest route (``step_function`` of ``models_keras.backends``):

- JAX: the layer's own ``call``, compiled once by ``jax.jit`` through ``layer.stateless_call`` on
  the variables' stored arrays; the new states are assigned back to the layer's variables.
- torch: the stack straight through torch's ops, planned once per input shape on the floor that
  ``models_torch.streaming`` uses (``models_torch.ops.step_runs``: the cell op for a small frame), its
  weights converted once, and again only after a variable changed; ``compiled=True``: the step
  compiled ahead of time by AOTInductor (CPU). Where the layer has no torch fast path
  (``fast_paths.path_for``: ``LAYER_CALL``), ``layer(x)``; ``compiled=True`` then warns.
- TensorFlow: the layer's ``call`` in one ``tf.function`` (``compiled`` changes nothing there, nor on JAX).

Inference only: no ``training``, ``stream``, ``resets``, ``lengths`` or ``mask``. ``x`` is
checked as ``layer(x)`` checks it, before any state moves; floating inputs are cast to the
layer's compute dtype, as ``layer(x)`` does.

Example:
    >>> layer = MultiStateGRU(16, num_streams=33, batch_size=1)          # doctest: +SKIP
    >>> step = layer.streaming_step()                                     # doctest: +SKIP
    >>> for frame in frames:                                              # doctest: +SKIP
    ...     y = step(frame)                   # (1, 33, 1, 16), state carried as by layer(frame)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from models_keras import backends
from models_keras.fast_paths import Path, facts_for, path_for


def _layer_call(layer: Any, checked: Callable[[Any], Any], compiled: bool) -> Callable[[Any], Any]:
    if compiled:
        warnings.warn(
            f"{layer.name}: streaming_step(compiled=True) has no compiled step for this layer on the "
            f"{backends.NAME} backend (no fused kernel for its configuration): the step is layer(x)",
            stacklevel=3,
        )
    return layer


# The runners of the streaming paths: run(layer, checked, compiled) -> step.
STEPS: dict[Path, Callable[[Any, Callable[[Any], Any], bool], Callable[[Any], Any]]] = {
    Path.BACKEND_STEP: backends.active.step_function,
    Path.LAYER_CALL: _layer_call,
}


def step_function(layer: Any, compiled: bool = False) -> Callable[[Any], Any]:
    """``step(x) -> y`` for ``layer`` on the active backend (see the module docstring)."""
    return STEPS[path_for(facts_for(layer, streaming=True))](layer, _Checked(layer), compiled)


class _Checked:
    """``x`` as the layer takes it: a tensor of its compute dtype, checked as ``layer(x)`` checks it (the
    layer built first). A shape and dtype that passed once pass again without the checks' cost."""

    passed: set[tuple[tuple[int | None, ...], Any]]

    def __init__(self, layer: Any) -> None:
        self.layer, self.passed = layer, set()

    def __call__(self, x: Any) -> Any:
        layer = self.layer
        if isinstance(x, np.ndarray):  # numpy's own cast: no framework dispatch
            x = x.astype(layer.compute_dtype, copy=False) if x.dtype.kind == "f" else x
        else:
            x = ops.convert_to_tensor(x)
            dtype = keras.backend.standardize_dtype(x.dtype)
            if keras.backend.is_float_dtype(dtype) and dtype != layer.compute_dtype:
                x = ops.cast(x, layer.compute_dtype)
        key = (tuple(x.shape), x.dtype)
        if key not in self.passed:
            if not layer.built:
                layer.build(key[0])
            layer._check(key[0], x.dtype, None)
            self.passed.add(key)
        if layer.check_finite and not bool(np.isfinite(ops.convert_to_numpy(x)).all()):
            raise ValueError(f"{layer.name}: input holds NaN or Inf; state left as it was")
        return x
