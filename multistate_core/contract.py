"""Framework-neutral checks of the public contract, shared by both model packages.

Every check works on plain shapes and dtype names, raises a ``ValueError`` that
says what was expected and what arrived, and runs before any carried state is
touched, so a refused call leaves every state as it was.

Example:
    >>> check_input((2, 3, 10, 4), "float32", num_streams=3, input_size=4,
    ...             batch_size=2, stream=None)
    >>> check_input((2, 10, 4), "float32", num_streams=3, input_size=4,
    ...             batch_size=2, stream=5)
    Traceback (most recent call last):
    ...
    ValueError: stream index out of range: expected 0 <= stream < 3, got 5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class FixedBatch(NamedTuple):
    """Why ``reset_states()`` cannot free a layer's batch size (``by``), and how to run another
    batch size instead (``remedy``; ``{batch}`` stands for the refused batch size)."""

    by: str
    remedy: str


# torch: a module built with batch_size= (without it, reset_states() frees the batch size).
TORCH_DECLARED_BATCH = FixedBatch(
    "batch_size=",
    "build a new module with batch_size={batch}, or one without batch_size= (its reset_states() frees the batch size)",
)
# Keras: the state variables are made once, for one batch size.
KERAS_BATCH = FixedBatch(
    "its state variables (made for it by batch_size=, keras.Input(batch_shape=...) or its first call)",
    "build a new layer with batch_size={batch}, or a model with keras.Input(batch_shape=({batch}, ...))",
)


def check_input(
    shape: Sequence[int | None],
    dtype: str,
    *,
    num_streams: int,
    input_size: int,
    batch_size: int | None,
    stream: int | None,
    name: str = "input",
    fixed_batch: FixedBatch | None = None,
) -> None:
    """Check one call's input: rank, stream count, features, batch, dtype, stream index.

    ``stream=None`` expects ``(batch, streams, time, features)``; ``stream=k``
    expects ``(batch, time, features)`` for stream ``k`` alone. Another batch size than
    ``batch_size`` is refused with advice that works: ``call reset_states()`` where that frees
    the batch size (``fixed_batch`` None), else what fixes it and ``fixed_batch.remedy``.

    Example:
        >>> check_input((3, 3, 10, 4), "float32", num_streams=3, input_size=4, batch_size=2, stream=None,
        ...             fixed_batch=TORCH_DECLARED_BATCH)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: input has batch size 3 ...; this layer's batch size is fixed by batch_size= and ...
    """
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {dtype}")
    shape = tuple(shape)
    if stream is None:
        if len(shape) != 4:
            raise ValueError(
                f"{name} must have rank 4 (batch, streams, time, features), "
                f"got rank {len(shape)} with shape {shape}"
                + ("; for one stream pass stream=k" if len(shape) == 3 else "")
            )
        if shape[1] is not None and shape[1] != num_streams:
            raise ValueError(
                f"{name} has the wrong stream count: expected {num_streams} streams, got {shape[1]} (shape {shape})"
            )
    else:
        check_stream_index(stream, num_streams)
        if len(shape) != 3:
            raise ValueError(
                f"{name} for stream={stream} must have rank 3 (batch, time, features), "
                f"got rank {len(shape)} with shape {shape}"
            )
    if shape[-1] is not None and shape[-1] != input_size:
        raise ValueError(f"{name} has the wrong feature size: expected {input_size}, got {shape[-1]} (shape {shape})")
    if shape[0] is not None and shape[0] < 1:
        raise ValueError(f"{name} must have a batch of at least one row, got shape {shape}")
    if shape[-2] is not None and shape[-2] < 1:
        raise ValueError(f"{name} must have at least one time step, got shape {shape}")
    if batch_size is not None and shape[0] is not None and shape[0] != batch_size:
        raise ValueError(_other_batch(name, shape[0], batch_size, fixed_batch))


def _other_batch(name: str, got: int, expected: int, fixed: FixedBatch | None) -> str:
    head = f"{name} has batch size {got} but the carried state was made for batch size {expected}"
    if fixed is None:
        return f"{head}; call reset_states() first to start over with a new batch size"
    remedy = fixed.remedy.format(batch=got)
    return f"{head}; this layer's batch size is fixed by {fixed.by} and reset_states() keeps it: {remedy}"


def check_stream_index(stream: object, num_streams: int) -> None:
    """Check that ``stream`` is an int in ``[0, num_streams)``."""
    if isinstance(stream, (bool, np.bool_)) or not isinstance(stream, (int, np.integer)):
        raise ValueError(f"stream index must be a Python or numpy int, got {type(stream).__name__}: {stream!r}")
    if not 0 <= int(stream) < num_streams:
        raise ValueError(f"stream index out of range: expected 0 <= stream < {num_streams}, got {stream}")


def check_reset_args(
    streams: Sequence[int] | None,
    mask_shape: Sequence[int] | None,
    mask_dtype: str | None,
    *,
    num_streams: int,
    batch_size: int | None,
) -> None:
    """Check ``reset_states(streams=..., mask=...)``: at most one of them, in range, right shape."""
    if streams is not None and mask_shape is not None:
        raise ValueError("reset_states takes streams= or mask=, not both")
    for s in streams or ():
        check_stream_index(s, num_streams)
    if mask_shape is not None:
        expected = (batch_size if batch_size is not None else "batch", num_streams)
        if (
            len(mask_shape) != 2
            or mask_shape[1] != num_streams
            or (batch_size is not None and mask_shape[0] != batch_size)
        ):
            raise ValueError(f"reset mask must have shape {expected}, got {tuple(mask_shape)}")
        if mask_dtype != "bool":
            raise ValueError(f"reset mask must be boolean, got dtype {mask_dtype}")


def check_states(
    shapes: Sequence[Sequence[int]],
    *,
    expected_count: int,
    num_layers: int,
    num_streams: int,
    units: int,
    batch_size: int | None,
) -> int:
    """Check states for ``set_states``: count and ``(L, B, S, H)`` shapes. Returns the batch size."""
    if len(shapes) != expected_count:
        raise ValueError(f"expected {expected_count} state tensor(s), got {len(shapes)}")
    batch = batch_size if batch_size is not None else (shapes[0][1] if len(shapes[0]) == 4 else None)
    expected = (num_layers, batch, num_streams, units)
    for shape in shapes:
        if tuple(shape) != expected:
            raise ValueError(f"state must have shape (layers, batch, streams, units) = {expected}, got {tuple(shape)}")
    assert batch is not None  # a None batch matches no shape of ints, so the loop raised
    return batch


def check_step_args(
    x_shape: Sequence[int | None],
    *,
    resets: tuple[Sequence[int | None], str] | None = None,
    lengths: tuple[Sequence[int | None], str, int | None, int | None] | None = None,
    mask: tuple[Sequence[int | None], str] | None = None,
) -> None:
    """Check per-step ``resets`` and per-stream ``lengths`` against the input shape ``x_shape``.

    ``resets`` is ``(shape, dtype)`` and must be boolean of shape ``x_shape[:-1]``
    (``(B, S, T)``, or ``(B, T)`` for one stream); ``lengths`` is ``(shape, dtype, min, max)``
    (min/max None where the values are not known yet) and must be integers of shape
    ``x_shape[:-2]`` (``(B, S)``, or ``(B,)``) in ``[0, T]``. A Keras ``mask`` is ``(shape, dtype)``
    and must be boolean of shape ``x_shape[:-1]``, like ``resets``.

    Example:
        >>> check_step_args((2, 3, 10, 4), lengths=((2, 3), "int64", 0, 11))
        Traceback (most recent call last):
        ...
        ValueError: lengths must lie in [0, 10] (the chunk's time steps), got values in [0, 11]
    """
    x_shape = tuple(x_shape)
    if resets is not None:
        shape, dtype = tuple(resets[0]), resets[1]
        if not _fits(shape, x_shape[:-1]):
            raise ValueError(f"resets must have shape {x_shape[:-1]} (the input's without features), got {shape}")
        if dtype != "bool":
            raise ValueError(f"resets must be boolean, got dtype {dtype}")
    if mask is not None:
        shape, dtype = tuple(mask[0]), mask[1]
        if not _fits(shape, x_shape[:-1]):
            raise ValueError(f"mask must have shape {x_shape[:-1]} (the input's without features), got {shape}")
        if dtype != "bool":
            raise ValueError(f"mask must be boolean, got dtype {dtype}")
    if lengths is not None:
        shape, dtype, low, high = tuple(lengths[0]), lengths[1], lengths[2], lengths[3]
        if not _fits(shape, x_shape[:-2]):
            raise ValueError(f"lengths must have shape {x_shape[:-2]} (one per batch row and stream), got {shape}")
        if not dtype.startswith(("int", "uint")):
            raise ValueError(f"lengths must be integers, got dtype {dtype}")
        steps = x_shape[-2]
        if low is not None and high is not None and (low < 0 or (steps is not None and high > steps)):
            raise ValueError(
                f"lengths must lie in [0, {steps}] (the chunk's time steps), got values in [{low}, {high}]"
            )


def _fits(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(a is None or b is None or a == b for a, b in zip(shape, expected))


def check_taken_from_source(maker: str, taken: dict[str, object], overrides: dict[str, object]) -> None:
    """Refuse keyword arguments of ``maker`` (``from_module``/``from_layer``) that contradict the source layer.

    ``taken``: the settings read from the source that fix its weights' shapes and what they compute
    (sizes, layers, bias, activations); an override equal to the source's value is accepted.

    Example:
        >>> check_taken_from_source("MultiStateLSTM.from_module", {"hidden_size": 8}, {"hidden_size": 9})
        Traceback (most recent call last):
        ...
        ValueError: MultiStateLSTM.from_module takes these from the source layer, ...: expected hidden_size=8, got ...=9
    """
    clashed = [k for k, v in overrides.items() if k in taken and v != taken[k]]
    clashes = [f"expected {k}={taken[k]!r}, got {k}={overrides[k]!r}" for k in clashed]
    if clashes:
        raise ValueError(f"{maker} takes these from the source layer, whose weights fix them: {'; '.join(clashes)}")
