"""Weights between torch and Keras: one recurrent layer (``layers``), whole models (``models``), weight files
(``files``), and a file ported and proven (``convert``, ``python -m harness port``)."""

from harness.porting.convert import ConvertResult, ParityFailed, convert_file
from harness.porting.layers import describe, keras_class, keras_twin, read_weights, torch_class, torch_twin
from harness.porting.models import port_report, port_weights, register_pair

__all__ = [
    "ConvertResult",
    "ParityFailed",
    "convert_file",
    "describe",
    "keras_class",
    "keras_twin",
    "port_report",
    "port_weights",
    "read_weights",
    "register_pair",
    "torch_class",
    "torch_twin",
]
