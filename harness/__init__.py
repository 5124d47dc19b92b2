"""Weight porting and parity checking between the torch and Keras multi-state models.

The harness in four parts: ``harness.parity`` (the engine, its report, runners, tolerances), ``harness.porting``
(weights between frameworks, files), ``harness.export`` (chunk files, one registry of formats) and
``harness.training`` (training parity, data-parallel). Importing it loads numpy and these modules only:
every framework (torch, Keras, TensorFlow, JAX, onnxruntime) is imported inside the functions that use it.

Example:
    >>> import harness
    >>> harness.chunk_plan("halves", 5)
    [2, 3]
"""

from harness.parity import (
    PLANS,
    Comparison,
    ParityReport,
    Runner,
    Tolerance,
    as_runner,
    assert_parity,
    check_parity,
    chunk_plan,
    default_tolerance,
)
from harness.porting import keras_twin, port_weights, torch_twin
from harness.training import TrainingParityReport, check_training_parity

__all__ = [
    "PLANS",
    "Comparison",
    "ParityReport",
    "Runner",
    "Tolerance",
    "TrainingParityReport",
    "as_runner",
    "assert_parity",
    "check_parity",
    "check_training_parity",
    "chunk_plan",
    "default_tolerance",
    "keras_twin",
    "port_weights",
    "torch_twin",
]
