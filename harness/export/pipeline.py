"""``export()``: a model or weight file to a verified streaming-chunk file, for every format of the registry.

One path for all formats: the destination's suffix picks the ``Format``; its ``prepare`` resolves the source and
refuses what the file cannot hold; the file is written beside the destination, run by the format's runner against
the source at every chunk boundary (``check_parity``), and lands under its name only if they agree.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from harness.export.formats import FORMATS, Format, format_of
from harness.export.job import ExportError, ExportResult, Options, check_destination, landing, verification_resets
from harness.export.sources import states_kept
from harness.export.to_onnx import EXPORTERS
from harness.parity.report import ParityReport


def prove(
    source: Any, name: str, runner: Any, x: np.ndarray, plan: Any, seed: int, resets: np.ndarray | None = None
) -> ParityReport:
    """The written file (``runner``) against its ``source`` at every chunk boundary (with ``resets`` fed to
    both, for a file with a reset input); ``ExportError`` if they differ."""
    from harness.parity.engine import check_parity

    report = check_parity({"source": source, name: runner}, x, plan, seed=seed, resets=resets)
    if not report.ok:
        raise ExportError(f"the exported file disagrees with the source; nothing written.\n{report.failure_message()}")
    return report


def check_reset_input(runner: Any, x: np.ndarray, wanted: bool) -> None:
    """The written file has a reset input if and only if it was asked for, and a reset there clears a NaN state:
    one call from NaN states with every stream reset gives, bit for bit, what it gives from zero states
    (a reset that multiplies the state by zero, or comes after the step, leaves NaN). The runner is left reset."""
    if runner.has_reset != wanted:
        raise ExportError(f"the written file {'lacks' if wanted else 'has'} a reset input; nothing written")
    if not wanted:
        return
    chunk = x[:, :, : runner.frames or 1]
    every = np.ones(chunk.shape[:3], bool)
    runner.reset()
    clean = [runner.run(chunk, resets=every), *runner.states().values()]
    runner.set_states({n: np.full_like(s, np.nan) for n, s in runner.states().items()})
    cleared = [runner.run(chunk, resets=every), *runner.states().values()]
    runner.reset()
    if not all(np.array_equal(a, b) for a, b in zip(clean, cleared)):
        raise ExportError(
            "a reset in the written file does not clear a NaN state (it must select zeros, before the step): "
            f"from NaN states with every stream reset, {sum(int(np.isnan(a).sum()) for a in cleared)} NaN and "
            f"largest difference {max(float(np.nanmax(np.abs(a - b), initial=0)) for a, b in zip(clean, cleared)):.3g} "
            "against the same call from zero states; nothing written"
        )


def _taking_resets(reference: Any) -> Any:
    """The model to prove a file with a reset input against: a Keras model takes resets only as its multi-state
    layer's call argument, so its one layer; a torch module as it is."""
    from harness.porting.layers import is_keras, only_multistate_layer

    return only_multistate_layer(reference) if is_keras(reference) else reference


def _export(fmt: Format, model_or_path: Any, dst: str | os.PathLike, options: Options) -> ExportResult:
    check_destination(dst)
    job = fmt.prepare(model_or_path, dst, options)
    keep = states_kept(job.reference)
    with landing(dst) as tmp:
        job.write(tmp)
        runner = fmt.runner(tmp)
        job.check(runner)
        check_reset_input(runner, job.x, options.resets)
        resets = verification_resets(job.x.shape[:3], options.seed) if options.resets else None
        reference = _taking_resets(job.reference) if options.resets else job.reference
        with keep:
            report = prove(reference, fmt.name, runner, job.x, job.plan, options.seed, resets)
    return ExportResult(str(dst), job.exporter, job.cell, job.state_names, job.num_streams, report)


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
    resets: bool = False,
) -> ExportResult:
    """Export ``model_or_path`` to ``dst`` (one chunk, states explicit), verified before it lands.

    Args:
        model_or_path: a ``models_torch`` module, a raw ``nn.LSTM``/``nn.GRU``/``nn.RNN``, a ``models_keras``
            layer or a Keras model holding only one, or a weight file (``.pt``, ``.pth``, ``.safetensors``,
            ``.keras``, ``.weights.h5``).
        dst: the file to write, its format named by its suffix (``FORMATS``: ``.onnx``, ``.tflite``; a torch
            source of a ``.tflite`` goes through its Keras twin), atomically: it appears complete and verified,
            or not at all.
        num_streams: streams ``S`` of a raw torch RNN or torch weight file (default 1); for a model that
            has its own, it must agree if given.
        batch_size: batch of the verification input (default: the model's fixed batch, else 1). The
            exported batch axis is dynamic, except with ``frames`` too: then the graph is fully static
            (ONNX: every shape in it fixed, batch ``batch_size`` and ``frames`` steps per call).
        nonlinearity: ``"tanh"`` or ``"relu"``, a simple RNN's activation, required for one in a torch or
            ``.weights.h5`` file (they do not record it).
        exporter: ONNX: ``"legacy"`` (TorchScript, ``dynamo=False``) or ``"dynamo"`` (``torch.export`` + onnxscript).
        frames: ONNX: fix the time axis at this many steps per call (a streaming deployment sends the same
            number every call): the graph then needs no shape arithmetic around the RNN node, and the
            dynamo exporter may unroll a simple RNN. TFLite: the static form, every shape fixed (batch
            ``batch_size`` or the source's) and the steps unrolled, run whole by XNNPACK (checked).
            Default: a dynamic time axis.
        verify_steps: time steps of the random verification input, run in random chunks (ones included;
            chunks of ``frames`` steps when it is fixed, rounded up to a whole number of them).
        seed: seed of the verification input and chunk plan.
        resets: give the file one more input, last: ``reset`` ``(B, S, t)`` bool, where True zeroes that
            stream's state before that step, as the layers' ``resets=`` do. The file is verified with
            random resets (``harness.export.job.verification_resets``) and from NaN states reset.

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
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}: expected one of {EXPORTERS}")
    fmt = format_of(dst)
    if fmt is None:
        suffixes = " or ".join(f.suffix for f in FORMATS.values())
        raise ExportError(f"cannot write {dst}: the destination must end in {suffixes}")
    options = Options(num_streams, batch_size, nonlinearity, exporter, frames, verify_steps, seed, resets)
    return _export(fmt, model_or_path, dst, options)


def export_tflite(
    model_or_path: Any,
    dst: str | os.PathLike,
    *,
    num_streams: int | None = None,
    batch_size: int | None = None,
    nonlinearity: str | None = None,
    verify_steps: int = 64,
    seed: int = 0,
) -> ExportResult:
    """Export a multi-state model to the TFLite file ``dst`` whatever its suffix (``export`` with the ``tflite``
    format, dynamic form; ``harness.export.to_tflite`` says what the file holds and what is refused).

    The file is written atomically; before it lands it runs in the LiteRT interpreter chunk by chunk
    (random chunks, ones included) against the source (``check_parity``, float32 tolerances); any
    disagreement discards it with ``ExportError``.

    Example:
        >>> result = export_tflite(keras_model, "lstm.tflite")                          # doctest: +SKIP
        >>> result.exporter, result.state_names                                         # doctest: +SKIP
        ('tflite', ('h', 'c'))
    """
    options = Options(num_streams, batch_size, nonlinearity, verify_steps=verify_steps, seed=seed)
    return _export(FORMATS["tflite"], model_or_path, dst, options)
