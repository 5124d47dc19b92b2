"""A streaming step for the Keras multi-state layers: one chunk on the carried state, without Keras's per-call cost.

An eager ``layer(x)`` spends 0.2-1.5 ms in Keras's own dispatch (input conversion, scopes,
``keras.ops`` tree handling), 20-60x a one-frame step of a band-split model. For
frame-by-frame inference loops, ``layer.streaming_step()`` returns ``step(x) -> y``: the same
numbers and the same carried state as ``layer(x)``, on each backend its cheapest route:

- JAX: the layer's own ``call``, compiled once by ``jax.jit`` through ``layer.stateless_call``;
  the new states are assigned back to the layer's variables.
- torch: the stack straight through torch's ops (``harness.spec.kernels.run_plain``: the cell ops
  for a small one-frame chunk), its weights converted once, and again only after a variable
  changed; where the layer has no torch fast path (``fast_paths.path_name``), ``layer(x)``.
- TensorFlow: the layer's ``call`` in one ``tf.function``.

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

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from models_keras import fast_paths


def step_function(layer: Any) -> Callable[[Any], Any]:
    """``step(x) -> y`` for ``layer`` on the active backend (see the module docstring)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_step(layer)
    if backend == "torch" and fast_paths.path_name(layer) == "torch-fused" and not _mixed(layer):
        return _torch_step(layer)
    if backend == "tensorflow":
        return _tf_step(layer)
    return layer


def _mixed(layer: Any) -> bool:
    return layer.compute_dtype != layer.variable_dtype


class _Checked:
    """``x`` as the layer takes it: a tensor of its compute dtype, checked as ``layer(x)`` checks it (the
    layer built first). A shape and dtype that passed once pass again without the checks' cost."""

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
        key = (tuple(x.shape), str(x.dtype))
        if key not in self.passed:
            if not layer.built:
                layer.build(key[0])
            layer._check(key[0], x.dtype, None)
            self.passed.add(key)
        if layer.check_finite and not bool(np.isfinite(ops.convert_to_numpy(x)).all()):
            raise ValueError(f"{layer.name}: input holds NaN or Inf; state left as it was")
        return x


def _jax_step(layer: Any) -> Callable[[Any], Any]:
    import jax

    run = jax.jit(lambda trainable, others, x: layer.stateless_call(trainable, others, x))
    checked = _Checked(layer)

    def step(x: Any) -> Any:
        x = checked(x)
        trainable, others = layer.trainable_variables, layer.non_trainable_variables
        y, new = run([v.value for v in trainable], [v.value for v in others], x)
        states = {id(v) for v in layer.state_variables}  # inference moves nothing else
        for variable, value in zip(others, new):
            if id(variable) in states:
                variable.assign(value)
        return y

    return step


def _torch_step(layer: Any) -> Callable[[Any], Any]:
    import torch

    from harness.spec.kernels import run_plain

    checked = _Checked(layer)
    cache: dict[str, Any] = {}

    def stack() -> Any:
        """The torch stack of the layer's weights, rebuilt only after one of them changed."""
        if "variables" not in cache:  # the layer is built by now
            cache["variables"] = [w for rnn in layer.rnn_layers for w in rnn.cell.weights]
        key = tuple((id(t), t._version) for t in (v.value for v in cache["variables"]))
        if cache.get("key") != key:
            cache["key"], cache["stack"] = key, fast_paths.torch_stack(layer, fast_paths.parameters(layer), False)
        return cache["stack"]

    def step(x: Any) -> Any:
        x = torch.as_tensor(checked(x))
        batch, streams, steps, features = x.shape
        rows, layers, units = batch * streams, layer.num_layers, layer.units
        with torch.no_grad():
            states = tuple(v.value.reshape(layers, rows, units) for v in layer.state_variables)
            out, new = run_plain(stack(), x.reshape(rows, steps, features), states, torch)
            for variable, value in zip(layer.state_variables, new):
                variable.assign(value.reshape(layers, batch, streams, units))
        out = out.reshape(batch, streams, steps, units)
        return out if layer.return_sequences else out[:, :, -1]

    return step


def _tf_step(layer: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    run = tf.function(layer.call)
    checked = _Checked(layer)

    def step(x: Any) -> Any:
        return run(checked(x))

    return step
