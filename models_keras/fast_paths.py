"""The one path chooser of the Keras layer: ``path_for(facts)`` names the path, ``RUNNERS`` maps it to its runner.

Paths of a chunk (``layer(x)``):

- ``TORCH_FUSED`` (torch backend): the whole stack as ONE torch RNN call (``backends/torch.py``).
- ``JAX_CUDNN`` (JAX on an NVIDIA GPU, float32 LSTM): the stack through cuDNN (``backends/jax.py``).
- ``TF_XLA`` (TensorFlow, inference): the Keras layers in ``tf.function(jit_compile=True)``; training
  stays generic, as TensorFlow cannot pass the loop's gradient lists across XLA's while loop.
- ``GENERIC``: the Keras layers one after another (Keras's own kernels: one ``lax.scan`` on JAX).

With resets inside the chunk or ragged lengths (``stepped``): ``TORCH_SEGMENTS`` (the fused call cut at
resets and lengths), ``TF_XLA_SCAN`` (``SCAN`` compiled with XLA), or ``SCAN`` (one ``keras.ops.scan`` over
the stack's cells, every backend). A streaming step (``layer.streaming_step()``, its runners in
``streaming.STEPS``): ``BACKEND_STEP`` (the backend's own step, ``step_function`` of ``backends``; the
layer itself on a backend without one) or ``LAYER_CALL`` (``layer`` itself).

Configurations a fast path cannot serve (dropout, activations the torch op lacks, ``go_backwards``,
``unroll``) and ``fused=False`` take the generic path; a traced call without values (Keras's
symbolic build) takes the path that needs none. The layer never asks for a path by name, so none is
replaced: ``streaming_step(compiled=True)`` where the torch backend has no step of its own warns
that it runs ``layer(x)``.

Example:
    >>> path_name(MultiStateLSTM(8, num_streams=3))   # on KERAS_BACKEND=torch  # doctest: +SKIP
    'torch-fused'
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import Any

from keras import ops

from models_keras import backends, stepping
from multistate_core.cells import CELLS


class Path(enum.Enum):
    """A named way to run the stack; the value is the name reports and benchmarks record."""

    GENERIC = "generic"
    TORCH_FUSED = "torch-fused"
    JAX_CUDNN = "jax-cudnn"
    TF_XLA = "tf-xla"
    SCAN = "scan"
    TF_XLA_SCAN = "tf-xla-scan"
    TORCH_SEGMENTS = "torch-segments"
    BACKEND_STEP = "backend-step"
    LAYER_CALL = "layer-call"


@dataclasses.dataclass(frozen=True)
class Facts:
    """What picks a path: the backend, the layer and the call.

    ``fusable``: the layer allows a fused kernel (``fused=True``, no dropout, no ``go_backwards`` or
    ``unroll``); ``torch_computes``: torch's op computes its cells (their activations, GRU
    ``reset_after=True``); ``stepped``: resets inside the chunk or ragged lengths; ``concrete``: the
    call holds values (eager), not a trace; ``symbolic``: Keras traces shapes only.
    """

    backend: str
    cell: str
    dtype: str
    mixed: bool
    on_gpu: bool
    fusable: bool
    torch_computes: bool
    training: bool = False
    stepped: bool = False
    concrete: bool = True
    symbolic: bool = False
    streaming: bool = False


def facts_for(
    layer: Any,
    *,
    training: bool | None = False,
    stepped: bool = False,
    concrete: bool = True,
    streaming: bool = False,
) -> Facts:
    """The facts of a call of ``layer`` on the active backend."""
    return Facts(
        backend=backends.NAME,
        cell=layer.cell,
        dtype=layer.compute_dtype,
        mixed=layer.compute_dtype != layer.variable_dtype,
        on_gpu=backends.active.on_gpu(),
        fusable=layer.fused and all(_plain(rnn) for rnn in layer.rnn_layers),
        torch_computes=all(_torch_computes(layer.cell, rnn.cell) for rnn in layer.rnn_layers),
        training=bool(training),
        stepped=stepped,
        concrete=concrete,
        symbolic=backends.symbolic(),
        streaming=streaming,
    )


def path_for(facts: Facts) -> Path:
    """The path a call with ``facts`` takes (the module docstring lists them)."""
    kernel = _kernel(facts)
    if facts.streaming:  # torch's step runs the fused kernel's stack, in one dtype
        torch_step = kernel is Path.TORCH_FUSED and not facts.mixed
        return Path.LAYER_CALL if facts.backend == "torch" and not torch_step else Path.BACKEND_STEP
    if kernel is Path.TF_XLA and facts.symbolic:
        kernel = Path.GENERIC  # no compiled function while Keras traces shapes
    if not facts.stepped:
        return kernel
    if kernel is Path.TORCH_FUSED and facts.concrete:
        return Path.TORCH_SEGMENTS
    return Path.TF_XLA_SCAN if kernel is Path.TF_XLA else Path.SCAN


def _kernel(facts: Facts) -> Path:
    """The fused kernel of the backend for a plain chunk, or ``GENERIC``."""
    if not facts.fusable:
        return Path.GENERIC
    if facts.backend == "torch" and facts.torch_computes:
        return Path.TORCH_FUSED
    cudnn_lstm = CELLS[facts.cell].state_names == ("h", "c")  # jax.experimental.rnn runs the (h, c) cell only
    if facts.backend == "jax" and facts.torch_computes and cudnn_lstm and facts.dtype == "float32" and facts.on_gpu:
        return Path.JAX_CUDNN
    if facts.backend == "tensorflow" and not facts.training:
        return Path.TF_XLA
    return Path.GENERIC


def path_name(layer: Any, training: bool | None = False) -> str:
    """Which kernel ``layer`` runs a plain chunk on: "torch-fused", "jax-cudnn", "tf-xla" (inference) or "generic"."""
    return path_for(facts_for(layer, training=training)).value


def _plain(rnn: Any) -> bool:
    c = rnn.cell
    return not (getattr(c, "dropout", 0) or getattr(c, "recurrent_dropout", 0) or rnn.go_backwards or rnn.unroll)


def _torch_computes(cell: str, c: Any) -> bool:
    """Whether torch's op computes what the Keras cell ``c`` does (torch's GRU is ``reset_after=True``)."""
    if not getattr(c, "reset_after", True):
        return False
    return all(getattr(c, attr).__name__ in allowed for attr, allowed in CELLS[cell].activations.items())


# ---- the runners: run(layer, x, initial, resets, lengths, training) -> (output (N, T, H), [state (L, N, H)])


def run_layers(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """The generic path: the Keras layers one after another. Returns the output and each state ``(L, N, H)``."""
    finals = []
    for i, rnn in enumerate(layer.rnn_layers):
        x, *final = rnn(x, initial_state=[s[i] for s in initial], training=training)
        finals.append(final)
    return x, [ops.stack(per_layer) for per_layer in zip(*finals)]


def run_scan(layer: Any, x: Any, initial: list, resets: Any, lengths: Any, training: bool | None) -> tuple[Any, list]:
    """The portable path with resets and lengths: one ``keras.ops.scan`` over the stack's cells."""
    return stepping.scan([rnn.cell for rnn in layer.rnn_layers], x, initial, resets, lengths, training)


def _plain_chunk(run: Callable) -> Callable:
    """A runner from ``run(layer, x, initial, training)``: lengths are full, resets (if any) on the first step."""

    @functools.wraps(run)
    def runner(layer: Any, x: Any, initial: list, resets: Any, lengths: Any, training: bool | None):
        if resets is not None:
            initial = [ops.where(resets[None, :, :1], ops.zeros_like(s), s) for s in initial]
        return run(layer, x, initial, training)

    return runner


def _compiled(run: Callable) -> Callable:
    """``run`` compiled with XLA by TensorFlow, once per layer (held by the layer, freed with it)."""

    def runner(layer: Any, *args: Any) -> tuple[Any, list]:
        name = run.__name__
        if name not in layer._xla:
            layer._xla[name] = backends.active.xla(functools.partial(run, layer))
        return layer._xla[name](*args)

    return runner


RUNNERS: dict[Path, Callable[..., tuple[Any, list]]] = {
    Path.GENERIC: _plain_chunk(run_layers),
    Path.TORCH_FUSED: _plain_chunk(backends.active.run_fused),
    Path.JAX_CUDNN: _plain_chunk(backends.active.run_fused),
    Path.TF_XLA: _plain_chunk(_compiled(run_layers)),
    Path.SCAN: run_scan,
    Path.TF_XLA_SCAN: _compiled(run_scan),
    Path.TORCH_SEGMENTS: backends.active.run_fused_stepped,
}
