"""The source resolution every format shares: what a path holds, the Keras side's layer and its carried states."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from harness.export.job import ExportError


def file_kind(path: str | os.PathLike) -> str:
    """``"torch"`` or ``"keras"`` for a weight file (by its suffix), else ``ExportError``."""
    from harness.porting import files

    try:
        return files.file_kind(path)
    except ValueError as e:
        raise ExportError(str(e)) from None


def check_streams(asked: int | None, has: int, what: str) -> int:
    """``has``, the streams of ``what``, once ``asked`` (the caller's ``num_streams``, if any) agrees."""
    if asked is not None and asked != has:
        raise ExportError(f"num_streams={asked} but {what} has {has} streams")
    return has


@contextlib.contextmanager
def keras_states_kept(model: Any) -> Iterator[None]:
    """Verification resets the Keras layers' carried states; put them back afterwards."""
    from models_keras import multistate_layers

    saved = []
    for layer in multistate_layers(model):
        with contextlib.suppress(Exception):
            saved.append((layer, layer.get_states()))
    try:
        yield
    finally:
        for layer, states in saved:
            layer.set_states(states)


def states_kept(reference: Any) -> contextlib.AbstractContextManager:
    """What keeps ``reference``'s carried states through the proof (a torch source is a fresh copy already)."""
    from harness.porting.layers import is_keras

    return keras_states_kept(reference) if is_keras(reference) else contextlib.nullcontext()
