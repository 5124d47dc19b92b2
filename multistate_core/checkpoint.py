"""State checkpoints: one framework-neutral ``.npz`` file for the carried states of a multi-state model.

The file holds each state tensor ``(L, B, S, H)`` by name (``h``, ``c``) and a
JSON ``meta`` entry (cell, layers, batch, streams, units, dtype), so a stream
stopped in torch can resume in Keras and the other way round. Loading never
unpickles (``allow_pickle=False``); writing is atomic. ``StateCheckpoints`` gives
both model packages their ``save_states``/``load_states``.

Example:
    >>> torch_lstm.save_states("streams.npz")       # doctest: +SKIP
    >>> keras_lstm.load_states("streams.npz")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from multistate_core.atomic import atomic_path

FORMAT = "multistate-rnn/states/1"
MATCHING = ("cell", "num_layers", "num_streams", "units")


def save_state_file(path: str | os.PathLike, states: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``states`` and ``meta`` to ``path`` (``.npz``) atomically."""
    first = next(iter(states.values()))
    meta = {**meta, "format": FORMAT, "batch_size": int(first.shape[1]), "dtype": str(first.dtype)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **states)  # type: ignore[arg-type]  # mypy fits **states to allow_pickle: bool


def load_state_file(path: str | os.PathLike, expected: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The states in ``path``, after checking that its metadata fits ``expected`` (the loading model).

    Raises ``ValueError`` naming every field that differs; the model's state is not touched.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such state checkpoint: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            states = {n: data[n] for n in names if n in data}
    except Exception as e:
        raise ValueError(f"cannot read state checkpoint {path} ({type(e).__name__}: {e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a multistate-rnn state checkpoint (format {meta.get('format')!r})")
    fields = MATCHING + (("batch_size",) if expected.get("batch_size") is not None else ())
    problems = [
        f"{k}: checkpoint has {meta.get(k)!r}, model has {expected[k]!r}" for k in fields if meta.get(k) != expected[k]
    ]
    if set(states) != set(names):
        problems.append(f"state tensors: checkpoint has {sorted(states)}, model needs {list(names)}")
    if problems:
        raise ValueError(f"state checkpoint {path} does not fit this model: " + "; ".join(problems))
    return states


class CheckpointHost(Protocol):
    """What ``StateCheckpoints`` reads from the model it is mixed into (attributes or properties alike)."""

    @property
    def cell(self) -> str: ...
    @property
    def state_names(self) -> tuple[str, ...]: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_streams(self) -> int: ...
    @property
    def units(self) -> int: ...
    @property
    def fixed_batch_size(self) -> int | None: ...
    def numpy_states(self) -> tuple[np.ndarray, ...]: ...
    def set_states(self, states: Sequence[np.ndarray]) -> None: ...
    def _checkpoint_meta(self) -> dict: ...


class StateCheckpoints:
    """``save_states``/``load_states`` for a multi-state model of either framework.

    The model provides ``cell``, ``state_names``, ``num_layers``, ``num_streams``, ``units``,
    ``fixed_batch_size`` (None where the batch is not fixed), ``numpy_states()`` and
    ``set_states()``.
    """

    def save_states(self: CheckpointHost, path: str | os.PathLike) -> None:
        """Write the carried states to a framework-neutral ``.npz`` checkpoint, atomically."""
        save_state_file(path, dict(zip(self.state_names, self.numpy_states())), self._checkpoint_meta())

    def load_states(self: CheckpointHost, path: str | os.PathLike) -> None:
        """Resume the streams saved by ``save_states`` (in either framework); a misfit is refused untouched."""
        states = load_state_file(path, self._checkpoint_meta(), self.state_names)
        self.set_states([states[n] for n in self.state_names])

    def _checkpoint_meta(self: CheckpointHost) -> dict:
        return {
            "cell": self.cell,
            "num_layers": self.num_layers,
            "num_streams": self.num_streams,
            "units": self.units,
            "batch_size": self.fixed_batch_size,
        }
