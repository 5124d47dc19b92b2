"""Export a multi-state model to ONNX as one streaming chunk, then prove the file: ``python -m harness export``.

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

from harness.parity.report import ParityReport

EXPORTERS = ("legacy", "dynamo")
LEGACY_OPSET = 17


class ExportError(ValueError):
    """The model cannot be exported, or the exported file disagrees with it (nothing was written)."""


@dataclasses.dataclass
class ExportResult:
    """What ``export`` wrote and the parity report that proved it against the source."""

    path: str
    exporter: str
    cell: str
    state_names: tuple[str, ...]
    num_streams: int
    report: ParityReport


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


def _check_streams(asked: int | None, has: int, what: str) -> int:
    if asked is not None and asked != has:
        raise ExportError(f"num_streams={asked} but {what} has {has} streams")
    return has


def _from_torch(model: Any, num_streams: int | None, batch_size: int | None) -> _Source:
    import torch

    from harness.porting import files
    from harness.porting.layers import describe, torch_class
    from models_torch import MultiStateBase

    rnn = model.rnn if isinstance(model, MultiStateBase) else model
    if not isinstance(rnn, torch.nn.RNNBase):
        raise ExportError(
            f"cannot export torch {type(model).__name__}: expected nn.LSTM/GRU/RNN or a multi-state module"
        )
    if getattr(rnn, "proj_size", 0):
        raise ExportError(f"cannot export an LSTM with proj_size={rnn.proj_size}: the carried state layout differs")
    if rnn.bidirectional:
        raise ExportError("cannot export a bidirectional RNN as a streaming chunk: it needs the future of the stream")
    if rnn.training and rnn.dropout > 0:
        raise ExportError(
            f"the model is in training mode with dropout={rnn.dropout}: the export runs it in eval mode, which "
            "differs; call model.eval() first"
        )
    if isinstance(model, MultiStateBase):
        streams = _check_streams(num_streams, model.num_streams, "the model")
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
        **({"nonlinearity": spec.activation} if spec.cell == "rnn" else {}),
    )
    plain = files.without_weight_norm({k: v.detach().cpu().numpy() for k, v in rnn.state_dict().items()})
    module.rnn.load_state_dict({k: torch.from_numpy(v) for k, v in plain.items()})
    module.eval()
    return _Source(module, module, fixed or batch_size or 1)


def _keras_layer_of(model: Any) -> Any:
    import keras

    from models_keras import multistate_layers

    layers = multistate_layers(model)
    if len(layers) != 1:
        raise ExportError(f"expected one multi-state layer, found {len(layers)}")
    if isinstance(model, keras.Model):
        others = [lyr for lyr in model.layers if lyr is not layers[0] and not isinstance(lyr, keras.layers.InputLayer)]
        if others:
            raise ExportError(
                f"the Keras model holds layers besides the multi-state one ({[lyr.name for lyr in others]}): "
                "only a model that is just the multi-state layer can be exported"
            )
    return layers[0]


def _from_keras(model: Any, num_streams: int | None, batch_size: int | None) -> _Source:
    from harness.porting.layers import torch_twin

    layer = _keras_layer_of(model)
    _check_streams(num_streams, layer.num_streams, "the Keras layer")
    module = torch_twin(layer).eval()
    module.reset_states()
    return _Source(module, model, layer.batch_size or batch_size or 1)


def _from_file(
    path: str | os.PathLike, num_streams: int | None, batch_size: int | None, nonlinearity: str | None
) -> _Source:
    """The source of a weight file (a Keras file is verified against the Keras model read from it)."""
    from harness.porting import files

    try:
        kind = files.file_kind(path)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if kind == "torch":
        module = files.torch_module_from_state(files.read_torch_file(path), num_streams or 1, nonlinearity=nonlinearity)
        return _from_torch(module, None, batch_size)
    if str(path).endswith(".keras"):
        model = files.read_keras_file(path)
    else:
        from harness.porting.convert import _keras_like

        model = files.read_keras_file(
            path, like=_keras_like(files.multistate_spec_from_keras_weights(path), nonlinearity)
        )
    return _from_keras(model, num_streams, batch_size)


def _is_keras(obj: Any) -> bool:
    import sys

    return "keras" in sys.modules and isinstance(obj, sys.modules["keras"].layers.Layer)


@contextlib.contextmanager
def _keras_states_kept(model: Any) -> Iterator[None]:
    """Verification resets the Keras layer's carried states; put them back afterwards."""
    from models_keras import multistate_layers

    saved = []
    for layer in multistate_layers(model):
        with contextlib.suppress(Exception):
            saved.append((layer, layer.get_states()))
    try:
        yield
    finally:
        for layer, states in saved:
            layer.set_states(states)


# ---- export -------------------------------------------------------------------------------------


def check_destination(dst: str | os.PathLike) -> None:
    """Refuse (``ExportError``) a destination that cannot be written, before any model is read or exported."""
    from multistate_core.atomic import check_writable

    try:
        check_writable(dst)
    except ValueError as e:
        raise ExportError(str(e)) from None


@contextlib.contextmanager
def landing(dst: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``dst`` that becomes ``dst`` only if the block completes (``atomic_path``);
    a ``ValueError`` or ``OSError`` inside comes out as ``ExportError``."""
    from multistate_core.atomic import atomic_path

    try:
        with atomic_path(dst) as tmp:
            yield tmp
    except ExportError:
        raise
    except (ValueError, OSError) as e:
        raise ExportError(str(e)) from e


def prove(source: Any, name: str, runner: Any, x: np.ndarray, plan: Any, seed: int) -> ParityReport:
    """The written file (``runner``) against its ``source`` at every chunk boundary; ``ExportError`` if they differ."""
    from harness.parity.engine import check_parity

    report = check_parity({"source": source, name: runner}, x, plan, seed=seed)
    if not report.ok:
        raise ExportError(f"the exported file disagrees with the source; nothing written.\n{report.failure_message()}")
    return report


def export(
    model_or_path: Any,
    dst: str | os.PathLike,
    *,
    num_streams: int | None = None,
    batch_size: int | None = None,
    nonlinearity: str | None = None,
    exporter: str = "legacy",
    frames: int | None = None,
    verify_steps: int = 64,
    seed: int = 0,
) -> ExportResult:
    """Export ``model_or_path`` to the ONNX file ``dst`` (one chunk, states explicit), verified before it lands.

    Args:
        model_or_path: a ``models_torch`` module, a raw ``nn.LSTM``/``nn.GRU``/``nn.RNN``, a ``models_keras``
            layer or a Keras model holding only one, or a weight file (``.pt``, ``.pth``, ``.safetensors``,
            ``.keras``, ``.weights.h5``).
        dst: the ``.onnx`` file to write (atomically: it appears complete and verified, or not at all); a
            ``.tflite`` destination goes to ``harness.export.to_tflite.export_tflite`` (Keras sources only).
        num_streams: streams ``S`` of a raw torch RNN or torch weight file (default 1); for a model that
            has its own, it must agree if given.
        batch_size: batch of the verification input (default: the model's fixed batch, else 1); the
            exported batch axis is dynamic either way.
        nonlinearity: ``"tanh"`` or ``"relu"``, a simple RNN's activation, required for one in a torch or
            ``.weights.h5`` file (they do not record it).
        exporter: ``"legacy"`` (TorchScript, ``dynamo=False``) or ``"dynamo"`` (``torch.export`` + onnxscript).
        frames: fix the time axis at this many steps per call (a streaming deployment sends the same
            number every call): the graph then needs no shape arithmetic around the RNN node, and the
            dynamo exporter may unroll a simple RNN. Default: a dynamic time axis.
        verify_steps: time steps of the random verification input, run in random chunks (ones included;
            chunks of ``frames`` steps when it is fixed, rounded up to a whole number of them).
        seed: seed of the verification input and chunk plan.

    Returns:
        An ``ExportResult`` with the parity report of the written file against the source.

    Raises:
        ExportError: unsupported model or destination, or the exported file disagrees with the source.

    Example:
        >>> import torch
        >>> result = export(torch.nn.LSTM(16, 32, num_layers=2), "lstm.onnx", num_streams=31)  # doctest: +SKIP
        >>> result.state_names, result.report.ok                                                   # doctest: +SKIP
        (('h', 'c'), True)
    """
    import torch

    from harness.export.runners import OnnxRunner

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}: expected one of {EXPORTERS}")
    if str(dst).endswith(".tflite"):
        from harness.export.to_tflite import export_tflite

        return export_tflite(
            model_or_path,
            dst,
            num_streams=num_streams,
            batch_size=batch_size,
            nonlinearity=nonlinearity,
            verify_steps=verify_steps,
            seed=seed,
        )
    if not str(dst).endswith(".onnx"):
        raise ExportError(f"cannot write {dst}: the destination must end in .onnx")
    check_destination(dst)
    try:
        if isinstance(model_or_path, (str, os.PathLike)):
            source = _from_file(model_or_path, num_streams, batch_size, nonlinearity)
        elif _is_keras(model_or_path):
            source = _from_keras(model_or_path, num_streams, batch_size)
        elif isinstance(model_or_path, torch.nn.Module):
            source = _from_torch(model_or_path, num_streams, batch_size)
        else:
            raise TypeError(f"expected a torch or Keras model, or a path; got {type(model_or_path).__name__}")
    except (ValueError, TypeError) as e:
        raise e if isinstance(e, ExportError) else ExportError(f"cannot export {model_or_path}: {e}") from e
    module = source.module
    dtype = module.rnn.weight_ih_l0.dtype
    if dtype != torch.float32:
        raise ExportError(
            f"cannot export a {str(dtype).removeprefix('torch.')} model: onnxruntime's LSTM/GRU/RNN kernels take "
            "float32 only; convert the model with .float() first"
        )

    if frames is not None and frames < 1:
        raise ExportError(f"frames must be a positive number of steps per call, got {frames}")
    plan: Any = "random" if frames is None else [frames] * -(-verify_steps // frames)
    steps = verify_steps if frames is None else sum(plan)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((source.batch_size, module.num_streams, steps, module.input_size)).astype("float32")
    keep = _keras_states_kept(source.reference) if _is_keras(source.reference) else contextlib.nullcontext()
    with landing(dst) as tmp:
        try:
            _write_onnx(module, tmp, exporter, frames)
            _stamp(tmp, module, exporter, frames)
        except Exception as e:
            raise ExportError(f"the {exporter} exporter failed on {module.cell}: {type(e).__name__}: {e}") from e
        runner = OnnxRunner(tmp)
        time_axis = runner.session.get_inputs()[0].shape[2]
        if frames is None and isinstance(time_axis, int):
            raise ExportError(
                f"the {exporter} exporter fixed the time axis of {module.cell} at {time_axis} steps "
                "(it unrolls the loop); use exporter='legacy'"
            )
        with keep:
            report = prove(source.reference, "onnx", runner, x, plan, seed)
    return ExportResult(str(dst), exporter, module.cell, tuple(module.state_names), module.num_streams, report)
