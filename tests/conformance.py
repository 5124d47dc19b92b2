"""The comparisons both frameworks' tests share: two computations held equal within the harness's tolerance
table (``harness.default_tolerance``, the table of ``docs/contract.md``), or bit for bit, and on failure the
measured max error and the tolerance it broke.

``got`` and ``want`` are arrays (numpy, torch, TensorFlow, JAX; a torch tensor may need grad) or equally long
sequences of them (a layer's states). The tolerance follows the dtype of ``want``, as the parity engine's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from harness import Tolerance, default_tolerance


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array, whichever framework made it (a torch tensor is detached and moved to the CPU)."""
    return np.asarray(x.detach().cpu()) if hasattr(x, "detach") else np.asarray(x)


def _pairs(got: Any, want: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(want, Sequence) and not isinstance(want, str):
        assert len(got) == len(want), f"{len(got)} arrays against {len(want)}"
        return [(as_numpy(g), as_numpy(w)) for g, w in zip(got, want, strict=True)]
    return [(as_numpy(got), as_numpy(want))]


def assert_within(got: Any, want: Any, tolerance: Tolerance, what: str = "") -> None:
    """Every element within ``tolerance`` (``|got - want| <= atol + rtol * |want|``); shapes equal."""
    for i, (g, w) in enumerate(_pairs(got, want)):
        name = f"{what or 'arrays'}[{i}]"
        assert g.shape == w.shape, f"{name}: shape {g.shape}, expected {w.shape}"
        error = np.abs(g.astype("float64") - w.astype("float64"))
        allowed = tolerance.atol + tolerance.rtol * np.abs(w.astype("float64"))
        assert np.all(error <= allowed), (
            f"{name}: max abs error {float(np.max(error)):.3g} beyond atol={tolerance.atol:g}, rtol={tolerance.rtol:g}"
            f" ({int(np.sum(~(error <= allowed)))} of {error.size} elements)"
        )


def _tolerance(kind: str, want: Any) -> Tolerance:
    return default_tolerance(kind, str(_pairs(want, want)[0][1].dtype))


def assert_chunked_equals_whole(chunked: Any, whole: Any, what: str = "chunked vs whole") -> None:
    """One model computed two ways (in chunks and whole, step by step and in one call): the table's ``"same"``
    tolerance for the dtype of ``whole``."""
    assert_within(chunked, whole, _tolerance("same", whole), what)


def assert_twins_match(got: Any, want: Any, what: str = "twins") -> None:
    """Two implementations of one model (a torch module and its Keras twin, a model and its reference, one device
    and another): the table's ``"cross"`` tolerance for the dtype of ``want``."""
    assert_within(got, want, _tolerance("cross", want), what)


def assert_gradients_match(got: Any, want: Any, what: str = "gradients") -> None:
    """Gradients of one loss computed two ways: they sum over every step, row and stream, so they are held to
    the table's ``"cross"`` tolerance for the dtype of ``want`` even within one framework."""
    assert_within(got, want, _tolerance("cross", want), what)


def assert_bit_identical(got: Any, want: Any, what: str = "bit-identical") -> None:
    """The same numbers bit for bit (the same kernels on the same inputs, or a value handed back unchanged)."""
    assert_within(got, want, Tolerance(0.0, 0.0), what)
