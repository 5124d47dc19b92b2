"""What one export is: the caller's options, the job a format makes of a source, the error, the result, and the
file's atomic landing. The bottom of ``harness.export``: every format module and the pipeline stand on it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from harness.parity.report import ParityReport


class ExportError(ValueError):
    """The model cannot be exported, or the exported file disagrees with it (nothing was written)."""


@dataclasses.dataclass
class ExportResult:
    """What ``export`` wrote and the parity report that proved it against the source."""

    path: str
    exporter: str
    cell: str
    state_names: tuple[str, ...]
    num_streams: int
    report: ParityReport


@dataclasses.dataclass(frozen=True)
class Options:
    """What the caller asked of an export (``export``'s keyword arguments; a format reads those it knows)."""

    num_streams: int | None = None
    batch_size: int | None = None
    nonlinearity: str | None = None
    exporter: str = "legacy"
    frames: int | None = None
    verify_steps: int = 64
    seed: int = 0
    resets: bool = False  # the file takes a per-step ``reset`` input (B, S, t) bool, last among its inputs


RESET_RATE = 0.15
"""Chance of a reset at each step of each stream in the verification input of a file with a reset input."""


def verification_resets(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random per-step resets ``(B, S, T)`` for the verification input (``RESET_RATE`` of the steps), every
    stream of the first batch row reset at the first step after the first (a reset inside the first chunk)."""
    resets = np.random.default_rng([seed, 24]).random(shape) < RESET_RATE
    resets[0, :, min(1, shape[2] - 1)] = True
    return resets


def _no_check(runner: Any) -> None:
    """A format without checks of its own on the written file."""


@dataclasses.dataclass
class Job:
    """A source made ready for one format: how to write its file, and what the written file is proven against."""

    write: Callable[[str], None]  # writes the file at a path; ExportError if the format cannot express the model
    reference: Any  # the model the written file is proven against (the caller's, or the one read from its file)
    x: np.ndarray  # the verification input
    plan: Any  # its chunk plan
    exporter: str
    cell: str
    state_names: tuple[str, ...]
    num_streams: int
    check: Callable[[Any], None] = _no_check  # the format's own check of the written file (its runner), before proof


def check_destination(dst: str | os.PathLike) -> None:
    """Refuse (``ExportError``) a destination that cannot be written, before any model is read or exported."""
    from multistate_core.atomic import check_writable

    try:
        check_writable(dst)
    except ValueError as e:
        raise ExportError(str(e)) from None


@contextlib.contextmanager
def landing(dst: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``dst`` that becomes ``dst`` only if the block completes (``atomic_path``);
    a ``ValueError`` or ``OSError`` inside comes out as ``ExportError``."""
    from multistate_core.atomic import atomic_path

    try:
        with atomic_path(dst) as tmp:
            yield tmp
    except ExportError:
        raise
    except (ValueError, OSError) as e:
        raise ExportError(str(e)) from e
