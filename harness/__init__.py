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
    "PLANS": "parity.engine",
    "assert_parity": "parity.engine",
    "check_parity": "parity.engine",
    "chunk_plan": "parity.engine",
    "port_weights": "porting.layers",
    "keras_twin": "porting.layers",
    "torch_twin": "porting.layers",
    "Comparison": "parity.report",
    "ParityReport": "parity.report",
    "Runner": "parity.runners",
    "as_runner": "parity.runners",
    "Tolerance": "parity.tolerances",
    "default_tolerance": "parity.tolerances",
    "TrainingParityReport": "training.twins",
    "check_training_parity": "training.twins",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f"harness.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return __all__
