"""What the tests share: shapes, inputs, the per-stream reference loop and the table of bad calls.

Fixtures live in ``conftest.py``; everything else a test imports comes from here (or,
for Keras builders, ``tests/keras_helpers.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from multistate_core.cells import CELLS as CELL_TABLE

B, S, T, F, H = 2, 3, 12, 4, 5
CELLS = tuple(CELL_TABLE)


def keras_backend() -> str:
    """The Keras backend this process runs (fixed at import time by KERAS_BACKEND)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False where torch is not installed). Imports torch on first use."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def shard(items: list, spec: str) -> tuple[list, list]:
    """``SUITE_SHARD``'s split of ``items``: spec ``"k/n"`` keeps every n-th item from the k-th (1-based) and
    returns ``(kept, dropped)``; the n shards of a list partition it.

    >>> shard(list("abcde"), "2/2")
    (['b', 'd'], ['a', 'c', 'e'])
    """
    k, n = (int(part) for part in spec.split("/"))
    if not 1 <= k <= n:
        raise ValueError(f"SUITE_SHARD must be k/n with 1 <= k <= n, got {spec!r}")
    return items[k - 1 :: n], [item for i, item in enumerate(items) if i % n != k - 1]


def random_input(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Standard-normal input of ``shape`` and ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)


class PerStreamLoop:
    """The reference every multi-state model is held against: the shared torch ``nn.LSTM``/``GRU``/``RNN``
    called once per stream with its own state, as users hand-roll it (a parity ``Runner``).

    ``call`` runs one stream; ``reset_rows`` zeroes a stream's state in chosen batch rows.
    """

    def __init__(self, rnn: Any, streams: int) -> None:
        self.rnn, self.streams = rnn, streams
        self.reset()

    def reset(self) -> None:
        self.state: list[Any] = [None] * self.streams

    def call(self, x: Any, stream: int) -> Any:
        import torch

        with torch.no_grad():
            out, self.state[stream] = self.rnn(x, self.state[stream])
        return out

    def reset_rows(self, rows: np.ndarray, stream: int) -> None:
        import torch

        if self.state[stream] is None:
            return
        parts = self.state[stream] if isinstance(self.state[stream], tuple) else (self.state[stream],)
        cleared = torch.from_numpy(rows)[None, :, None]
        zeroed = tuple(torch.where(cleared, 0, p) for p in parts)
        self.state[stream] = zeroed if isinstance(self.state[stream], tuple) else zeroed[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        return torch.stack([self.call(torch.from_numpy(x[:, s]), s) for s in range(self.streams)], 1).numpy()

    def states(self) -> dict[str, np.ndarray]:
        import torch

        parts = [s if isinstance(s, tuple) else (s,) for s in self.state]
        names = ("h", "c")[: len(parts[0])]
        return {n: torch.stack([p[i] for p in parts], 2).numpy() for i, n in enumerate(names)}


# One table of bad calls for both frameworks: each row calls ``(model, tensor)`` where ``tensor(shape, dtype)``
# makes the framework's input, and says which message it must raise; a refused call leaves the state untouched.
# Models are an LSTM of (F, H, S) whose state was made for batch B.
BadCall = tuple[Callable[[Any, Callable[..., Any]], Any], str, tuple[str, ...]]
BOTH, TORCH = ("torch", "keras"), ("torch",)
BAD_CALLS: dict[str, BadCall] = {
    "rank": (lambda m, t: m(t((B, S, T))), "must have rank 4", BOTH),
    "rank per stream": (lambda m, t: m(t((B, S, T, F)), stream=0), "must have rank 3", BOTH),
    "streams": (lambda m, t: m(t((B, S + 1, T, F))), f"expected {S} streams, got {S + 1}", BOTH),
    "features": (lambda m, t: m(t((B, S, T, F + 1))), f"expected {F}, got {F + 1}", BOTH),
    "batch": (lambda m, t: m(t((B + 1, S, T, F))), f"batch size {B + 1} but the carried state", BOTH),
    "empty batch": (lambda m, t: m(t((0, S, T, F))), "at least one row", BOTH),
    "integer dtype": (lambda m, t: m(t((B, S, T, F), "int32")), "floating-point tensor, got dtype int32", BOTH),
    "other float dtype": (lambda m, t: m(t((B, S, T, F), "float64")), "expected float32, got float64", TORCH),
    "empty chunk": (lambda m, t: m(t((B, S, 0, F))), "at least one time step", BOTH),
    "stream index": (lambda m, t: m(t((B, T, F)), stream=S), rf"0 <= stream < {S}, got {S}", BOTH),
    "negative stream": (lambda m, t: m(t((B, T, F)), stream=-1), rf"0 <= stream < {S}, got -1", BOTH),
    "stream as a tensor": (lambda m, t: m(t((B, T, F)), stream=t((1,), "int64")), "must be a Python or numpy", BOTH),
    "stream as a bool": (lambda m, t: m(t((B, T, F)), stream=True), "must be a Python or numpy int", BOTH),
    "mask shape": (lambda m, t: m.reset_states(mask=np.ones((B, S + 1), bool)), rf"got \({B}, {S + 1}\)", BOTH),
    "mask dtype": (lambda m, t: m.reset_states(mask=np.ones((B, S), "int64")), "must be boolean", BOTH),
    "reset stream": (lambda m, t: m.reset_states(streams=[7]), "got 7", BOTH),
    "set_states shape": (
        lambda m, t: m.set_states([np.zeros((1, B, S, H + 1), "float32")] * 2),
        rf"got \(1, {B}, {S}, {H + 1}\)",
        BOTH,
    ),
    "set_states count": (lambda m, t: m.set_states([np.zeros((1, B, S, H), "float32")]), "expected 2 state", BOTH),
}


def weight_normed_rnn(form: str) -> Any:
    """A seeded 2-layer ``nn.GRU`` (``batch_first``) under weight norm in ``form``: ``"hook"``
    (``torch.nn.utils.weight_norm``) or ``"parametrization"`` (``torch.nn.utils.parametrizations.weight_norm``),
    on ``weight_hh_l0`` (dim 0), ``weight_ih_l0`` (dim 1) and ``weight_ih_l1`` (dim None)."""
    import warnings

    import torch

    torch.manual_seed(0)
    rnn = torch.nn.GRU(F, H, num_layers=2, batch_first=True)
    norm = torch.nn.utils.weight_norm if form == "hook" else torch.nn.utils.parametrizations.weight_norm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the hook form is deprecated, and still in use
        for name, dim in (("weight_hh_l0", 0), ("weight_ih_l0", 1), ("weight_ih_l1", None)):
            norm(rnn, name, dim=dim)
    with torch.no_grad():  # g away from ||v||, so that a file read as v alone (or g ignored) is off
        for name, param in rnn.named_parameters():
            if name.endswith(("_g", "original0")):
                param.mul_(1.5)
    return rnn


def drop_rows(states: tuple, replicas: int) -> tuple[np.ndarray, ...]:
    """Planted fault: replica 1's rows of the global state replaced by replica 0's (lost at gathering)."""
    out = []
    for state in states:
        a = np.array(state)
        rows = a.shape[1] // replicas
        a[:, rows : 2 * rows] = a[:, :rows]
        out.append(a)
    return tuple(out)
