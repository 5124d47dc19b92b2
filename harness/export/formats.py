"""The one registry of export formats: each file suffix with the module that writes it and the runner that runs it.

``export()`` picks the writer by the destination's suffix, ``as_runner`` the runner by a path's, the CLI lists the
formats as backends of ``python -m harness parity``, and the main job (``harness.scenarios``) exports to each.

Example:
    >>> format_of("lstm.onnx").name
    'onnx'
    >>> [f.suffix for f in FORMATS.values()]
    ['.onnx', '.tflite']
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.export import to_onnx, to_tflite
from harness.export.job import Job, Options
from harness.export.runners import OnnxRunner, TFLiteRunner

if TYPE_CHECKING:
    from harness.parity.runners import Runner


@dataclasses.dataclass(frozen=True)
class Format:
    """One file format a multi-state chunk exports to.

    ``prepare(model_or_path, dst, options)`` makes the ``Job`` (refusals first); ``runner(path)`` runs a written
    file as a parity-engine runner (every format takes torch and Keras sources; the main job exports the torch
    module). ``keras_backend``: the Keras backend its writer needs, if any.
    ``needs``: the modules that must be installed to write and run it. ``device``: where its runner computes;
    ``runtime``: what runs the written file when it is verified (for messages).
    """

    name: str
    suffix: str
    prepare: Callable[[object, str | os.PathLike, Options], Job]
    runner: Callable[[str | os.PathLike], Runner]
    keras_backend: str | None
    needs: tuple[str, ...]
    device: str
    runtime: str


FORMATS = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", to_onnx.prepare, OnnxRunner, None, ("torch", "onnx", "onnxruntime"),
               "onnxruntime-cpu", "onnxruntime"),
        Format("tflite", ".tflite", to_tflite.prepare, TFLiteRunner, "tensorflow", ("keras", "tensorflow"),
               "litert-cpu", "the LiteRT interpreter"),
    )
}  # fmt: skip


def format_of(path: str | os.PathLike) -> Format | None:
    """The format a path's suffix names, or None."""
    return next((f for f in FORMATS.values() if str(path).endswith(f.suffix)), None)
