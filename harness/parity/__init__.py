"""The parity engine: run models whole and in chunks, compare outputs and every carried state at each boundary.

``engine`` (``check_parity``), ``report`` (what was compared, where it failed), ``runners`` (one way to drive any
model), ``tolerances`` (the one table), ``precision`` (full float32 matmuls), ``untouched`` (models left as found).
"""

from harness.parity.engine import PLANS, StepArgs, assert_parity, check_parity, chunk_plan
from harness.parity.precision import full_precision_matmul
from harness.parity.report import Comparison, ParityReport
from harness.parity.runners import Runner, as_runner
from harness.parity.tolerances import Tolerance, default_tolerance
from harness.parity.untouched import left_as_found

__all__ = [
    "PLANS",
    "Comparison",
    "ParityReport",
    "Runner",
    "StepArgs",
    "Tolerance",
    "as_runner",
    "assert_parity",
    "check_parity",
    "chunk_plan",
    "default_tolerance",
    "full_precision_matmul",
    "left_as_found",
]
