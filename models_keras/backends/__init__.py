"""The Keras backend seam: the active backend's module, picked once, for every backend-specific piece.

``keras.backend.backend()`` is read here and nowhere else in ``models_keras``. Each module in
this package gives the same functions (``SEAM``; ``tests/test_architecture.py`` holds that),
as Keras keeps its kernels in ``keras/src/backend/<name>/``: ``portable`` has what every
backend can run, ``tensorflow``/``jax``/``torch`` import their framework at the top (only the
active one is ever imported) and override what their framework does differently. A function a
backend cannot serve raises ``NotImplementedError``; ``fast_paths.path_for`` never picks it there.

Example:
    >>> NAME in ("tensorflow", "jax", "torch") or active is portable
    True
    >>> sorted(set(SEAM) - set(dir(active)))
    []
"""

from __future__ import annotations

import importlib
from typing import Any

import keras

from models_keras.backends import portable

NAME: str = keras.backend.backend()

# The backends with a module of their own; any other (numpy, openvino) runs the portable pieces.
_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

active = importlib.import_module(f"models_keras.backends.{_MODULES[NAME]}") if NAME in _MODULES else portable

# What every backend module gives (the layer, the path chooser and the helpers call only these).
SEAM = (
    "holds_values",
    "run_time_checks",
    "guard",
    "scan",
    "exact_tanh",
    "rnn_kwargs",
    "check_dtype",
    "strategy_replicas",
    "in_replica",
    "in_graph",
    "on_gpu",
    "xla",
    "run_fused",
    "run_fused_stepped",
    "step_function",
)


def symbolic() -> bool:
    """Whether Keras is tracing shapes only (a subclassed model's first build): no values, no compiled function.

    Keras 3 has no public spelling of this; ``tests/test_soundness.py`` fails loudly if it moves.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope()


def is_concrete(x: Any) -> bool:
    """Whether ``x`` holds values (an eager call), not a traced or shape-only placeholder."""
    return not symbolic() and active.holds_values(x)
