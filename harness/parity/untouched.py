"""Checks leave the models they are given as they found them: ``left_as_found`` puts everything back.

A parity or training check resets and runs the caller's models (carried states replaced, a batch size
taken from the check's input, weights trained, gradients and train/eval mode changed). ``left_as_found``
records, for each torch module and Keras layer/model, everything a check can change, and restores it
when the block ends, also when it raises:

- torch: every parameter's values, ``requires_grad`` and ``.grad``; every buffer; each submodule's
  train/eval mode; the carried states (and so the batch size) of each multi-state submodule.
- Keras: every variable (weights and carried states), each multi-state layer's batch size, and the
  optimizer's variables where the model has a built optimizer. A layer the check had to build (Keras
  cannot unbuild one) stays built for the check's batch size, with zero states, as a fresh layer starts.

Anything else (a ``Runner``, a file path) is the caller's own object and is left to it.

Example:
    >>> import torch
    >>> from models_torch import MultiStateGRU
    >>> module = MultiStateGRU(3, 4, num_streams=2)
    >>> with left_as_found([module]):
    ...     _ = module(torch.zeros(1, 2, 5, 3))     # the call fixes the carried state at batch 1
    >>> module.batch_size is None                   # as before the block
    True
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _torch_snapshot(module: Any) -> Callable[[], None]:
    """Record ``module``'s parameters, buffers, modes and carried states; return what puts them back."""
    import torch

    from models_torch import MultiStateBase

    params = [(p, p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
              for p in module.parameters()]  # fmt: skip
    buffers = [(b, b.clone()) for b in module.buffers()]
    modes = [(m, m.training) for m in module.modules()]
    carried = [(m, m.__dict__["_carried"]) for m in module.modules() if isinstance(m, MultiStateBase)]

    def restore() -> None:
        with torch.no_grad():
            for p, value, requires_grad, grad in params:
                if not torch.equal(p, value):
                    p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = grad
            for b, value in buffers:
                if not torch.equal(b, value):
                    b.copy_(value)
        for m, training in modes:
            m.training = training
        for m, states in carried:  # the caller's own state tensors (graph included), not copies
            m.__dict__["_carried"] = states

    return restore


def _keras_snapshot(model: Any) -> Callable[[], None]:
    """Record ``model``'s variables (and its optimizer's) and multi-state batch sizes; return what puts them back."""
    import keras

    from models_keras import multistate_layers

    optimizer = getattr(model, "optimizer", None)
    variables = list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])
    values = [(v, keras.ops.convert_to_numpy(v.value).copy()) for v in variables]
    sizes = [(layer, layer.batch_size, layer.built) for layer in multistate_layers(model)]

    def restore() -> None:
        for v, value in values:
            if not (keras.ops.convert_to_numpy(v.value) == value).all():
                v.assign(value)
        for layer, size, built in sizes:
            if built:
                layer.batch_size = size
            else:  # Keras cannot unbuild: the layer keeps the check's batch size, its states start from zero
                layer.reset_states()

    return restore


def snapshot(model: Any) -> Callable[[], None] | None:
    """A function that puts ``model`` back as it is now (None for anything but a torch module or Keras layer)."""
    if "keras" in sys.modules and isinstance(model, sys.modules["keras"].layers.Layer):
        return _keras_snapshot(model)  # first: on Keras's torch backend, layers are torch modules too
    if "torch" in sys.modules and isinstance(model, sys.modules["torch"].nn.Module):
        return _torch_snapshot(model)
    return None


@contextlib.contextmanager
def left_as_found(models: Iterable[Any]) -> Iterator[None]:
    """Restore every torch module and Keras layer/model of ``models`` when the block ends (also on error)."""
    restores = [r for r in (snapshot(m) for m in models) if r is not None]
    try:
        yield
    finally:
        for restore in reversed(restores):
            restore()
