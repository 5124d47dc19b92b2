"""State checkpoints: one framework-neutral ``.npz`` file for the carried states of a multi-state model.

The file holds each state tensor ``(L, B, S, H)`` by name (``h``, ``c``) and a
JSON ``meta`` entry (cell, layers, batch, streams, units, dtype), so a stream
stopped in torch can resume in Keras and the other way round. Loading never
unpickles (``allow_pickle=False``); writing is atomic.

Example:
    >>> torch_lstm.save_states("streams.npz")       # doctest: +SKIP
    >>> keras_lstm.load_states("streams.npz")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os

import numpy as np

from harness.files import atomic_path

FORMAT = "multistate-rnn/states/1"
MATCHING = ("cell", "num_layers", "num_streams", "units")


def save_state_file(path: str | os.PathLike, states: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``states`` and ``meta`` to ``path`` (``.npz``) atomically."""
    first = next(iter(states.values()))
    meta = {**meta, "format": FORMAT, "batch_size": int(first.shape[1]), "dtype": str(first.dtype)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **states)


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
