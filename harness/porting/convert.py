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
from harness.porting.layers import describe, keras_twin, only_multistate_layer, torch_twin
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
    num_streams: int = 1,
    batch_size: int = 1,
    nonlinearity: str | None = None,
    steps: int = 16,
    seed: int = 0,
) -> ConvertResult:
    """Port ``src`` to ``dst`` (the other framework's format), then check parity of the reloaded result.

    ``num_streams``, ``batch_size`` and ``nonlinearity`` describe the Keras model made
    from a torch file (a state_dict does not hold them); ``nonlinearity`` (``"tanh"`` or ``"relu"``)
    is required for a simple RNN in a torch or ``.weights.h5`` file (``ValueError`` without it), and
    unused otherwise. Raises ``ParityFailed`` (and writes nothing) if the reloaded destination differs
    from the source.
    """
    kinds = files.file_kind(src), files.file_kind(dst)
    if kinds[0] == kinds[1]:
        raise ValueError(f"{src} and {dst} are both {kinds[0]} files: port between torch and Keras")
    for name, value in (("num_streams", num_streams), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_writable(dst)
    with atomic_path(dst) as tmp:
        result = _convert(src, tmp, kinds[0], num_streams, batch_size, nonlinearity, steps, seed)
        if not result.report.ok:
            raise ParityFailed(result, dst)
    return result


def _convert(
    src: str | os.PathLike,
    dst: str,
    kind: str,
    num_streams: int,
    batch_size: int,
    nonlinearity: str | None,
    steps: int,
    seed: int,
) -> ConvertResult:
    """Write ``dst`` from ``src`` (of framework ``kind``), read it back and check it against the source."""
    if kind == "torch":
        module = files.torch_module_from_state(
            files.read_torch_file(src), num_streams, nonlinearity=nonlinearity, batch_size=batch_size
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
    else:
        model = files.read_keras_model(src, nonlinearity)
        layer = only_multistate_layer(model)
        files.write_torch_file(torch_twin(layer).rnn.state_dict(), dst)
        module = files.torch_module_from_state(
            files.read_torch_file(dst),
            layer.num_streams,
            nonlinearity=describe(layer).activation,
            batch_size=layer.batch_size,
        )
    layer = only_multistate_layer(model)
    x = np.random.default_rng(seed).standard_normal((layer.batch_size, layer.num_streams, steps, layer.input_size))
    report = check_parity({"torch": module, "keras": model}, x.astype(layer.variable_dtype), "halves")
    return ConvertResult(module, model, report)
