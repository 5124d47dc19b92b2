"""Carried state under Keras data parallelism: every replica keeps the rows it runs, the API sees the global batch.

The batch a user declares (``batch_size=``, ``keras.Input(batch_shape=...)``) is the GLOBAL
batch. What each engine does with the state:

- ``tf.distribute.MirroredStrategy`` (TensorFlow backend): a layer built under a strategy with
  ``R`` replicas makes its state variables ``(L, B // R, S, H)``. They are mirrored variables with
  ``aggregation="none"``: assigned inside a replica (``fit``, ``predict``, ``strategy.run``) each
  replica writes its own copy, so replica ``r`` carries global rows ``[r*B/R, (r+1)*B/R)``, the
  rows ``tf.distribute`` hands it when it splits a global batch. ``get_states``/``save_states``/
  ``model.save`` concatenate the copies in replica order; ``set_states``/``load_states``/
  ``load_model`` split the global state back, so a checkpoint written with N replicas resumes
  with M (or none).
- ``keras.distribution`` on JAX: ``sharded_data_parallel()`` is ``DataParallel`` whose layout map
  also shards the state variables along their batch axis, so each device holds only its rows
  (plain ``DataParallel`` replicates them, which computes the same but stores every row on every
  device). JAX arrays are global, so reading and assigning need nothing more.

Example:
    >>> local_batch(8, replicas=2)
    4
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from models_keras import backends
from multistate_core.cells import CELLS

# The state variables' paths (``state_h``, ``state_c``), as ``LayoutMap`` full-matches them.
STATE_PATTERN = r".*/state_({})".format("|".join(sorted({n for c in CELLS.values() for n in c.state_names})))


def local_batch(global_batch: int, replicas: int) -> int:
    """Rows of the state each replica holds; refuses a global batch the replicas cannot share evenly.

    Example:
        >>> local_batch(5, replicas=2)
        Traceback (most recent call last):
        ...
        ValueError: the global batch size 5 does not split evenly over 2 replicas: use a multiple of 2
    """
    if global_batch % replicas:
        raise ValueError(
            f"the global batch size {global_batch} does not split evenly over {replicas} replicas: "
            f"use a multiple of {replicas}"
        )
    return global_batch // replicas


def strategy_replicas() -> int:
    """Replicas of the ``tf.distribute`` strategy whose scope is active (1 without one, or off TensorFlow)."""
    return backends.active.strategy_replicas()


def _components(variable: keras.Variable) -> list[Any] | None:
    """The per-replica copies of a ``tf.distribute`` variable (None for an ordinary variable)."""
    values = getattr(getattr(variable, "value", None), "values", None)
    return list(values) if isinstance(values, Sequence) and len(values) > 1 else None


def state_replicas(variable: keras.Variable) -> int:
    """How many replicas keep a share of ``variable``'s rows (1: the variable holds the whole batch)."""
    components = _components(variable)
    return 1 if components is None else len(components)


def in_replica() -> bool:
    """True inside one replica of a multi-replica ``tf.distribute`` step (where a call sees only its rows)."""
    return backends.active.in_replica()


def rows_here(global_batch: int | None, variable: keras.Variable | None) -> int | None:
    """The batch an input must have here: a replica's rows inside a replica step, else the global batch."""
    if global_batch is None or variable is None or state_replicas(variable) == 1:
        return global_batch
    if in_replica():
        return int(variable.shape[1])
    return None if tracing_across_replicas(variable) else global_batch  # Keras traces with either batch


def tracing_across_replicas(variable: keras.Variable | None) -> bool:
    """True while Keras traces the model outside the replicas (its symbolic build before the first step).

    Each replica holds only its rows then, so there is no whole state to run from: the call gives
    its output's shape only and leaves the state alone.
    """
    if variable is None or state_replicas(variable) == 1 or in_replica():
        return False
    return backends.active.in_graph()


def shape_only(inputs: Any, units: int, return_sequences: bool) -> Any:
    """Zeros shaped like the layer's output for ``inputs`` (what a symbolic build needs)."""
    out = keras.ops.repeat(keras.ops.zeros_like(inputs[..., :1]), units, axis=-1)
    return out if return_sequences else out[..., -1, :]


def rows_to_run(global_batch: int, variable: keras.Variable) -> int:
    """Like ``rows_here`` for a real call; refuses a call outside the replicas when each holds only its rows."""
    replicas = state_replicas(variable)
    if replicas > 1 and not in_replica():
        raise RuntimeError(
            f"this layer keeps its state on {replicas} replicas: run it through fit/predict/evaluate or "
            "strategy.run (each replica carries its rows), or read the whole state with get_states()"
        )
    return int(variable.shape[1]) if replicas > 1 else global_batch


def read_global(variable: keras.Variable) -> np.ndarray:
    """The whole ``(L, B, S, H)`` state: the replicas' copies concatenated along the batch axis, in replica order."""
    components = _components(variable)
    if components is None:
        return keras.ops.convert_to_numpy(variable.value)
    return np.concatenate([np.asarray(c.numpy()) for c in components], axis=1)


def assign_global(variable: keras.Variable, value: np.ndarray) -> None:
    """Assign a whole ``(L, B, S, H)`` state; each replica takes its rows ``[r*B/R, (r+1)*B/R)``."""
    components = _components(variable)
    if components is None:
        variable.assign(value)
        return
    for component, rows in zip(components, np.split(value, len(components), axis=1)):
        component.assign(rows)


def sharded_data_parallel(devices: Sequence[Any] | None = None) -> keras.distribution.Distribution:
    """Data parallelism (JAX backend) whose state variables are sharded along their batch axis.

    The same as ``keras.distribution.DataParallel``: the batch axis of every input is split
    over the devices, the weights are replicated; in addition each device stores only the
    rows of the carried state it runs. Set it before building the model.

    Example:
        >>> keras.distribution.set_distribution(sharded_data_parallel())  # doctest: +SKIP
    """
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices),), ["batch"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[STATE_PATTERN] = (None, "batch", None, None)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
