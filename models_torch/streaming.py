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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from harness.spec import kernels
from models_torch.segments import stack_of

if TYPE_CHECKING:
    from models_torch.multistate import MultiStateBase

State = tuple[torch.Tensor, ...]


@dataclasses.dataclass(slots=True)
class _Plan:
    """What a call needs besides ``x``, worked out for one input shape and dtype, one weight list and
    mode of the inner RNN, and the carried states this step stored last (``fits`` says whether they hold)."""

    shape: torch.Size
    dtype: torch.dtype
    weights: tuple  # the inner RNN's weight list (torch updates the list in place when one is replaced) ...
    weight_ids: list[int]  # ... and their ids, unique while the plan holds them
    training: bool
    carried: State | None  # the module's carried states as this step left them (or found them)
    folded: State  # the same states as the kernel takes them: (N, H) for a cell op, else (L, N, H)
    views: tuple  # x as the kernel takes it, the carried states' shape (L, B, S, H), y's shape (B, S, T, H)
    stack: kernels.Stack
    cell_op: Callable | None  # one layer, one step, small, on the CPU: the cell op (else run_plain)
    cell_weights: tuple  # its weights, detached: no graph is built, and in-place updates are seen

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

    def __init__(self, module: MultiStateBase) -> None:
        self.module = module
        self.plan: _Plan | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module, plan = self.module, self.plan
        rnn = module._modules["rnn"]  # without nn.Module.__getattr__'s cost per call
        if plan is None or not plan.fits(x, rnn, module._carried):
            plan = self.plan = self._prepare(x)
        elif module.check_finite:
            module._check_finite(x)
        x_view, state_shape, y_shape = plan.views
        if plan.cell_op is not None:
            hx = plan.folded if len(plan.folded) > 1 else plan.folded[0]
            new = plan.cell_op(x.detach().reshape(x_view), hx, *plan.cell_weights)
            new = new if isinstance(new, tuple) else (new,)
            out = new[0].clone()  # y must not alias the carried state: ``y += skip`` would change it
        else:
            with torch.no_grad():
                out, new = kernels.run_plain(plan.stack, x.reshape(x_view), plan.folded, torch)
        carried = tuple(s.view(state_shape) for s in new)
        module.__dict__["_carried"] = carried  # as module._store, without its checks: dtype and graph hold
        plan.carried, plan.folded = carried, new
        return out.view(y_shape)

    def _prepare(self, x: torch.Tensor) -> _Plan:
        """Check ``x`` as ``module(x)`` does and work out the plan for it (nothing moves on a refusal)."""
        module, rnn = self.module, self.module.rnn
        module._check_x(x, None, module.batch_size)
        if rnn.training and rnn.dropout:
            raise ValueError("streaming_step runs inference: call module.eval() first (dropout is on in training mode)")
        batch, streams, steps, features = x.shape
        layers, hidden, rows = rnn.num_layers, rnn.hidden_size, batch * streams
        carried = module._carried or module._zeros(batch)
        stack = stack_of(rnn)
        cell = layers == 1 and kernels.by_cells(stack, rows, steps, x.device.type)
        folded = tuple(s.detach().reshape((rows, hidden) if cell else (layers, rows, hidden)) for s in carried)
        return _Plan(
            shape=x.shape,
            dtype=x.dtype,
            weights=tuple(rnn._flat_weights),
            weight_ids=list(map(id, rnn._flat_weights)),
            training=rnn.training,
            carried=module._carried,
            folded=folded,
            views=(
                (rows, features) if cell else (rows, steps, features),
                carried[0].shape,
                (batch, streams, steps, hidden),
            ),
            stack=stack,
            cell_op=getattr(torch, f"{stack.kind}_cell") if cell else None,
            cell_weights=tuple(w.detach() for w in stack.layers[0]) if cell else (),
        )

