"""Weight porting and parity checking between the torch and Keras multi-state models.

Torch and Keras are imported lazily, so a user with only one of them installed
can still use the parts that need only that one.
"""

from harness.parity import PLANS, assert_parity, check_parity, chunk_plan
from harness.porting import port_weights
from harness.report import Comparison, ParityReport
from harness.runners import Runner, as_runner
from harness.tolerances import Tolerance, default_tolerance
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
    "port_weights",
]
