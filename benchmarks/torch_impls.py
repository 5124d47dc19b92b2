"""The PyTorch implementations, each turned into a zero-argument step that the suite times.

- ``multistate``: ``models_torch`` multi-state module on ``(B, S, t, F)``.
- ``fused``: its inner ``nn.LSTM``/``GRU``/``RNN`` on the already-folded ``(B*S, t, F)`` with the
  folded state carried: the same work without the reshapes and bookkeeping, the lower bound.
- ``loop``: what a PyTorch user writes by hand, a list of states and one call of the same module per stream.
- ``gemm``: one matmul of the per-step shape ``(B*S, F+H) @ (F+H, G*H)``, the throughput ceiling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import models_torch
from benchmarks.cases import GATES, Case, Shape

MODULES = {"lstm": models_torch.MultiStateLSTM, "gru": models_torch.MultiStateGRU, "rnn": models_torch.MultiStateRNN}
SEED = 0

Step = Callable[[], object]


def device() -> str:
    """``"gpu"`` when PyTorch sees CUDA, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def _torch_device() -> torch.device:
    return torch.device("cuda" if device() == "gpu" else "cpu")


def make_module(cell: str, shape: Shape, on: torch.device | str = "cpu") -> models_torch.MultiStateBase:
    """A seeded multi-state module of ``cell`` for ``shape``; the Keras implementations copy its weights."""
    torch.manual_seed(SEED)
    return MODULES[cell](shape.F, shape.H, shape.S, device=on)


def _detached(state: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class Fused:
    """The raw module on the folded batch ``(B*S, t, F)``, carrying the folded state (detached) between calls."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        self.rnn = rnn
        self.state = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x, self.state)
        self.state = _detached(state)
        return out


class PerStreamLoop:
    """The hand-written per-stream loop: one state per stream, one call of the shared module per stream."""

    def __init__(self, rnn: nn.RNNBase, num_streams: int) -> None:
        self.rnn = rnn
        self.states = [None] * num_streams

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for s, state in enumerate(self.states):
            out, new = self.rnn(x[:, s], state)
            self.states[s] = _detached(new)
            outs.append(out)
        return torch.stack(outs, dim=1)


def _runner(variant: str, module: models_torch.MultiStateBase) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """The callable for ``variant`` and whether it takes the folded input."""
    runners = {
        "multistate": (module, False),
        "fused": (Fused(module.rnn), True),
        "loop": (PerStreamLoop(module.rnn, module.num_streams), False),
    }
    return runners[variant]


def _synced(fn: Step, on: torch.device) -> Step:
    """``fn`` followed by a CUDA synchronize on GPU, so the timer sees the whole call."""
    if on.type != "cuda":
        return fn

    def step() -> object:
        result = fn()
        torch.cuda.synchronize()
        return result

    return step


def _gemm_step(case: Case, on: torch.device) -> Step:
    shape, width = case.shape, case.shape.F + case.shape.H
    a = torch.randn(shape.B * shape.S, width, device=on)
    w = torch.randn(width, GATES[case.cell] * shape.H, device=on)
    out = torch.empty(shape.B * shape.S, GATES[case.cell] * shape.H, device=on)
    return lambda: torch.mm(a, w, out=out)


def _recurrent_step(case: Case, on: torch.device) -> Step:
    shape = case.shape
    module = make_module(case.cell, shape, on)
    run, folded = _runner(case.variant, module)
    steps = case.job.steps(shape)
    x = torch.randn(shape.B, shape.S, steps, shape.F, device=on)
    if folded:
        x = x.reshape(shape.B * shape.S, steps, shape.F)
    if not case.job.train:

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return run(x)

        return forward

    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
    target = torch.zeros(x.shape[:-1] + (shape.H,), device=on)

    def train() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(run(x), target)
        loss.backward()
        optimizer.step()
        return loss

    return train


def build_step(case: Case) -> tuple[Step, dict[str, object]]:
    """The timed step of a ``torch-*`` case, and how it runs (for ``extra_info``).

    Inference runs under ``no_grad``; training is autograd and SGD.
    """
    on = _torch_device()
    if case.variant == "gemm":
        return _synced(_gemm_step(case, on), on), {"path": "torch.mm"}
    return _synced(_recurrent_step(case, on), on), {"path": "autograd + SGD" if case.job.train else "no_grad"}
