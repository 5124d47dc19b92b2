"""Adapters that give the parity engine one way to drive any model.

A runner is any object with ``reset()``, ``run(x)`` and ``states()``; ``as_runner``
wraps the torch and Keras multi-state models, and anything already implementing
the protocol passes through unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """What the parity engine needs from a model.

    ``run`` takes a numpy chunk ``(B, S, t, F)``, returns ``(B, S, t, H)`` and
    carries state to the next call (runners that support per-step resets and lengths take
    them as keyword arguments ``resets`` ``(B, S, t)`` and ``lengths`` ``(B, S)``); ``states``
    returns each carried state tensor as ``(L, B, S, H)`` by name; ``reset`` zeroes them.
    """

    def reset(self) -> None: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def states(self) -> dict[str, np.ndarray]: ...


class TorchRunner:
    """Drives a ``models_torch`` multi-state module without gradients, on its device.

    TF32 is switched off by ``check_parity`` (``harness.parity.precision.full_precision_matmul``).
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def reset(self) -> None:
        self.model.reset_states()

    def run(self, x: np.ndarray, resets: np.ndarray | None = None, lengths: np.ndarray | None = None) -> np.ndarray:
        import torch

        weight = self.model.rnn.weight_ih_l0
        args = {k: torch.as_tensor(v) for k, v in (("resets", resets), ("lengths", lengths)) if v is not None}
        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=weight.dtype, device=weight.device), **args).cpu().numpy()

    def states(self) -> dict[str, np.ndarray]:
        return {n: s.detach().cpu().numpy() for n, s in zip(self.model.state_names, self.model.get_states())}


class KerasRunner:
    """Drives a ``models_keras`` multi-state layer, or a Keras model holding them.

    Models run through ``predict_on_batch`` (the serving path); a bare layer is
    called directly. States of several multi-state layers are named ``layer.h``.
    With resets/lengths, a model gets them as its 2nd and 3rd inputs (in that order, those
    given), as a functional model built with ``layer(x, resets=..., lengths=...)`` takes them.
    """

    def __init__(self, model: Any) -> None:
        from models_keras import multistate_layers

        self.model = model
        self.layers = multistate_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} holds no multi-state layer")

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset_states()

    def run(self, x: np.ndarray, resets: np.ndarray | None = None, lengths: np.ndarray | None = None) -> np.ndarray:
        import keras

        args = {k: v for k, v in (("resets", resets), ("lengths", lengths)) if v is not None}
        if isinstance(self.model, keras.Model):
            return np.asarray(self.model.predict_on_batch([x, *args.values()] if args else x))
        return keras.ops.convert_to_numpy(self.model(x, **args))

    def states(self) -> dict[str, np.ndarray]:
        single = len(self.layers) == 1
        return {
            name if single else f"{layer.name}.{name}": s
            for layer in self.layers
            for name, s in zip(layer.state_names, layer.get_states())
        }


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
