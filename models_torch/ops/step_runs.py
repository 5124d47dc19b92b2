"""What a streaming step runs for one fixed chunk shape: a cell op, ``run_plain``, or an AOTInductor program.

Both streaming steps (``models_torch.streaming``; ``models_keras.streaming`` on the torch backend)
work out once per input shape a ``Run``, ``run(x, states) -> (y, new states)`` with ``x``
``(B, S, T, F)`` and ``y`` ``(B, S, T, H)``, the states in the layout ``plan_run`` names, and use it
until the shape, the weights or the carried states change. ``paths.path_for`` names the path, and
``RUN_MAKERS`` makes its ``Run``:

- ``Path.CELL_OPS``: one small step on the CPU: for one layer, the cell op (``torch.gru_cell``, ...)
  on states ``(N, H)`` with nothing around it; for more, ``kernels.run_cells`` on states ``(L, N, H)``.
- ``Path.PLAIN``: any other chunk: ``kernels.run_fused`` on states ``(L, N, H)``.
- ``Path.COMPILED`` (asked for): the chunk exported and compiled ahead of time by torch's AOTInductor
  (C++, seconds per shape, a C++ compiler needed; CPU) into one native call on states ``(L, B, S, H)``.
  Its weights are inputs, not constants: it runs whatever weights it is handed.

Example:
    >>> import torch
    >>> rnn = torch.nn.GRU(3, 5, batch_first=True)
    >>> run, fold = plan_run(Stack("gru", [rnn._flat_weights]), (2, 4, 1, 3), (1, 2, 4, 5), "cpu")
    >>> fold
    (8, 5)
    >>> y, (h,) = run(torch.zeros(2, 4, 1, 3), (torch.zeros(8, 5),))
    >>> y.shape, h.shape
    (torch.Size([2, 4, 1, 5]), torch.Size([8, 5]))
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from models_torch.ops.kernels import Stack, run_cells, run_fused, run_plain
from models_torch.ops.paths import Path, path_for
from multistate_core.cells import CELLS

Run = Callable[[Any, tuple], tuple[Any, tuple]]


def plan_run(
    stack: Stack, x_shape: tuple, state_shape: tuple, device: str, programs: dict | None = None
) -> tuple[Run, tuple]:
    """The ``Run`` for chunks of ``x_shape`` from states of ``state_shape`` (each ``(L, B, S, H)``) on
    ``device``, and the shape it takes the states in. ``programs``: compile (the dict caches the
    compiled programs by shape; CPU only, an error elsewhere), or None."""
    batch, streams, steps, _ = x_shape
    path = path_for(stack, batch * streams, steps, device, compiled=programs is not None)
    return RUN_MAKERS[path](stack, tuple(x_shape), tuple(state_shape), programs)


def _cells_run(stack: Stack, x_shape: tuple, state_shape: tuple, programs: dict | None) -> tuple[Run, tuple]:
    (batch, streams, _, features), (layers, _, _, hidden) = x_shape, state_shape
    rows = batch * streams
    if layers == 1:
        return _cell_run(stack, (rows, features), (batch, streams, 1, hidden)), (rows, hidden)
    return _chunk_run(run_cells, stack, x_shape, state_shape)


def _plain_run(stack: Stack, x_shape: tuple, state_shape: tuple, programs: dict | None) -> tuple[Run, tuple]:
    return _chunk_run(run_fused, stack, x_shape, state_shape)


def _cell_run(stack: Stack, x_shape: tuple, y_shape: tuple) -> Run:
    """The cell op, its weights detached (no graph is built; in-place updates of the parameters are seen)."""
    op, weights = stack.cell_op, tuple(w.detach() for w in stack.layers[0])

    def run(x: Any, states: tuple) -> tuple[Any, tuple]:
        new = op(x.detach().reshape(x_shape), states if len(states) > 1 else states[0], *weights)
        new = new if isinstance(new, tuple) else (new,)
        return new[0].clone().view(y_shape), new  # y must not alias a carried state: ``y += skip`` would move it

    return run


def _chunk_run(runner: Callable, stack: Stack, x_shape: tuple, state_shape: tuple) -> tuple[Run, tuple]:
    """``runner`` (``kernels.run_cells`` or ``run_fused``) on the folded chunk, states ``(L, B*S, H)``."""
    (batch, streams, steps, features), (layers, _, _, hidden) = x_shape, state_shape
    rows = batch * streams
    folded, y_shape = (rows, steps, features), (batch, streams, steps, hidden)

    def run(x: Any, states: tuple) -> tuple[Any, tuple]:
        with torch.no_grad():
            out, new = runner(stack, x.reshape(folded), states)
        return out.view(y_shape), new

    return run, (layers, rows, hidden)


def _compiled_run(stack: Stack, x_shape: tuple, state_shape: tuple, programs: dict | None) -> tuple[Run, tuple]:
    assert programs is not None  # path_for names Path.COMPILED only where programs were asked for
    weights = tuple(w.detach() for layer in stack.layers for w in layer)
    dtype = weights[0].dtype
    key = (tuple(x_shape), tuple(state_shape), dtype, stack.kind, len(stack.layers), tuple(w.shape for w in weights))
    if key not in programs:
        programs[key] = _compile(stack, x_shape, state_shape, weights)
    program = programs[key]

    def run(x: Any, states: tuple) -> tuple[Any, tuple]:
        y, *new = program([x.contiguous(), *states, *weights])
        return y, tuple(new)

    return run, state_shape


def _compile(stack: Stack, x_shape: tuple, state_shape: tuple, weights: tuple) -> Callable:
    """The chunk exported and compiled by AOTInductor, as a function of its flat inputs ``[x, *states, *weights]``."""
    (batch, streams, steps, features), (layers, _, _, hidden) = x_shape, state_shape
    rows, per_layer = batch * streams, len(weights) // layers

    class Chunk(torch.nn.Module):
        """``(x, states, weights) -> (y, *new states)`` through ``run_plain``, as ``module(x)`` runs it."""

        def forward(self, x: Any, states: tuple, weights: tuple) -> tuple:
            layered = [weights[k * per_layer : (k + 1) * per_layer] for k in range(layers)]
            folded = tuple(s.reshape(layers, rows, hidden) for s in states)
            out, new = run_plain(dataclasses.replace(stack, layers=layered), x.reshape(rows, steps, features), folded)
            return (out.reshape(batch, streams, steps, hidden), *(s.reshape(state_shape) for s in new))

    dtype = weights[0].dtype  # distinct example tensors: export merges inputs that are one tensor
    example = (
        torch.zeros(x_shape, dtype=dtype),
        tuple(torch.zeros(state_shape, dtype=dtype) for _ in range(CELLS[stack.cell].num_states)),
        tuple(w.clone() for w in weights),
    )
    try:
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="multistate-step-") as folder:
            program = torch.export.export(Chunk(), example)
            package = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "step.pt2"))
            return torch._inductor.aoti_load_package(package).loader.run
    except Exception as error:  # inductor raises many kinds; the cause stays chained
        raise RuntimeError(
            f"streaming_step(compiled=True): AOTInductor could not compile the step (it needs a C++ compiler): {error}"
        ) from error


# Each path a streaming step can take, and the maker of its ``Run``: ``maker(stack, x_shape, state_shape,
# programs) -> (run, state layout)``.
RUN_MAKERS: dict[Path, Callable[[Stack, tuple, tuple, dict | None], tuple[Run, tuple]]] = {
    Path.CELL_OPS: _cells_run,
    Path.PLAIN: _plain_run,
    Path.COMPILED: _compiled_run,
}
