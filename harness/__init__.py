"""Weight porting and parity checking between the torch and Keras multi-state models.

The names below load on first use (PEP 562), so that ``import harness`` loads no
framework: torch and Keras are imported only by the parts that need them.

Example:
    >>> import harness
    >>> harness.chunk_plan("halves", 5)
    [2, 3]
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "PLANS": "parity",
    "assert_parity": "parity",
    "check_parity": "parity",
    "chunk_plan": "parity",
    "port_weights": "porting",
    "keras_twin": "porting",
    "torch_twin": "porting",
    "Comparison": "report",
    "ParityReport": "report",
    "Runner": "runners",
    "as_runner": "runners",
    "Tolerance": "tolerances",
    "default_tolerance": "tolerances",
    "TrainingParityReport": "training",
    "check_training_parity": "training",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return __all__
