"""A streaming step for the torch multi-state modules: one chunk on the carried state, without the per-call cost.

``module(x)`` serves every use (``stream=``, resets, lengths, stateless calls, autograd) and
pays for it on each call: ``nn.Module``'s dispatch, argument handling and the bookkeeping of
those options cost about as much as a one-frame step of a small band-split model's ATen work
(``docs/measurements.md``, "one frame"). For frame-by-frame inference loops,
``module.streaming_step()`` returns ``step(x) -> y``: the same numbers and the same carried
state as ``module(x)`` under ``torch.no_grad()``, through the ops that ``module(x)`` calls
(``models_torch.ops.step_runs``, on the path ``ops.paths.path_for`` names). Everything that only
depends on the input's shape and dtype, the weights and the carried state's identity is worked out
once (a "plan") and reused while they stay the same: a one-layer one-frame step on the CPU is then
the cell op and three views. The weights are those ``module(x)`` reads (``inner_rnn.weights_of``): a
Parameter replaced or given new storage (``param.data = ...``) makes a new plan; with hooks or
parametrizations on the inner RNN the weights are read anew on every call.

``compiled=True`` (CPU only) compiles the step ahead of time with torch's AOTInductor (C++, a
few seconds per input shape; needs a C++ compiler): the whole chunk then runs in one call of
native code, faster again for one frame (``docs/measurements.md``).
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
    >>> fast = module.streaming_step(compiled=True)  # compiles on its first call  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

import torch

from models_torch.inner_rnn import plain_weights, stack_of
from models_torch.ops.step_runs import Run, plan_run

if TYPE_CHECKING:
    from collections.abc import Iterable

    from models_torch.multistate import MultiStateBase

State = tuple[torch.Tensor, ...]


@dataclasses.dataclass(slots=True)
class _Plan:
    """How to run one chunk, worked out for one input shape and dtype, one set of weights and mode of the
    inner RNN, and the carried states this step stored last (``fits`` says whether they still hold)."""

    shape: torch.Size
    dtype: torch.dtype
    # Where each of the inner RNN's registered Parameters keeps its numbers (a Parameter replaced, given new
    # storage by ``param.data = ...``, or taken out by a parametrization, pruning or weight_norm changes it);
    # None: hooks or parametrizations decide the weights, read anew on each call.
    pointers: list[int] | None
    training: bool
    carried: State | None  # the module's carried states as this step left them (or found them)
    folded: State  # the same states as ``run`` takes them
    state_shape: torch.Size  # (L, B, S, H)
    run: Run

    def fits(self, x: torch.Tensor, rnn: torch.nn.RNNBase, carried: State | None) -> bool:
        return (
            x.shape == self.shape
            and x.dtype is self.dtype
            and not (rnn._forward_pre_hooks or rnn._forward_hooks or rnn._backward_hooks or rnn._backward_pre_hooks)
            and list(map(_DATA_PTR, cast("Iterable[torch.Tensor]", rnn._parameters.values()))) == self.pointers
            and rnn.training is self.training
            and carried is self.carried
        )


_DATA_PTR = torch.Tensor.data_ptr


class StreamingStep:
    """``step(x) -> y`` for one multi-state module (see the module docstring)."""

    def __init__(self, module: MultiStateBase, compiled: bool = False) -> None:
        self.module = module
        self.plan: _Plan | None = None
        self.programs: dict | None = {} if compiled else None  # the compiled programs, by shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module, plan = self.module, self.plan
        rnn = cast("torch.nn.RNNBase", module._modules["rnn"])  # without nn.Module.__getattr__'s cost per call
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
        carried = tuple(s.detach() for s in module._carried or module._zeros(x.shape[0]))
        with torch.no_grad():  # hooks and parametrizations compute the weights: no graph
            stack = stack_of(rnn, x, tuple(s.flatten(1, 2) for s in carried))
        run, fold = plan_run(stack, x.shape, carried[0].shape, x.device.type, self.programs)
        return _Plan(
            shape=x.shape,
            dtype=x.dtype,
            pointers=None if plain_weights(rnn) is None else list(map(_DATA_PTR, rnn._parameters.values())),
            training=rnn.training,
            carried=module._carried,
            folded=tuple(s.reshape(fold) for s in carried),
            state_shape=carried[0].shape,
            run=run,
        )
