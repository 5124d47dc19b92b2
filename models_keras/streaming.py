"""A streaming step for the Keras multi-state layers: one chunk on the carried state, without Keras's per-call cost.

An eager ``layer(x)`` spends 0.2-1.5 ms in Keras's own dispatch (input conversion, scopes,
``keras.ops`` tree handling), 20-60x a one-frame step of a band-split model. For
frame-by-frame inference loops, ``layer.streaming_step()`` returns ``step(x) -> y``: the same
numbers and the same carried state as ``layer(x)``, on each backend its cheapest route:

- JAX: the layer's own ``call``, compiled once by ``jax.jit`` through ``layer.stateless_call`` on
  the variables' stored arrays; the new states are assigned back to the layer's variables.
- torch: the stack straight through torch's ops, planned once per input shape on the floor that
  ``models_torch.streaming`` uses (``models_torch.ops.step_runs``: the cell op for a small frame), its
  weights converted once, and again only after a variable changed; ``compiled=True``: the step
  compiled ahead of time by AOTInductor (CPU). Where the layer has no torch fast path
  (``fast_paths.path_name``), ``layer(x)``.
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

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from models_keras import fast_paths


def step_function(layer: Any, compiled: bool = False) -> Callable[[Any], Any]:
    """``step(x) -> y`` for ``layer`` on the active backend (see the module docstring)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_step(layer)
    if backend == "torch" and fast_paths.path_name(layer) == "torch-fused" and not _mixed(layer):
        return _TorchStep(layer, compiled)
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
        key = (tuple(x.shape), x.dtype)
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
    held: list = []  # the layer's variables, listed once it is built (Keras walks its tree on each listing)

    def step(x: Any) -> Any:
        x = checked(x)
        if not held:
            states = {id(v) for v in layer.state_variables}
            others = layer.non_trainable_variables
            held[:] = [layer.trainable_variables, others, [(k, v) for k, v in enumerate(others) if id(v) in states]]
        trainable, others, states = held
        # The stored arrays, as stateless_call takes them (``.value`` would also autocast, at ~4 µs each).
        y, new = run([v._value for v in trainable], [v._value for v in others], x)
        for k, variable in states:  # inference moves nothing else
            variable.assign(new[k])
        return y

    return step


class _TorchStep:
    """The torch backend's step: the layer's stack in torch's layout through ``models_torch.ops.step_runs`` (as
    ``models_torch.streaming``), planned once per input shape and again only after a weight or a state
    variable changed (``_stamps``: Keras assigns a torch variable in place, ``param.data = ...`` and
    ``vector_to_parameters`` swap its storage); the new states are copied into the state variables' own
    tensors."""

    def __init__(self, layer: Any, compiled: bool) -> None:
        self.layer, self.checked = layer, _Checked(layer)
        self.programs: dict | None = {} if compiled else None  # the compiled programs, by shape
        self.plan: dict[str, Any] = {}

    def __call__(self, x: Any) -> Any:
        import torch

        x, plan = self.checked(x), self.plan
        if not plan or x.shape != plan["shape"] or _stamps(plan["tensors"]) != plan["stamps"]:
            plan = self._prepare(x)
        on_cpu = isinstance(x, np.ndarray) and plan["device"].type == "cpu"
        y, new = plan["run"](
            torch.from_numpy(x) if on_cpu else torch.as_tensor(x, device=plan["device"]), plan["folded"]
        )
        for held, value in zip(plan["folded"], new):  # no graph: state variables are not trainable
            held.copy_(value)
        plan["stamps"] = _stamps(plan["tensors"])
        return y if self.layer.return_sequences else y[:, :, -1]

    def _prepare(self, x: Any) -> dict[str, Any]:
        import torch

        from models_torch.ops.step_runs import plan_run

        layer = self.layer
        states = [v.value for v in layer.state_variables]
        weights = [w.value for rnn in layer.rnn_layers for w in rnn.cell.weights]
        with torch.no_grad():  # torch-layout copies of the weights: the plan is rebuilt when a variable moves
            stack = fast_paths.torch_stack(layer, fast_paths.parameters(layer), False)
        device = states[0].device
        run, fold = plan_run(stack, tuple(x.shape), tuple(states[0].shape), device.type, self.programs)
        self.plan = {
            "shape": x.shape,
            "tensors": weights + states,
            "stamps": _stamps(weights + states),
            "run": run,
            "folded": [s.view(fold) for s in states],  # views into the state variables
            "device": device,
        }
        return self.plan


def _stamps(tensors: list) -> list[tuple[int, int]]:
    """What changes when a torch tensor is written in place (its version) or given new storage (its address)."""
    return [(t._version, t.data_ptr()) for t in tensors]


def _tf_step(layer: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    run = tf.function(layer.call)
    checked = _Checked(layer)

    def step(x: Any) -> Any:
        return run(checked(x))

    return step
