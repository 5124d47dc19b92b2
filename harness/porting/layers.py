"""Copy recurrent weights between torch and Keras objects, either direction.

Supported objects: torch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (``bidirectional`` too)
and ``models_torch`` multi-state modules; Keras ``LSTM``/``GRU``/``SimpleRNN``,
``Bidirectional`` around one of them, and ``models_keras`` multi-state layers.
Everything is read into one neutral form (torch's layout, see ``multistate_core.cells``),
checked against the destination in full, and only then written.

Example:
    >>> import torch, keras
    >>> src = torch.nn.LSTM(4, 8, batch_first=True)
    >>> dst = write_weights(read_weights(src), keras.layers.LSTM(8))     # builds dst if needed
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from multistate_core.cells import CELLS, cell_of_torch, to_keras, to_torch


@dataclasses.dataclass(frozen=True)
class Spec:
    """What must agree between source and destination. ``input_size`` None: not built yet, any size fits."""

    cell: str
    input_size: int | None
    hidden_size: int
    num_layers: int
    bidirectional: bool
    bias: bool
    activation: str


@dataclasses.dataclass
class Weights:
    """Weights in torch's layout; ``layers[i]`` is layer ``i // dirs``, direction ``i % dirs``."""

    spec: Spec
    layers: list[dict[str, np.ndarray]]


# ---- torch side -------------------------------------------------------------------------------


def _is_torch(obj: Any) -> bool:
    return "torch" in sys.modules and isinstance(obj, sys.modules["torch"].nn.Module)


def torch_rnn(obj: Any) -> Any:
    """The ``nn.LSTM``/``GRU``/``RNN`` of ``obj`` (itself, or a multi-state module's ``.rnn``); the one place that
    refuses what neither porting nor export can take: ``TypeError`` for another module, ``ValueError`` for
    ``proj_size`` (Keras's LSTM and the carried state layout have no projection)."""
    import torch

    rnn = obj if isinstance(obj, torch.nn.RNNBase) else getattr(obj, "rnn", None)
    if not isinstance(rnn, torch.nn.RNNBase):
        raise TypeError(
            f"torch {type(obj).__name__} is not recurrent: expected nn.LSTM/GRU/RNN or a multi-state module"
        )
    if getattr(rnn, "proj_size", 0):
        raise ValueError(
            f"torch LSTM with proj_size={rnn.proj_size} is not supported: Keras's LSTM and the carried state have no "
            "projection"
        )
    return rnn


def activation_is_chosen(cell: str) -> bool:
    """Whether ``cell``'s activation is the user's choice (a simple RNN's tanh or relu) rather than fixed by the cell:
    then torch takes it as ``nonlinearity=`` and Keras as ``activation=``, and weight files do not record it."""
    return len(CELLS[cell].activations["activation"]) > 1


def _torch_spec(rnn: Any) -> Spec:
    cell = cell_of_torch(type(rnn).__name__)
    activation = rnn.nonlinearity if activation_is_chosen(cell) else CELLS[cell].activations["activation"][0]
    return Spec(cell, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bidirectional, rnn.bias, activation)


def _torch_suffixes(spec: Spec) -> list[str]:
    dirs = ("", "_reverse") if spec.bidirectional else ("",)
    return [f"_l{layer}{d}" for layer in range(spec.num_layers) for d in dirs]


def _read_torch(obj: Any) -> Weights:
    rnn = torch_rnn(obj)
    spec = _torch_spec(rnn)
    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if spec.bias else ())
    layers = [{n: getattr(rnn, n + s).detach().cpu().numpy() for n in names} for s in _torch_suffixes(spec)]
    return Weights(spec, layers)


def _write_torch(weights: Weights, obj: Any) -> None:
    import torch

    rnn = torch_rnn(obj)
    with torch.no_grad():
        for suffix, layer in zip(_torch_suffixes(weights.spec), weights.layers):
            for name, value in layer.items():
                param = getattr(rnn, name + suffix)
                param.copy_(torch.as_tensor(value, dtype=param.dtype))


# ---- Keras side -------------------------------------------------------------------------------


def is_keras(obj: Any) -> bool:
    """Whether ``obj`` is a Keras layer or model (Keras already imported; on its torch backend also a module)."""
    return "keras" in sys.modules and isinstance(obj, sys.modules["keras"].layers.Layer)


def _keras_cell_kind(layer: Any) -> str | None:
    """The cell (a key of ``CELLS``) of a Keras recurrent layer by its cell's class (subclasses too), else None."""
    import keras

    cell = getattr(layer, "cell", None)
    return next((k for k, c in CELLS.items() if isinstance(cell, getattr(keras.layers, c.keras_class + "Cell"))), None)


def _keras_parts(obj: Any) -> tuple[list[Any], bool]:
    """The raw Keras recurrent layers of ``obj`` in neutral order, and whether it is bidirectional."""
    import keras

    from models_keras import MultiStateBase

    if isinstance(obj, MultiStateBase):
        return list(obj.rnn_layers), False
    if isinstance(obj, keras.layers.Bidirectional) and _keras_cell_kind(obj.forward_layer):
        return [obj.forward_layer, obj.backward_layer], True
    if isinstance(obj, keras.layers.RNN) and _keras_cell_kind(obj):
        return [obj], False
    raise TypeError(
        f"cannot port weights of Keras {type(obj).__name__}: expected LSTM/GRU/SimpleRNN, Bidirectional "
        "or a multi-state layer"
    )


def only_multistate_layer(model: Any) -> Any:
    """The one ``models_keras`` multi-state layer of ``model`` (a layer, or a Keras model that is just that layer);
    ``ValueError`` naming what else it holds."""
    import keras

    from models_keras import multistate_layers

    layers = multistate_layers(model)
    if len(layers) != 1:
        raise ValueError(f"expected one multi-state layer, found {len(layers)}")
    if isinstance(model, keras.Model):
        others = [lyr for lyr in model.layers if lyr is not layers[0] and not isinstance(lyr, keras.layers.InputLayer)]
        if others:
            raise ValueError(
                f"the Keras model holds layers besides the multi-state one ({[lyr.name for lyr in others]}): "
                "only a model that is just the multi-state layer can be ported or exported as a file"
            )
    return layers[0]


def _keras_spec(obj: Any) -> Spec:
    import keras

    parts, bidirectional = _keras_parts(obj)
    cell = _keras_cell_kind(parts[0])
    assert cell is not None  # _keras_parts returns only layers of a cell in CELLS
    first = parts[0].cell
    activation = first.activation.__name__
    for part in parts:
        for attr, allowed in CELLS[cell].activations.items():
            got = getattr(part.cell, attr).__name__
            if got not in allowed:
                raise ValueError(
                    f"Keras {type(part).__name__} {attr}={got!r} has no torch equivalent: torch's cell uses "
                    f"{' or '.join(map(repr, allowed))}"
                )
        if CELLS[cell].split_bias and not part.cell.reset_after:
            raise ValueError(
                f"Keras {CELLS[cell].keras_class} with reset_after=False is not portable: torch's "
                f"{CELLS[cell].torch_class} computes reset_after=True"
            )
    if isinstance(obj, keras.layers.Bidirectional) or not hasattr(obj, "rnn_layers"):
        input_size = parts[0].cell.kernel.shape[0] if parts[0].built else None
    else:
        input_size = obj.input_size
    dirs = 2 if bidirectional else 1
    return Spec(cell, input_size, first.units, len(parts) // dirs, bidirectional, first.use_bias, activation)


def _read_keras(obj: Any) -> Weights:
    import keras

    spec = _keras_spec(obj)
    if spec.input_size is None:
        raise ValueError(f"Keras {type(obj).__name__} {obj.name!r} has no weights yet: build it first")
    parts, _ = _keras_parts(obj)
    layers = [to_torch(spec.cell, [keras.ops.convert_to_numpy(w) for w in p.cell.weights]) for p in parts]
    return Weights(spec, layers)


def _write_keras(weights: Weights, obj: Any) -> None:
    spec = weights.spec
    if not obj.built:
        if hasattr(obj, "build_weights"):
            obj.build_weights(spec.input_size)
        else:
            obj.build((None, None, spec.input_size))
    parts, _ = _keras_parts(obj)
    for part, layer in zip(parts, weights.layers):
        for variable, value in zip(part.cell.weights, to_keras(spec.cell, layer)):
            variable.assign(value.astype(variable.dtype))


# ---- public ------------------------------------------------------------------------------------


def _side(obj: Any) -> str:
    if is_keras(obj):  # first: on Keras's torch backend, layers are torch modules too
        return "keras"
    if _is_torch(obj):
        return "torch"
    raise TypeError(f"cannot port weights of {type(obj).__name__}: expected a torch module or a Keras layer")


def read_weights(obj: Any) -> Weights:
    """The weights of a torch or Keras object, in the neutral (torch) layout."""
    return _read_torch(obj) if _side(obj) == "torch" else _read_keras(obj)


def describe(obj: Any) -> Spec:
    """The ``Spec`` of a torch or Keras object (refuses unportable configurations)."""
    return _torch_spec(torch_rnn(obj)) if _side(obj) == "torch" else _keras_spec(obj)


def check_compatible(src: Spec, dst: Spec) -> None:
    """Raise ``ValueError`` naming every field where ``dst`` cannot take ``src``'s weights."""
    problems = [
        f"{field.name}: source has {getattr(src, field.name)!r}, destination expects {getattr(dst, field.name)!r}"
        for field in dataclasses.fields(Spec)
        if getattr(dst, field.name) != getattr(src, field.name)
        and not (field.name == "input_size" and dst.input_size is None)
    ]
    if problems:
        raise ValueError("weights do not fit the destination: " + "; ".join(problems))


def write_weights(weights: Weights, dst: Any) -> Any:
    """Check ``weights`` against ``dst`` in full, then assign them; returns ``dst``."""
    check_compatible(weights.spec, describe(dst))
    (_write_torch if _side(dst) == "torch" else _write_keras)(weights, dst)
    return dst


def torch_class(cell: str) -> type:
    """The ``models_torch`` class of ``cell`` (a key of ``CELLS``)."""
    import models_torch

    return getattr(models_torch, CELLS[cell].torch_multistate)


def keras_class(cell: str) -> type:
    """The ``models_keras`` class of ``cell`` (a key of ``CELLS``)."""
    import models_keras

    return getattr(models_keras, CELLS[cell].keras_multistate)


def keras_twin(model: Any, batch_size: int | None = None, *, step_inputs: bool = False) -> Any:
    """A ``models_keras`` layer configured like the ``models_torch`` ``model``, carrying its weights.

    With ``batch_size``, a ``keras.Model`` around the layer (``Input(batch_shape=(B, S, None, F))``),
    which runs through the compiled ``predict_on_batch`` path; ``step_inputs=True`` gives that model
    two more inputs, ``resets`` ``(B, S, t)`` bools and ``lengths`` ``(B, S)`` int32.
    """
    import keras

    spec = describe(model)
    extra = {"activation": spec.activation} if activation_is_chosen(spec.cell) else {}
    dtype = str(model.rnn.weight_ih_l0.dtype).removeprefix("torch.")
    layer = keras_class(spec.cell)(
        spec.hidden_size,
        model.num_streams,
        num_layers=spec.num_layers,
        use_bias=spec.bias,
        batch_size=batch_size,
        dtype=dtype,
        **extra,
    )
    write_weights(read_weights(model), layer)
    if batch_size is None:
        return layer
    inputs = keras.Input(batch_shape=(batch_size, model.num_streams, None, spec.input_size), dtype=dtype)
    if not step_inputs:
        return keras.Model(inputs, layer(inputs))
    resets = keras.Input(batch_shape=(batch_size, model.num_streams, None), dtype="bool")
    lengths = keras.Input(batch_shape=(batch_size, model.num_streams), dtype="int32")
    return keras.Model([inputs, resets, lengths], layer(inputs, resets=resets, lengths=lengths))


def torch_twin(layer: Any) -> Any:
    """A ``models_torch`` module configured like the ``models_keras`` ``layer``, carrying its weights."""
    import torch

    spec = describe(layer)
    extra = {"nonlinearity": spec.activation} if activation_is_chosen(spec.cell) else {}
    module = torch_class(spec.cell)(
        spec.input_size,
        spec.hidden_size,
        layer.num_streams,
        num_layers=spec.num_layers,
        bias=spec.bias,
        batch_size=layer.batch_size,
        dtype=getattr(torch, layer.variable_dtype),
        **extra,
    )
    return write_weights(read_weights(layer), module)
