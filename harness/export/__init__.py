"""Export a multi-state model as one streaming chunk to a file, proven against the source before it lands.

``export(model_or_path, "m.onnx")`` (or ``"m.tflite"``); the formats are one registry (``FORMATS``,
``harness.export.formats``); ``OnnxRunner`` and ``TFLiteRunner`` run a written file chunk by chunk.
"""

from harness.export.formats import FORMATS, Format, format_of
from harness.export.job import ExportError, ExportResult
from harness.export.pipeline import export, export_tflite
from harness.export.runners import OnnxRunner, TFLiteRunner

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "Format",
    "OnnxRunner",
    "TFLiteRunner",
    "export",
    "export_tflite",
    "format_of",
]
