"""Adapters that give the parity engine one way to drive any model.

A runner is any object with ``reset()``, ``run(x)`` and ``states()``; ``as_runner``
wraps the torch and Keras multi-state models, and anything already implementing
the protocol passes through unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harness.parity import inputs
from harness.parity.inputs import Inputs


@runtime_checkable
class Runner(Protocol):
    """What the parity engine needs from a model.

    ``run`` takes a numpy chunk ``(B, S, t, F)`` (or, where ``check_parity`` was given several inputs, a
    tuple or dict of chunks ``(B, ·, t, ...)``, in the structure given), returns ``(B, S, t, H)`` (or any
    outputs ``(B, S, t, ...)`` or ``(B, t, ...)``, several as a list, tuple or dict) and
    carries state to the next call (runners that support per-step resets and lengths take
    them as keyword arguments ``resets`` ``(B, S, t)`` and ``lengths`` ``(B, S)``); ``states``
    returns each carried state tensor as ``(L, B, S, H)`` by name; ``reset`` zeroes them.
    """

    def reset(self) -> None: ...

    def run(self, x: Any) -> Any: ...

    def states(self) -> dict[str, np.ndarray]: ...


NO_CARRIED_STATE = (
    "holds no multi-state layer, so it carries no state for check_parity to prove; a model that carries state "
    "some other way can be wrapped in a harness.parity.Runner (reset(), run(x), states())"
)


def each_output(out: Any, convert: Callable[[Any], np.ndarray]) -> Any:
    """``out`` (one tensor, or a list/tuple/dict of them, nested) with ``convert`` applied to each tensor."""
    if isinstance(out, Mapping):
        return {key: each_output(value, convert) for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        return [each_output(value, convert) for value in out]
    return convert(out)


def torch_inputs(x: Inputs, dtype: Any, device: Any) -> tuple[tuple, dict]:
    """``x`` as the positional and keyword arguments of a torch ``forward``: one input or a tuple's inputs
    positionally, a dict's by name; tensors on ``device``, floating-point ones in ``dtype``."""
    import torch

    def tensor(a: np.ndarray) -> Any:
        return torch.as_tensor(a, dtype=dtype if np.issubdtype(a.dtype, np.floating) else None, device=device)

    converted = inputs.each(x, tensor)
    if isinstance(x, dict):
        return (), converted
    return (converted if isinstance(x, tuple) else (converted,)), {}


def keras_inputs(x: Inputs) -> Any:
    """``x`` as a Keras model takes it: one array, a list (a tuple's inputs), or a dict by input name."""
    return list(x) if isinstance(x, tuple) else x


def _state_names(layers: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """``{state name: (the layer's own state name, layer)}``: bare names (``h``) for one layer, else ``path.h``."""
    single = len(layers) == 1
    return {
        name if single else f"{path}.{name}": (name, layer)
        for path, layer in layers.items()
        for name in layer.state_names
    }


class TorchRunner:
    """Drives a ``models_torch`` multi-state module, or a user's whole ``nn.Module`` holding them, without
    gradients, on its device.

    The module tree is walked (``named_modules``) for every multi-state module; their states are named by
    path (``encoder.rnn.h``; bare ``h`` where there is one), all are reset together, and the model runs
    through its own ``forward`` (several inputs: ``forward(*x)`` for a tuple, ``forward(**x)`` for a dict),
    which may return one tensor, a tuple or a dict of them. Inputs go to the device of the first multi-state
    module's weights, floating-point ones cast to their dtype. TF32 is switched off by
    ``check_parity`` (``harness.parity.precision.full_precision_matmul``).
    """

    def __init__(self, model: Any) -> None:
        from models_torch import MultiStateBase

        self.model = model
        layers = {path: m for path, m in model.named_modules() if isinstance(m, MultiStateBase)}
        if not layers:
            raise ValueError(f"{type(model).__name__} {NO_CARRIED_STATE}")
        self.layers = list(layers.values())
        self.names = _state_names(layers)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset_states()

    def run(self, x: Inputs, resets: np.ndarray | None = None, lengths: np.ndarray | None = None) -> Any:
        import torch

        weight = self.layers[0].rnn.weight_ih_l0
        args = {k: torch.as_tensor(v) for k, v in (("resets", resets), ("lengths", lengths)) if v is not None}
        positional, named = torch_inputs(x, weight.dtype, weight.device)
        with torch.no_grad():
            out = self.model(*positional, **named, **args)
        return each_output(out, lambda t: t.cpu().numpy())

    def states(self) -> dict[str, np.ndarray]:
        carried = {id(layer): dict(zip(layer.state_names, layer.get_states())) for layer in self.layers}
        return {n: carried[id(layer)][own].detach().cpu().numpy() for n, (own, layer) in self.names.items()}


class KerasRunner:
    """Drives a ``models_keras`` multi-state layer, or a Keras model holding them.

    Models run through ``predict_on_batch`` (the serving path); a bare layer is
    called directly. Several inputs go in as a list (a tuple's) or a dict (by input name).
    States of several multi-state layers are named ``layer.h`` (by layer name).
    With resets/lengths, a model gets them as its 2nd and 3rd inputs (in that order, those
    given), as a functional model built with ``layer(x, resets=..., lengths=...)`` takes them.
    """

    def __init__(self, model: Any) -> None:
        from models_keras import multistate_layers

        self.model = model
        self.layers = multistate_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} {NO_CARRIED_STATE}")
        self.names = _state_names({layer.name: layer for layer in self.layers})

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset_states()

    def run(self, x: Inputs, resets: np.ndarray | None = None, lengths: np.ndarray | None = None) -> Any:
        import keras

        args = {k: v for k, v in (("resets", resets), ("lengths", lengths)) if v is not None}
        if isinstance(self.model, keras.Model):
            feed = [x, *args.values()] if args else keras_inputs(x)
            return each_output(self.model.predict_on_batch(feed), np.asarray)
        return each_output(self.model(keras_inputs(x), **args), keras.ops.convert_to_numpy)

    def states(self) -> dict[str, np.ndarray]:
        carried = {id(layer): dict(zip(layer.state_names, layer.get_states())) for layer in self.layers}
        return {n: carried[id(layer)][own] for n, (own, layer) in self.names.items()}


def as_runner(model: Any) -> Runner:
    """Wrap ``model`` in the runner for its framework (runners pass through; the path of an exported file: its
    format's runner, ``harness.export.formats``)."""
    if isinstance(model, Runner):
        return model
    if isinstance(model, (str, os.PathLike)):
        from harness.export.formats import format_of

        if fmt := format_of(model):
            return fmt.runner(model)
    if "keras" in sys.modules and isinstance(model, sys.modules["keras"].layers.Layer):
        return KerasRunner(model)
    if "torch" in sys.modules and isinstance(model, sys.modules["torch"].nn.Module):
        return TorchRunner(model)
    raise TypeError(f"cannot run {type(model).__name__}: expected a torch or Keras multi-state model, or a Runner")


def model_device(model: Any) -> str | None:
    """Where ``model``'s weights live: a torch device ("cuda:0"), or the Keras backend's name for it; None for a
    model without weights of its own (a user's ``Runner``).

    Example:
        >>> import torch
        >>> model_device(torch.nn.Linear(2, 3)), model_device(object())
        ('cpu', None)
    """
    if isinstance(model, (str, os.PathLike)):
        from harness.export.formats import format_of

        fmt = format_of(model)
        return fmt.device if fmt else None
    if "keras" in sys.modules and isinstance(model, sys.modules["keras"].layers.Layer):
        value = model.weights[0].value
        if hasattr(value, "devices"):  # a JAX array
            return ",".join(str(d) for d in value.devices())
        return str(value.device).rsplit("device:", 1)[-1]  # torch: "cuda:0"; TensorFlow: ".../device:GPU:0"
    parameters = getattr(model, "parameters", None)
    weight = next(iter(parameters()), None) if callable(parameters) else None
    return None if weight is None else str(weight.device)
