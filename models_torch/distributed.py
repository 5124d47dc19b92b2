"""The global carried state of a multi-state module trained with ``DistributedDataParallel``.

Under DDP each rank's module sees only its rows: a global batch of ``B`` rows over
``W`` ranks gives every module a LOCAL batch ``b = B // W`` (build it with
``batch_size=b``). Row layout: rank ``r`` holds global rows ``[r*b, (r+1)*b)``.
Feed each rank contiguous rows to match, e.g. ``x[r*b:(r+1)*b]`` of every global
batch; ``DistributedSampler`` interleaves rows by default (rank r gets rows r, r+W,
...), so either shard the data yourself or keep in mind that global row ``r*b + i``
is then sample ``i*W + r``. The carried state is not a buffer, so DDP never
broadcasts it: each rank carries its own rows.

These functions move the state between that layout and the GLOBAL ``(L, B, S, H)``
tensors (``get_states()`` order), and read and write the ordinary ``.npz`` state
checkpoint with the global batch, so a checkpoint written by N ranks resumes on M
ranks or in one process. Every rank must call them (they are collectives).

Example:
    >>> module = MultiStateLSTM(4, 8, num_streams=3, batch_size=2)
    >>> [tuple(s.shape) for s in gather_states(module)]  # one process: the global state is the local one
    [(1, 2, 3, 8), (1, 2, 3, 8)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from models_torch.multistate import MultiStateBase, MultiStateLSTM  # noqa: F401 (MultiStateLSTM: the doctest)
from multistate_core.checkpoint import load_state_file, save_state_file

State = tuple[torch.Tensor, ...]


def _world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unwrap(module: torch.nn.Module) -> MultiStateBase:
    module = getattr(module, "module", module)  # a DistributedDataParallel wrapper
    if not isinstance(module, MultiStateBase):
        raise TypeError(f"expected a multi-state module (or DDP around one), got {type(module).__name__}")
    return module


def local_rows(global_batch: int, world_size: int | None = None) -> int:
    """Rows each rank carries; refuses a global batch the ranks cannot share evenly.

    Example:
        >>> local_rows(8, world_size=2)
        4
        >>> local_rows(5, world_size=2)
        Traceback (most recent call last):
        ...
        ValueError: the global batch size 5 does not split evenly over 2 ranks: use a multiple of 2
    """
    world_size = _world()[1] if world_size is None else world_size
    if global_batch % world_size:
        raise ValueError(
            f"the global batch size {global_batch} does not split evenly over {world_size} ranks: "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


def _check_same_shapes(states: State, world: int) -> None:
    """Agree on the state shapes over all ranks (a fixed-size ``all_gather``) before the states are gathered:
    gloo aborts the process on tensors of different sizes."""
    shape = torch.tensor([len(states), *states[0].shape], dtype=torch.int64, device=states[0].device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    found = [tuple(s.tolist()) for s in shapes]  # (number of states, L, b, S, H) of each rank
    if len(set(found)) > 1:
        ranks = "; ".join(f"rank {r}: batch {f[2]}, {f[0]} states {f[1:]}" for r, f in enumerate(found))
        raise ValueError(
            f"gather_states needs the same local batch and state shape (L, b, S, H) on every rank; found {ranks}"
        )


def gather_states(module: torch.nn.Module) -> State:
    """The global states, each ``(L, B_global, S, H)`` in global row order, on every rank (``all_gather``).

    Every rank must hold states of the same shapes (the same local batch); otherwise every rank raises a
    ``ValueError`` naming each rank's shape, before the data is gathered. ``module`` may be the DDP wrapper.
    """
    states = _unwrap(module).get_states()
    rank, world = _world()
    if world == 1:
        return states
    _check_same_shapes(states, world)
    gathered = []
    for state in states:
        parts = [torch.empty_like(state) for _ in range(world)]
        dist.all_gather(parts, state.contiguous())
        gathered.append(torch.cat(parts, dim=1))
    return tuple(gathered)


def scatter_states(module: torch.nn.Module, global_states: Sequence[torch.Tensor | np.ndarray]) -> None:
    """Give each rank its rows ``[r*b, (r+1)*b)`` of the global ``(L, B_global, S, H)`` states.

    Every rank passes the same global states (e.g. each read the same file). A global batch not
    divisible by the world size, or not ``world_size`` times the module's fixed batch, is refused
    before any state changes.
    """
    inner = _unwrap(module)
    rank, world = _world()
    tensors = [torch.as_tensor(s) for s in global_states]
    rows = local_rows(int(tensors[0].shape[1]), world)
    if inner.fixed_batch_size is not None and rows != inner.fixed_batch_size:
        raise ValueError(
            f"a global batch of {tensors[0].shape[1]} gives {rows} rows per rank over {world} ranks, "
            f"but the module carries {inner.fixed_batch_size} rows"
        )
    inner.set_states([t[:, rank * rows : (rank + 1) * rows] for t in tensors])


def save_global_states(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Rank 0 writes the global state to the ``.npz`` checkpoint (atomically); the others wait at a barrier."""
    inner = _unwrap(module)
    states = gather_states(inner)
    rank, world = _world()
    if rank == 0:
        arrays = {n: s.detach().cpu().numpy() for n, s in zip(inner.state_names, states)}
        meta = inner._checkpoint_meta()
        save_state_file(path, arrays, {**meta, "batch_size": int(states[0].shape[1])})
    if world > 1:
        dist.barrier()


def load_global_states(module: torch.nn.Module, path: str | os.PathLike, global_batch: int | None = None) -> None:
    """Every rank reads the checkpoint and takes its rows; it may have been written by any number of ranks.

    ``global_batch``: the global batch this run expects (default: the module's fixed batch times the
    world size); a checkpoint with another global batch is refused before any state changes.
    """
    inner = _unwrap(module)
    _, world = _world()
    if global_batch is None and inner.fixed_batch_size is not None:
        global_batch = inner.fixed_batch_size * world
    expected = {**inner._checkpoint_meta(), "batch_size": global_batch}
    states = load_state_file(path, expected, inner.state_names)
    scatter_states(inner, [states[n] for n in inner.state_names])
