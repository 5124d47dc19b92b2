"""Training parity: torch and its Keras twin trained side by side (``twins``), and data-parallel training against
one process (``distributed``)."""

from harness.training.distributed import DistributedParityReport, check_distributed_training_parity
from harness.training.twins import TrainingParityReport, check_training_parity

__all__ = [
    "DistributedParityReport",
    "TrainingParityReport",
    "check_distributed_training_parity",
    "check_training_parity",
]
