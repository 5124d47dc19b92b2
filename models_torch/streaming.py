"""A streaming step for the torch multi-state modules: one chunk on the carried state, without the per-call cost.

``module(x)`` serves every use (``stream=``, resets, lengths, stateless calls, autograd) and
pays for it on each call: ``nn.Module``'s dispatch, argument handling and the bookkeeping of
those options cost ~25 µs, more than a one-frame step of a band-split model (a GRU over 33
bands, hidden 16: ~20 µs of ATen work). For frame-by-frame inference loops,
``module.streaming_step()`` returns ``step(x) -> y``: the same numbers and the same carried
state as ``module(x)`` under ``torch.no_grad()``, through the ops that ``module(x)`` calls
(``harness.spec.kernels``). Everything that only depends on the input's shape and dtype, the
weights and the carried state's identity is worked out once (a "plan") and reused while they
stay the same: a one-layer one-frame step on the CPU is then the cell op and three views.

``compiled=True`` (CPU only) compiles the step ahead of time with torch's AOTInductor (C++, a
few seconds per input shape; needs a C++ compiler): the whole chunk then runs in one call of
native code, ~2-3x faster again for one frame of a band-split model, faster than onnxruntime.
The weights are inputs of the compiled step, not constants: it always runs the current ones.

Inference only: no autograd, no ``stream``, ``resets``, ``lengths`` or ``initial_state``, and
dropout in training mode is refused. ``x`` is checked as ``module(x)`` checks it, before any
state moves. ``models_keras.streaming`` is the Keras twin.

Example:
    >>> import torch
    >>> from models_torch import MultiStateGRU
    >>> module = MultiStateGRU(16, 16, num_streams=33).eval()
    >>> step = module.streaming_step()
    >>> y = step(torch.zeros(1, 33, 1, 16))               # one frame, state carried as by module(x)
    >>> y.shape, module.get_states()[0].shape
    (torch.Size([1, 33, 1, 16]), torch.Size([1, 1, 33, 16]))
    >>> fast = module.streaming_step(compiled=True)        # doctest: +SKIP (compiles: seconds)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from harness.spec import kernels
from models_torch.segments import stack_of

if TYPE_CHECKING:
    from models_torch.multistate import MultiStateBase

State = tuple[torch.Tensor, ...]
# x and the folded states in, y (B, S, T, H) and the new folded states out
Run = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


@dataclasses.dataclass(slots=True)
class _Plan:
    """How to run one chunk, worked out for one input shape and dtype, one weight list and mode of the
    inner RNN, and the carried states this step stored last (``fits`` says whether they still hold)."""

    shape: torch.Size
    dtype: torch.dtype
    weights: tuple  # the inner RNN's weight list (torch updates the list in place when one is replaced) ...
    weight_ids: list[int]  # ... and their ids, unique while the plan holds them
    training: bool
    carried: State | None  # the module's carried states as this step left them (or found them)
    folded: State  # the same states as ``run`` takes them
    state_shape: torch.Size  # (L, B, S, H)
    run: Run

    def fits(self, x: torch.Tensor, rnn: torch.nn.RNNBase, carried: State | None) -> bool:
        return (
            x.shape == self.shape
            and x.dtype is self.dtype
            and list(map(id, rnn._flat_weights)) == self.weight_ids
            and rnn.training is self.training
            and carried is self.carried
        )


class StreamingStep:
    """``step(x) -> y`` for one multi-state module (see the module docstring)."""

    def __init__(self, module: MultiStateBase, compiled: bool = False) -> None:
        self.module, self.compiled = module, compiled
        self.plan: _Plan | None = None
        self.programs: dict[tuple, Callable] = {}  # compiled steps by input and weight shapes and dtypes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module, plan = self.module, self.plan
        rnn = module._modules["rnn"]  # without nn.Module.__getattr__'s cost per call
        if plan is None or not plan.fits(x, rnn, module._carried):
            plan = self.plan = self._prepare(x)
        elif module.check_finite:
            module._check_finite(x)
        y, new = plan.run(x, plan.folded)
        carried = tuple(s.view(plan.state_shape) for s in new)
        module.__dict__["_carried"] = carried  # as module._store, without its checks: dtype and graph hold
        plan.carried, plan.folded = carried, new
        return y

    def _prepare(self, x: torch.Tensor) -> _Plan:
        """Check ``x`` as ``module(x)`` does and work out the plan for it (nothing moves on a refusal)."""
        module, rnn = self.module, self.module.rnn
        module._check_x(x, None, module.batch_size)
        if rnn.training and rnn.dropout:
            raise ValueError("streaming_step runs inference: call module.eval() first (dropout is on in training mode)")
        if self.compiled and x.device.type != "cpu":
            raise ValueError(f"streaming_step(compiled=True) runs on the CPU, not {x.device}: on a GPU use GraphStep")
        batch, streams, steps, features = x.shape
        layers, hidden, rows = rnn.num_layers, rnn.hidden_size, batch * streams
        carried = tuple(s.detach() for s in module._carried or module._zeros(batch))
        stack, y_shape = stack_of(rnn), (batch, streams, steps, hidden)
        if self.compiled:
            run, fold = self._compiled_run(stack, x, carried), carried[0].shape
        elif layers == 1 and kernels.by_cells(stack, rows, steps, x.device.type):
            run, fold = _cell_run(stack, (rows, features), y_shape), (rows, hidden)
        else:
            run, fold = _plain_run(stack, (rows, steps, features), y_shape), (layers, rows, hidden)
        return _Plan(
            shape=x.shape,
            dtype=x.dtype,
            weights=tuple(rnn._flat_weights),
            weight_ids=list(map(id, rnn._flat_weights)),
            training=rnn.training,
            carried=module._carried,
            folded=tuple(s.reshape(fold) for s in carried),
            state_shape=carried[0].shape,
            run=run,
        )

    def _compiled_run(self, stack: kernels.Stack, x: torch.Tensor, states: State) -> Run:
        weights = tuple(w.detach() for layer in stack.layers for w in layer)
        key = (x.shape, x.dtype, stack.kind, len(stack.layers), tuple((w.shape, w.dtype) for w in weights))
        if key not in self.programs:
            example = (x.clone(), tuple(s.clone() for s in states), tuple(w.clone() for w in weights))
            self.programs[key] = _compile(_Chunk(stack, x.shape, states[0].shape), example)
        program = self.programs[key]

        def run(x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
            y, *new = program([x.contiguous(), *states, *weights])
            return y, tuple(new)

        return run


def _cell_run(stack: kernels.Stack, x_shape: tuple, y_shape: tuple) -> Run:
    """One layer, one small step on the CPU: the cell op on the states ``(N, H)``, its weights detached
    (no graph is built; in-place updates of the parameters are seen)."""
    op, weights = getattr(torch, f"{stack.kind}_cell"), tuple(w.detach() for w in stack.layers[0])

    def run(x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        new = op(x.detach().reshape(x_shape), states if len(states) > 1 else states[0], *weights)
        new = new if isinstance(new, tuple) else (new,)
        return new[0].clone().view(y_shape), new  # y must not alias the carried state: ``y += skip`` would move it

    return run


def _plain_run(stack: kernels.Stack, x_shape: tuple, y_shape: tuple) -> Run:
    """Any chunk: ``harness.spec.kernels.run_plain`` on the states ``(L, N, H)``, as ``module(x)`` runs it."""

    def run(x: torch.Tensor, states: State) -> tuple[torch.Tensor, State]:
        with torch.no_grad():
            out, new = kernels.run_plain(stack, x.reshape(x_shape), states, torch)
        return out.view(y_shape), new

    return run


class _Chunk(torch.nn.Module):
    """One chunk as a pure function for AOTInductor: ``(x, states, weights) -> (y, *new states)``, states
    ``(L, B, S, H)``, through ``run_plain`` as ``module(x)`` runs it. The weights are inputs, not constants."""

    def __init__(self, stack: kernels.Stack, x_shape: torch.Size, state_shape: torch.Size) -> None:
        super().__init__()
        self.stack, self.state_shape = stack, state_shape
        (batch, streams, self.steps, self.features), (layers, _, _, self.hidden) = x_shape, state_shape
        self.rows, self.layers = batch * streams, layers

    def forward(self, x: torch.Tensor, states: State, weights: tuple) -> tuple[torch.Tensor, ...]:
        per_layer = len(weights) // self.layers
        stack = dataclasses.replace(
            self.stack, layers=[weights[k * per_layer : (k + 1) * per_layer] for k in range(self.layers)]
        )
        folded = tuple(s.reshape(self.layers, self.rows, self.hidden) for s in states)
        out, new = kernels.run_plain(stack, x.reshape(self.rows, self.steps, self.features), folded, torch)
        y = out.reshape(*self.state_shape[1:3], self.steps, self.hidden)
        return (y, *(s.reshape(self.state_shape) for s in new))


def _compile(chunk: torch.nn.Module, example: tuple) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """``chunk`` exported and compiled ahead of time by AOTInductor, as a function of its flat inputs.
    ``example``'s tensors must be distinct: export merges inputs that are one tensor."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    try:
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="multistate-step-") as folder:
            program = torch.export.export(chunk, example)
            package = aoti_compile_and_package(program, package_path=os.path.join(folder, "step.pt2"))
            return aoti_load_package(package).loader.run
    except Exception as error:  # inductor raises many kinds; the cause stays chained
        raise RuntimeError(
            f"streaming_step(compiled=True): AOTInductor could not compile the step (it needs a C++ compiler): {error}"
        ) from error
