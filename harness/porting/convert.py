"""Port a weight file to the other framework and prove the result: ``python -m harness port SRC DST``.

Torch ``.pt``/``.pth``/``.safetensors`` <-> Keras ``.keras``/``.weights.h5``. The
architecture is read off the source (parameter names and shapes); the written
file is read back into a fresh model and held against the source model by the
parity engine on random input. Only a file that passed takes the destination's
name: a refusal or a failed check leaves nothing behind.

Example:
    >>> result = convert_file("lstm.pt", "lstm.keras", num_streams=3)   # doctest: +SKIP
    >>> result.report.max_abs_error                                      # doctest: +SKIP
    1.1920929e-07
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from harness.parity.engine import check_parity
from harness.parity.report import ParityReport
from harness.porting import files
from harness.porting.layers import activation_is_chosen, describe, keras_twin, only_multistate_layer, torch_twin
from multistate_core.atomic import atomic_path, check_writable


@dataclasses.dataclass
class ConvertResult:
    """The two models (source side and reloaded destination) and their parity report."""

    torch_model: Any
    keras_model: Any
    report: ParityReport


class ParityFailed(ValueError):
    """The ported file did not reproduce the source; it was not written. ``result`` holds the report."""

    def __init__(self, result: ConvertResult, dst: str | os.PathLike) -> None:
        super().__init__(f"the ported model differs from the source; {dst} was not written")
        self.result = result


def convert_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    num_streams: int | None = None,
    batch_size: int | None = None,
    nonlinearity: str | None = None,
    layer: str | None = None,
    steps: int = 16,
    seed: int = 0,
) -> ConvertResult:
    """Port ``src`` to ``dst`` (the other framework's format), then check parity of the reloaded result.

    ``num_streams`` and ``batch_size`` describe the Keras model made from a torch file (a state_dict does
    not hold them; default 1 each); a Keras file holds its own, which they must equal if given.
    ``nonlinearity`` (``"tanh"`` or ``"relu"``) is required for a simple RNN in a torch or ``.weights.h5``
    file (``ValueError`` without it), must agree with a ``.keras`` file's, and is refused for an LSTM or GRU.
    ``layer`` picks the recurrent layer at that path of a torch state_dict that holds more (``"enc"``);
    without it such a state_dict, or one with parameters besides its recurrent layer, is refused.
    Every refusal comes before anything is written. Raises ``ParityFailed`` (and writes nothing) if the
    reloaded destination differs from the source.
    """
    kinds = files.file_kind(src), files.file_kind(dst)
    if kinds[0] == kinds[1]:
        raise ValueError(f"{src} and {dst} are both {kinds[0]} files: port between torch and Keras")
    for name, value in (("num_streams", num_streams), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if layer is not None and kinds[0] != "torch":
        raise ValueError(f"layer={layer!r} picks a layer of a torch state_dict; {src} is a Keras file")
    check_writable(dst)
    with atomic_path(dst) as tmp:
        if kinds[0] == "torch":
            result = _from_torch(src, tmp, num_streams or 1, batch_size or 1, nonlinearity, layer, steps, seed)
        else:
            result = _from_keras(src, tmp, num_streams, batch_size, nonlinearity, steps, seed)
        if not result.report.ok:
            raise ParityFailed(result, dst)
    return result


def _from_torch(
    src: str | os.PathLike,
    dst: str,
    num_streams: int,
    batch_size: int,
    nonlinearity: str | None,
    layer: str | None,
    steps: int,
    seed: int,
) -> ConvertResult:
    """Write the Keras file ``dst`` from the torch file ``src``, read it back and check it against the source."""
    state = files.read_torch_file(src)
    module = files.torch_module_from_state(
        state, num_streams, nonlinearity=nonlinearity, batch_size=batch_size, layer=layer
    )
    files.write_keras_file(keras_twin(module, batch_size=batch_size), dst)
    spec = {
        "cell": describe(module).cell,
        "input_size": module.input_size,
        "units": module.hidden_size,
        "num_layers": module.num_layers,
        "batch_size": batch_size,
        "num_streams": num_streams,
        "use_bias": module.rnn.bias,
        "dtype": str(module.rnn.weight_ih_l0.dtype).removeprefix("torch."),
    }
    model = files.read_keras_file(
        dst, like=None if str(dst).endswith(".keras") else files.keras_model_like(spec, describe(module).activation)
    )
    return _checked(module, model, steps, seed)


def _from_keras(
    src: str | os.PathLike,
    dst: str,
    num_streams: int | None,
    batch_size: int | None,
    nonlinearity: str | None,
    steps: int,
    seed: int,
) -> ConvertResult:
    """Write the torch file ``dst`` from the Keras file ``src``, read it back and check it against the source;
    ``num_streams``, ``batch_size`` and ``nonlinearity``, where given, must agree with the file's."""
    model = files.read_keras_model(src, nonlinearity)
    layer = only_multistate_layer(model)
    spec = describe(layer)
    asked = {"num_streams": num_streams, "batch_size": batch_size, "nonlinearity": nonlinearity}
    has = {"num_streams": layer.num_streams, "batch_size": layer.batch_size, "nonlinearity": spec.activation}
    if nonlinearity is not None and not activation_is_chosen(spec.cell):
        raise ValueError(f"nonlinearity={nonlinearity!r} applies to a simple RNN only; {src} holds a {spec.cell} layer")
    if wrong := [
        f"{name}={value!r} but {src} holds {has[name]!r}"
        for name, value in asked.items()
        if value is not None and value != has[name]
    ]:
        raise ValueError("; ".join(wrong) + " (a Keras file records them: leave them out, or give its own)")
    files.write_torch_file(torch_twin(layer).rnn.state_dict(), dst)
    module = files.torch_module_from_state(
        files.read_torch_file(dst),
        layer.num_streams,
        nonlinearity=spec.activation if activation_is_chosen(spec.cell) else None,
        batch_size=layer.batch_size,
    )
    return _checked(module, model, steps, seed)


def _checked(module: Any, model: Any, steps: int, seed: int) -> ConvertResult:
    """The parity of the torch ``module`` and the Keras ``model`` on random input in two halves."""
    layer = only_multistate_layer(model)
    x = np.random.default_rng(seed).standard_normal((layer.batch_size, layer.num_streams, steps, layer.input_size))
    report = check_parity({"torch": module, "keras": model}, x.astype(layer.variable_dtype), "halves")
    return ConvertResult(module, model, report)
