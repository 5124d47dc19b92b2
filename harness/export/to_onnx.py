"""The ONNX format: one streaming chunk of a multi-state model as an ONNX graph (``export(model, "m.onnx")``).

The exported graph is one call of the model on a chunk, with the carried states made explicit:

=========  =====================  ==================================================
name       shape                  meaning
=========  =====================  ==================================================
``x``      ``(B, S, t, F)``       the chunk (input)
``h``      ``(L, B, S, H)``       carried hidden state (input)
``c``      ``(L, B, S, H)``       carried cell state (input; LSTM only)
``y``      ``(B, S, t, H)``       the chunk's output
``h_out``  ``(L, B, S, H)``       hidden state after the chunk
``c_out``  ``(L, B, S, H)``       cell state after the chunk (LSTM only)
=========  =====================  ==================================================

``B`` (batch) and ``t`` (time) are dynamic (``t`` fixed with ``frames=``, for a leaner graph);
``S``, ``F``, ``L`` and ``H`` are fixed. Feed
``h_out``/``c_out`` back as ``h``/``c`` on the next chunk (zeros to start);
``harness.export.runners.OnnxRunner`` does exactly that.

Inside, streams are folded into the batch (row ``b*S + s``) and run through the one
fused ``nn.LSTM``/``nn.GRU``/``nn.RNN``, which both exporters turn into ONNX
``LSTM``/``GRU``/``RNN`` nodes (except the dynamo exporter on ``nn.RNN``: see below).

Sources: a ``models_torch`` module, a raw ``nn.LSTM``/``nn.GRU``/``nn.RNN``, a ``models_keras``
layer or a Keras model holding only one, or a weight file that ``python -m harness port``
reads. Keras sources are exported through their torch twin (``harness.porting.layers.torch_twin``);
the exported file is then checked against the Keras model itself.

Every export is verified before it appears under its name: the written graph runs in
onnxruntime, chunk by chunk on a random input, against the source model (outputs and every
state tensor at every chunk boundary, ``harness.parity.engine.check_parity``); on any disagreement
the file is discarded and ``ExportError`` raised. Refused outright: float64 models
(onnxruntime's LSTM/GRU/RNN kernels take float32 only), ``proj_size``, ``bidirectional``,
dropout in training mode, and the dynamo exporter where it fixes the time axis (``nn.RNN``,
which it unrolls step by step).

Example:
    >>> from harness.export import export
    >>> from models_torch import MultiStateGRU
    >>> result = export(MultiStateGRU(16, 16, num_streams=33), "gru.onnx")   # doctest: +SKIP
    >>> result.report.max_abs_error < 1e-5                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.export.job import ExportError, Job, Options
from harness.export.sources import check_streams, file_kind

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 17


# ---- the exported graph -------------------------------------------------------------------------


def _fold_run(module: Any, x: Any, states: tuple[Any, ...], frames: int | None) -> tuple[Any, ...]:
    """``module``'s chunk as a pure function: fold streams into the batch, run the fused RNN, unfold."""
    streams, hidden, layers = module.num_streams, module.hidden_size, module.num_layers
    # Fixed sizes as Python ints and one -1: each reshape of a state exports as ONE constant Reshape,
    # which keeps the exported graph within a few nodes of the bare RNN's (one-frame calls pay per node).
    folded = tuple(s.reshape(layers, -1, hidden) for s in states)
    # With ``frames`` fixed, batch is the only unknown size: every reshape is constant, no shape arithmetic.
    # Otherwise time is read off x (it stays symbolic in both exporters), and so is batch: a -1 there
    # turns into 0 for a batch of 1 in the dynamo exporter.
    steps = x.shape[2] if frames is None else frames
    batch = x.shape[0] if frames is None else -1
    out, new = module.rnn(x.reshape(-1, steps, module.input_size), folded if len(folded) > 1 else folded[0])
    new = new if isinstance(new, tuple) else (new,)
    y = out.reshape(batch, streams, steps, hidden)
    return (y, *(s.reshape(layers, batch, streams, hidden) for s in new))


def _chunk_module(module: Any, frames: int | None = None) -> Any:
    """An ``nn.Module`` whose ``forward(x, h[, c])`` returns ``(y, h_out[, c_out])`` (explicit arguments:
    the dynamo exporter maps dynamic shapes onto named arguments); ``frames``: a fixed time axis."""
    from torch import nn

    class ChunkH(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: Any, h: Any) -> tuple[Any, ...]:
            return _fold_run(self.module, x, (h,), frames)

    class ChunkHC(ChunkH):
        def forward(self, x: Any, h: Any, c: Any) -> tuple[Any, ...]:  # type: ignore[override]
            return _fold_run(self.module, x, (h, c), frames)

    return (ChunkHC if len(module.state_names) == 2 else ChunkH)().eval()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation, tracer and registration chatter."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")) as devnull:
            warnings.simplefilter("ignore")
            try:
                yield
            finally:
                devnull.close()
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_onnx(module: Any, path: str, exporter: str, frames: int | None) -> None:
    import torch

    names = module.state_names
    inputs = ["x", *names]
    outputs = ["y", *(f"{n}_out" for n in names)]
    # Example sizes above 1: torch.export specializes dimensions of size 0 or 1 (batch 1 fixes the time axis too).
    batch, steps = 2, frames or 3
    x = torch.zeros(batch, module.num_streams, steps, module.input_size)
    states = tuple(torch.zeros(module.num_layers, batch, module.num_streams, module.hidden_size) for _ in names)
    chunk = _chunk_module(module, frames)
    time_axis = {} if frames else {2: "time"}
    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            axes = {"x": {0: "batch", **time_axis}, "y": {0: "batch", **time_axis}}
            axes.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
            torch.onnx.export(
                chunk,
                (x, *states),
                path,
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=LEGACY_OPSET,
            )
        else:
            batch_dim = torch.export.Dim("batch")
            x_axes = {0: batch_dim} if frames else {0: batch_dim, 2: torch.export.Dim("time")}
            shapes = (x_axes, *({1: batch_dim} for _ in names))
            program = torch.onnx.export(
                chunk, (x, *states), dynamo=True, input_names=inputs, output_names=outputs, dynamic_shapes=shapes
            )
            assert program is not None  # dynamo=True returns the program
            program.save(path)


def _stamp(path: str, module: Any, exporter: str, frames: int | None) -> None:
    """Check the file with ``onnx.checker`` and record what it holds in its metadata."""
    import onnx

    model = onnx.load(path)
    onnx.checker.check_model(model)
    meta = {
        "multistate_rnn.cell": module.cell,
        "multistate_rnn.nonlinearity": getattr(module.rnn, "nonlinearity", "tanh"),
        "multistate_rnn.num_streams": str(module.num_streams),
        "multistate_rnn.num_layers": str(module.num_layers),
        "multistate_rnn.hidden_size": str(module.hidden_size),
        "multistate_rnn.input_size": str(module.input_size),
        "multistate_rnn.state_names": ",".join(module.state_names),
        "multistate_rnn.exporter": exporter,
        "multistate_rnn.frames": str(frames or "dynamic"),
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


# ---- sources ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Source:
    module: Any  # the models_torch module that is exported
    reference: Any  # what the file is verified against (the module, or the Keras model it came from)
    batch_size: int


def _from_torch(model: Any, num_streams: int | None, batch_size: int | None) -> _Source:
    import torch

    from harness.porting import files
    from harness.porting.layers import activation_is_chosen, describe, torch_class, torch_rnn
    from models_torch import MultiStateBase

    rnn = torch_rnn(model)
    if rnn.bidirectional:
        raise ExportError("cannot export a bidirectional RNN as a streaming chunk: it needs the future of the stream")
    if rnn.training and rnn.dropout > 0:
        raise ExportError(
            f"the model is in training mode with dropout={rnn.dropout}: the export runs it in eval mode, which "
            "differs; call model.eval() first"
        )
    if isinstance(model, MultiStateBase):
        streams = check_streams(num_streams, model.num_streams, "the model")
        fixed = model.fixed_batch_size
    else:
        streams, fixed = num_streams or 1, None
    # A fresh module with a bit-exact copy of the weights: verification resets carried states, and the
    # caller's (possibly mid-stream, possibly attached to a graph) states are left alone.
    spec = describe(rnn)
    module = torch_class(spec.cell)(
        spec.input_size,
        spec.hidden_size,
        streams,
        num_layers=spec.num_layers,
        bias=spec.bias,
        dtype=rnn.weight_ih_l0.dtype,
        **({"nonlinearity": spec.activation} if activation_is_chosen(spec.cell) else {}),
    )
    plain = files.without_weight_norm({k: v.detach().cpu().numpy() for k, v in rnn.state_dict().items()})
    module.rnn.load_state_dict({k: torch.from_numpy(v) for k, v in plain.items()})
    module.eval()
    return _Source(module, module, fixed or batch_size or 1)


def _from_keras(model: Any, num_streams: int | None, batch_size: int | None) -> _Source:
    from harness.porting.layers import only_multistate_layer, torch_twin

    layer = only_multistate_layer(model)
    check_streams(num_streams, layer.num_streams, "the Keras layer")
    module = torch_twin(layer).eval()
    module.reset_states()
    return _Source(module, model, layer.batch_size or batch_size or 1)


def _from_file(path: str | os.PathLike, options: Options) -> _Source:
    """The source of a weight file (a Keras file is verified against the Keras model read from it)."""
    from harness.porting import files

    if file_kind(path) == "torch":
        state = files.read_torch_file(path)
        module = files.torch_module_from_state(state, options.num_streams or 1, nonlinearity=options.nonlinearity)
        return _from_torch(module, None, options.batch_size)
    return _from_keras(files.read_keras_model(path, options.nonlinearity), options.num_streams, options.batch_size)


def resolve_source(model_or_path: Any, options: Options) -> _Source:
    """The torch module ``model_or_path`` is exported as (a Keras source: its torch twin), what it is verified
    against, and the verification batch."""
    import torch

    from harness.porting.layers import is_keras

    if isinstance(model_or_path, (str, os.PathLike)):
        return _from_file(model_or_path, options)
    if is_keras(model_or_path):
        return _from_keras(model_or_path, options.num_streams, options.batch_size)
    if isinstance(model_or_path, torch.nn.Module):
        return _from_torch(model_or_path, options.num_streams, options.batch_size)
    raise TypeError(f"expected a torch or Keras model, or a path; got {type(model_or_path).__name__}")


# ---- the job ------------------------------------------------------------------------------------


def prepare(model_or_path: Any, dst: str | os.PathLike, options: Options) -> Job:
    """The ONNX job for ``model_or_path``: its torch module (a Keras source through its torch twin), refused
    (``ExportError``) if the file could not hold it, and the random input, in chunks, that proves the file."""
    import torch

    try:
        source = resolve_source(model_or_path, options)
    except (ValueError, TypeError) as e:
        raise e if isinstance(e, ExportError) else ExportError(f"cannot export {model_or_path}: {e}") from e
    module, exporter, frames = source.module, options.exporter, options.frames
    dtype = module.rnn.weight_ih_l0.dtype
    if dtype != torch.float32:
        raise ExportError(
            f"cannot export a {str(dtype).removeprefix('torch.')} model: onnxruntime's LSTM/GRU/RNN kernels take "
            "float32 only; convert the model with .float() first"
        )
    if frames is not None and frames < 1:
        raise ExportError(f"frames must be a positive number of steps per call, got {frames}")
    plan: Any = "random" if frames is None else [frames] * -(-options.verify_steps // frames)
    steps = options.verify_steps if frames is None else sum(plan)
    rng = np.random.default_rng(options.seed)
    x = rng.standard_normal((source.batch_size, module.num_streams, steps, module.input_size)).astype("float32")

    def write(path: str) -> None:
        try:
            _write_onnx(module, path, exporter, frames)
            _stamp(path, module, exporter, frames)
        except Exception as e:
            raise ExportError(f"the {exporter} exporter failed on {module.cell}: {type(e).__name__}: {e}") from e

    def check(runner: Any) -> None:
        time_axis = runner.session.get_inputs()[0].shape[2]
        if frames is None and isinstance(time_axis, int):
            raise ExportError(
                f"the {exporter} exporter fixed the time axis of {module.cell} at {time_axis} steps "
                "(it unrolls the loop); use exporter='legacy'"
            )

    names = tuple(module.state_names)
    return Job(write, source.reference, x, plan, exporter, module.cell, names, module.num_streams, check)
