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
``reset``  ``(B, S, t)`` bool     per-step resets (input, last; only with ``resets=True``)
=========  =====================  ==================================================

``B`` (batch) and ``t`` (time) are dynamic (``t`` fixed with ``frames=``, for a leaner graph; both
with ``frames=`` and ``batch_size=``: the static form, every shape fixed);
``S``, ``F``, ``L`` and ``H`` are fixed. ``reset[b, s, k]`` zeroes stream ``s``'s states before step
``k`` (a ``Where``: NaN cleared), as the layers' ``resets=`` do: with fixed frames the steps are
unrolled, with a dynamic time axis the one-step graph runs in an ONNX ``Scan``. Feed
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


def _cleared(states: tuple[Any, ...], marked: Any) -> tuple[Any, ...]:
    """``states`` (each ``(L, B, S, H)``) with the streams ``marked`` ``(1, B, S, 1)`` set to zero: a select
    (ONNX ``Where``), not a product, so a NaN or infinite state is cleared too."""
    import torch

    return tuple(torch.where(marked, 0.0, s) for s in states)


def _reset_step(module: Any, x: Any, states: tuple[Any, ...], reset: Any) -> tuple[Any, ...]:
    """One step ``x`` ``(B, S, 1, F)`` from ``states``, the streams marked in ``reset`` ``(B, S, 1)`` from zero
    state."""
    marked = reset.reshape(1, -1, module.num_streams, 1)  # S as a Python int: one constant Reshape
    return _fold_run(module, x, _cleared(states, marked), 1)


def _reset_run(module: Any, x: Any, states: tuple[Any, ...], reset: Any, frames: int) -> tuple[Any, ...]:
    """``frames`` steps with per-step resets ``(B, S, frames)``, one step at a time (``frames`` steps in the graph;
    one frame takes ``x`` and ``reset`` whole, with no slicing)."""
    import torch

    ys = []
    for k in range(frames):
        step = slice(k, k + 1) if frames > 1 else slice(None)
        y, *new = _reset_step(module, x[:, :, step], states, reset[:, :, step])
        ys.append(y)
        states = tuple(new)
    return (ys[0] if frames == 1 else torch.cat(ys, dim=2), *states)


def _chunk_module(module: Any, frames: int | None = None, resets: bool = False) -> Any:
    """An ``nn.Module`` whose ``forward(x, h[, c][, reset])`` returns ``(y, h_out[, c_out])`` (explicit arguments:
    the dynamo exporter maps dynamic shapes onto named arguments); ``frames``: a fixed time axis (needed with
    ``resets``, which run step by step)."""
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

    class ResetH(ChunkH):
        def forward(self, x: Any, h: Any, reset: Any) -> tuple[Any, ...]:  # type: ignore[override]
            assert frames is not None  # resets run step by step: a fixed number of steps
            return _reset_run(self.module, x, (h,), reset, frames)

    class ResetHC(ChunkH):
        def forward(self, x: Any, h: Any, c: Any, reset: Any) -> tuple[Any, ...]:  # type: ignore[override]
            assert frames is not None  # as above
            return _reset_run(self.module, x, (h, c), reset, frames)

    kinds = {(False, 1): ChunkH, (False, 2): ChunkHC, (True, 1): ResetH, (True, 2): ResetHC}
    return kinds[resets, len(module.state_names)]().eval()


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


@dataclasses.dataclass(frozen=True)
class _Form:
    """Which graph is written: ``frames`` steps per call (None: a dynamic time axis), ``batch`` fixed (None:
    dynamic; fixed only with ``frames``: the fully static form), and whether it takes a ``reset`` input."""

    frames: int | None
    batch: int | None
    resets: bool


def _write_onnx(module: Any, path: str, exporter: str, form: _Form) -> None:
    """Write ``form``'s graph of ``module``; a dynamic time axis with resets is the one-step graph run by a Scan."""
    if form.resets and form.frames is None:
        import onnx

        _write_chunk(module, path, exporter, dataclasses.replace(form, frames=1))
        onnx.save(_over_time(onnx.load(path)), path)
    else:
        _write_chunk(module, path, exporter, form)


def _write_chunk(module: Any, path: str, exporter: str, form: _Form) -> None:
    import torch

    names = module.state_names
    inputs = ["x", *names, *(["reset"] if form.resets else [])]
    outputs = ["y", *(f"{n}_out" for n in names)]
    # Example sizes above 1: torch.export specializes dimensions of size 0 or 1 (batch 1 fixes the time axis too).
    batch, steps = form.batch or 2, form.frames or 3
    x = torch.zeros(batch, module.num_streams, steps, module.input_size)
    states = tuple(torch.zeros(module.num_layers, batch, module.num_streams, module.hidden_size) for _ in names)
    reset = (torch.zeros(batch, module.num_streams, steps, dtype=torch.bool),) if form.resets else ()
    chunk = _chunk_module(module, form.frames, form.resets)
    time_axis = {} if form.frames else {2: "time"}
    with _quiet(), torch.no_grad():
        if exporter == "legacy":
            axes = {"x": {0: "batch", **time_axis}, "y": {0: "batch", **time_axis}, "reset": {0: "batch"}}
            axes.update({n: {1: "batch"} for n in inputs[1 : len(names) + 1] + outputs[1:]})
            torch.onnx.export(
                chunk,
                (x, *states, *reset),
                path,
                dynamo=False,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=None if form.batch else {k: v for k, v in axes.items() if k in inputs + outputs},
                opset_version=LEGACY_OPSET,
            )
        else:
            batch_dim = torch.export.Dim("batch")
            x_axes = {0: batch_dim} if form.frames else {0: batch_dim, 2: torch.export.Dim("time")}
            shapes = (x_axes, *({1: batch_dim} for _ in names), *({0: batch_dim} for _ in reset))
            program = torch.onnx.export(
                chunk,
                (x, *states, *reset),
                dynamo=True,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=None if form.batch else shapes,
            )
            assert program is not None  # dynamo=True returns the program
            program.save(path)


def _over_time(step: Any) -> Any:
    """The one-step graph ``step`` (inputs ``x`` ``(B, S, 1, F)``, states, ``reset`` ``(B, S, 1)``) run over a
    dynamic time axis: one ONNX ``Scan`` over axis 2 of ``x`` and ``reset``, the states carried, the steps'
    ``y`` stacked on axis 2. Same names and order as the other forms."""
    import onnx
    from onnx import TensorProto, helper

    graph = step.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ExportError("the one-step graph holds subgraphs of its own: it cannot be wrapped in a Scan over time")
    inputs = {i.name: i for i in graph.input}
    states = [i.name for i in graph.input][1:-1]
    _, streams, _, features = _dims(inputs["x"])
    state_shape = ["batch" if isinstance(d, str) else d for d in _dims(inputs[states[0]])]
    hidden, elem = state_shape[3], inputs["x"].type.tensor_type.elem_type

    def inner(name: str) -> str:  # a subgraph may not reuse a name of the graph around it
        return f"step/{name}" if name else name

    time_axis = helper.make_tensor("time_axis", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Constant", [], [inner("time_axis")], value=time_axis),
        helper.make_node("Unsqueeze", [inner("x_t"), inner("time_axis")], [inner("x")]),
        helper.make_node("Unsqueeze", [inner("reset_t"), inner("time_axis")], [inner("reset")]),
    ]
    for node in graph.node:
        renamed = onnx.NodeProto()
        renamed.CopyFrom(node)
        renamed.input[:] = [inner(n) for n in node.input]
        renamed.output[:] = [inner(n) for n in node.output]
        renamed.name = inner(node.name)
        nodes.append(renamed)
    nodes.append(helper.make_node("Squeeze", [inner("y"), inner("time_axis")], [inner("y_t")]))
    initializers = []
    for tensor in graph.initializer:
        renamed_tensor = onnx.TensorProto()
        renamed_tensor.CopyFrom(tensor)
        renamed_tensor.name = inner(tensor.name)
        initializers.append(renamed_tensor)

    def value(name: str, shape: list, kind: int = elem) -> Any:
        return helper.make_tensor_value_info(name, kind, shape)

    body = helper.make_graph(
        nodes,
        "step",
        [
            *(value(inner(n), state_shape) for n in states),
            value(inner("x_t"), ["batch", streams, features]),
            value(inner("reset_t"), ["batch", streams], TensorProto.BOOL),
        ],
        [*(value(inner(f"{n}_out"), state_shape) for n in states), value(inner("y_t"), ["batch", streams, hidden])],
        initializers,
    )
    scan = helper.make_node(
        "Scan",
        [*states, "x", "reset"],
        [*(f"{n}_out" for n in states), "y"],
        name="time",
        body=body,
        num_scan_inputs=2,
        scan_input_axes=[2, 2],
        scan_output_axes=[2],
    )
    outer = helper.make_graph(
        [scan],
        graph.name,
        [
            value("x", ["batch", streams, "time", features]),
            *(value(n, state_shape) for n in states),
            value("reset", ["batch", streams, "time"], TensorProto.BOOL),
        ],
        [value("y", ["batch", streams, "time", hidden]), *(value(f"{n}_out", state_shape) for n in states)],
    )
    model = helper.make_model(outer, opset_imports=step.opset_import, ir_version=step.ir_version)
    model.functions.extend(step.functions)  # the dynamo exporter's local functions, if any
    return model


def _dims(value: Any) -> list[int | str]:
    """A graph value's shape: ints where fixed, the dimension's name (or "?") where not."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _stamp(path: str, module: Any, exporter: str, form: _Form) -> None:
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
        "multistate_rnn.frames": str(form.frames or "dynamic"),
        "multistate_rnn.batch": str(form.batch or "dynamic"),
        "multistate_rnn.reset": "input" if form.resets else "none",
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
    static = frames is not None and options.batch_size is not None
    if static and source.batch_size != options.batch_size:
        raise ExportError(
            f"batch_size={options.batch_size} with frames fixes the graph's batch, but the model carries a batch "
            f"of {source.batch_size}"
        )
    form = _Form(frames, source.batch_size if static else None, options.resets)
    plan: Any = "random" if frames is None else [frames] * -(-options.verify_steps // frames)
    steps = options.verify_steps if frames is None else sum(plan)
    rng = np.random.default_rng(options.seed)
    x = rng.standard_normal((source.batch_size, module.num_streams, steps, module.input_size)).astype("float32")

    def write(path: str) -> None:
        try:
            _write_onnx(module, path, exporter, form)
            _stamp(path, module, exporter, form)
        except Exception as e:
            raise ExportError(f"the {exporter} exporter failed on {module.cell}: {type(e).__name__}: {e}") from e

    def check(runner: Any) -> None:
        time_axis = runner.session.get_inputs()[0].shape[2]
        if frames is None and isinstance(time_axis, int):
            raise ExportError(
                f"the {exporter} exporter fixed the time axis of {module.cell} at {time_axis} steps "
                "(it unrolls the loop); use exporter='legacy'"
            )
        if static and (dynamic := dynamic_dims(onnx_model(runner.path))):
            raise ExportError(f"the static graph has dynamic dimensions: {', '.join(dynamic[:5])}")

    names = tuple(module.state_names)
    return Job(write, source.reference, x, plan, exporter, module.cell, names, module.num_streams, check)


def onnx_model(path: str | os.PathLike) -> Any:
    """The ONNX model at ``path`` with every shape inferred (``onnx.shape_inference``, strict)."""
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)


def dynamic_dims(model: Any) -> list[str]:
    """Every graph input, output and inferred value of ``model`` with a dimension that is not a fixed number
    (``name (shape)``); empty for a fully static graph. Subgraphs are read too."""
    import onnx

    def values(graph: Any) -> Iterator[Any]:
        yield from (*graph.input, *graph.output, *graph.value_info)
        for node in graph.node:
            for attribute in node.attribute:
                for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    yield from values(sub)

    found = []
    for v in values(model.graph):
        if v.type.HasField("tensor_type"):
            dims = _dims(v)
            if not v.type.tensor_type.HasField("shape") or any(isinstance(d, str) or d < 1 for d in dims):
                found.append(f"{v.name} {tuple(dims) if v.type.tensor_type.HasField('shape') else '(unknown)'}")
    return found
