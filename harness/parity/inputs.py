"""A model's inputs for the checks: one array, or several (a tuple/list or a dict of arrays).

One input is ``(B, S, T, F)``. Several inputs (a band-split model's spectrum and its conditioning, an RL
policy's observation and previous action) are each ``(B, ·, T, ...)``: batch at axis 0, time at axis 2,
any size at axis 1 and any trailing axes; all share ``B`` and ``T``. Every input is cut at the same chunk
boundaries, along axis 2. A tuple or list is handed to the models as positional inputs (torch
``forward(*inputs)``, a Keras model a list), a dict as named ones (torch ``forward(**inputs)``, a Keras
model a dict keyed by its ``Input`` names).

Example:
    >>> x = inputs_checked((np.zeros((2, 3, 5, 4)), np.zeros((2, 1, 5))))
    >>> [a.shape for a in window(x, 1, 3)], steps(x)
    ([(2, 3, 2, 4), (2, 1, 2)], 5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Inputs = np.ndarray | tuple[np.ndarray, ...] | dict[str, np.ndarray]
"""One input array, or several: positional (a tuple) or by name (a dict)."""


def inputs_checked(x: Any) -> Inputs:
    """``x`` as numpy arrays (a list becomes a tuple), checked: one input ``(B, S, T, F)``, or several sharing
    batch (axis 0) and time (axis 2). The error names every input's shape.

    Raises:
        ValueError: one input not of rank 4; several inputs none of them, one nested (a list, tuple or dict), one
            of rank < 3, or batch or time sizes that differ.
    """
    if not isinstance(x, (Mapping, list, tuple)):
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, streams, time, features), got shape {x.shape}")
        return x
    given = x.items() if isinstance(x, Mapping) else enumerate(x)
    if nested := [f"x[{k!r}]" for k, v in given if isinstance(v, (Mapping, list, tuple))]:
        raise ValueError(
            f"several inputs must each be an array, got a nested {type(x).__name__} at {', '.join(nested)}; "
            "one input given as nested lists: pass np.asarray(x)"
        )
    several = {str(k): np.asarray(v) for k, v in x.items()} if isinstance(x, Mapping) else tuple(map(np.asarray, x))
    shapes = _shapes(several)
    if not several:
        raise ValueError("x holds no input: give one array, or several in a tuple, list or dict")
    if any(len(shape) < 3 for shape in shapes.values()) or len({(s[0], s[2]) for s in shapes.values()}) > 1:
        raise ValueError(
            "several inputs must each be (batch, ·, time, ...) with the same batch (axis 0) and time (axis 2) "
            f"sizes, got {_described(shapes)}"
        )
    return several


def is_several(x: Inputs) -> bool:
    """Whether ``x`` holds several inputs (a tuple or dict) rather than one array."""
    return isinstance(x, (dict, tuple))


def steps(x: Inputs) -> int:
    """The time steps ``T`` the inputs share."""
    return int(first(x).shape[2])


def first(x: Inputs) -> np.ndarray:
    """The one input, or the first of several."""
    if isinstance(x, dict):
        return next(iter(x.values()))
    return x[0] if isinstance(x, tuple) else x


def each(x: Inputs, convert: Callable[[np.ndarray], Any]) -> Any:
    """``x`` with ``convert`` applied to every input, in the same structure (one, a tuple, a dict)."""
    if isinstance(x, dict):
        return {name: convert(value) for name, value in x.items()}
    if isinstance(x, tuple):
        return tuple(convert(value) for value in x)
    return convert(x)


def window(x: Inputs, start: int, end: int) -> Inputs:
    """Every input's steps ``start`` to ``end`` (axis 2)."""
    chunk: Inputs = each(x, lambda a: a[:, :, start:end])
    return chunk


def cast_floating(x: Inputs, dtype: Any) -> Inputs:
    """``x`` with every floating-point input cast to ``dtype``; integer and boolean inputs (indices, flags) kept."""
    cast: Inputs = each(x, lambda a: a.astype(dtype, copy=False) if np.issubdtype(a.dtype, np.floating) else a)
    return cast


def shape_of(x: Inputs) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
    """The input's shape, or every input's by name (``x[0]``, ``x['obs']``), for reports."""
    return _shapes(x) if is_several(x) else tuple(first(x).shape)


def dtype_of(x: Inputs) -> str:
    """The dtype of the input, or those of the floating-point inputs of several (the dtypes the models cast)."""
    if not is_several(x):
        return str(first(x).dtype)
    arrays = x.values() if isinstance(x, dict) else x
    return ", ".join(sorted({str(a.dtype) for a in arrays if np.issubdtype(a.dtype, np.floating)}))


def _shapes(x: Any) -> dict[str, tuple[int, ...]]:
    """Every input's shape by its name as the caller would write it: ``x[0]``, ``x['obs']``."""
    items = x.items() if isinstance(x, dict) else enumerate(x)
    return {f"x[{key!r}]": tuple(value.shape) for key, value in items}


def _described(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items())
