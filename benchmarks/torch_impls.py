"""The PyTorch implementations, each turned into a zero-argument step that the suite times.

- ``multistate``: ``models_torch`` multi-state module on ``(B, S, t, F)``; in an episode job it gets
  the job's ``resets``/``lengths``.
- ``multistate-plain``: the same module called without resets or lengths, the baseline of an episode job.
- ``fused``: its inner ``nn.LSTM``/``GRU``/``RNN`` on the already-folded ``(B*S, t, F)`` with the
  folded state carried: the same work without the reshapes and bookkeeping, the lower bound.
- ``loop``: what a PyTorch user writes by hand, a list of states and one call of the same module per stream.
- ``step-loop``: what SB3 / CleanRL fall back to for episode starts: the inner module called once per
  time step on the folded batch, the state multiplied by ``(1 - done)`` before each step.
- ``gemm``: one matmul of the per-step shape ``(B*S, F+H) @ (F+H, G*H)``, the throughput ceiling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import models_torch
from benchmarks import cases
from benchmarks.cases import Case, Shape
from harness.porting import torch_class
from multistate_core.cells import CELLS, cell_of_torch

SEED = 0

Step = Callable[[], object]
State = tuple[torch.Tensor, ...]


def device() -> str:
    """``"gpu"`` when PyTorch sees CUDA, else ``"cpu"``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def skip_reason(case: Case) -> str | None:
    """Why ``case`` cannot run here, or None: every torch case can."""
    return None


def _torch_device() -> torch.device:
    return torch.device("cuda" if device() == "gpu" else "cpu")


def make_module(cell: str, shape: Shape, on: torch.device | str = "cpu") -> models_torch.MultiStateBase:
    """A seeded multi-state module of ``cell`` for ``shape``; the Keras implementations copy its weights."""
    torch.manual_seed(SEED)
    return torch_class(cell)(shape.F, shape.H, shape.S, device=on)


def _as_tuple(state: torch.Tensor | State) -> State:
    return state if isinstance(state, tuple) else (state,)


def _call(rnn: nn.RNNBase, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """One call of a raw torch RNN with the state as a tuple (``(h, c)`` for an LSTM, ``(h,)`` otherwise)."""
    out, new = rnn(x, None if state is None else state if len(state) > 1 else state[0])
    return out, _as_tuple(new)


def _detached(state: State) -> State:
    return tuple(s.detach() for s in state)


class Fused:
    """The raw module on the folded batch ``(B*S, t, F)``, carrying the folded state (detached) between calls."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        self.rnn = rnn
        self.state: State | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out, state = _call(self.rnn, x, self.state)
        self.state = _detached(state)
        return out


class PerStreamLoop:
    """The hand-written per-stream loop: one state per stream, one call of the shared module per stream."""

    def __init__(self, rnn: nn.RNNBase, num_streams: int) -> None:
        self.rnn = rnn
        self.states: list[State | None] = [None] * num_streams

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for s, state in enumerate(self.states):
            out, new = _call(self.rnn, x[:, s], state)
            self.states[s] = _detached(new)
            outs.append(out)
        return torch.stack(outs, dim=1)


class StepLoop:
    """The per-step loop of SB3 / CleanRL on the folded batch ``(N, T, F)``, carrying the folded state.

    Before step ``t`` the state is multiplied by ``keep[t]`` (``1 - done``: 0 where a stream resets);
    where ``valid[t]`` is 0 (past a stream's length) the state is kept and the output is zero. Both
    masks are ``(T, N)`` floats, made once outside the timed call; None: no resets / full lengths.
    """

    def __init__(self, rnn: nn.RNNBase, keep: torch.Tensor | None, valid: torch.Tensor | None) -> None:
        self.rnn = rnn
        self.keep = keep
        self.valid = valid
        self.state_count = len(CELLS[cell_of_torch(type(rnn).__name__)].state_names)
        self.state: State | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(self.rnn.num_layers, x.shape[0], self.rnn.hidden_size)
        state = self.state or (zeros,) * self.state_count
        outs = []
        for t in range(x.shape[1]):
            if self.keep is not None:
                state = tuple(s * self.keep[t, None, :, None] for s in state)
            out, new = _call(self.rnn, x[:, t : t + 1], state)
            if self.valid is not None:
                valid = self.valid[t, None, :, None]
                new = tuple(valid * n + (1 - valid) * s for n, s in zip(new, state))
                out = out * self.valid[t, :, None, None]
            state = new
            outs.append(out)
        self.state = _detached(state)
        return torch.cat(outs, dim=1)


def _step_masks(case: Case, on: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The episode job's ``keep`` and ``valid`` masks for ``StepLoop``, folded to ``(T, B*S)`` floats."""
    resets, lengths = case.job.episodes(case.shape)
    steps = case.job.steps(case.shape)
    keep = valid = None
    if resets is not None:
        keep = (~torch.as_tensor(resets, device=on)).reshape(-1, steps).T.float().contiguous()
    if lengths is not None:
        folded = torch.as_tensor(lengths, device=on).reshape(-1)
        valid = (torch.arange(steps, device=on)[:, None] < folded[None, :]).float()
    return keep, valid


def _runner(case: Case, module: models_torch.MultiStateBase, on: torch.device) -> Callable[[torch.Tensor], object]:
    """The callable of ``case``'s implementation; it takes the folded input where ``_folded`` says so."""
    impl = case.impl
    if impl == cases.TORCH_MULTISTATE and case.job.episodic:
        resets, lengths = case.job.episodes(case.shape)
        r = None if resets is None else torch.as_tensor(resets, device=on)
        n = None if lengths is None else torch.as_tensor(lengths, device=on)
        return lambda x: module(x, resets=r, lengths=n)
    if impl in (cases.TORCH_MULTISTATE, cases.TORCH_MULTISTATE_PLAIN):
        return module
    if impl == cases.TORCH_FUSED:
        return Fused(module.rnn)
    if impl == cases.TORCH_LOOP:
        return PerStreamLoop(module.rnn, module.num_streams)
    if impl == cases.TORCH_STEP_LOOP:
        return StepLoop(module.rnn, *_step_masks(case, on))
    raise ValueError(f"no torch runner for {impl.id}")


def _folded(impl: cases.Impl) -> bool:
    """Whether ``impl`` takes the already-folded ``(B*S, t, F)`` input."""
    return impl in (cases.TORCH_FUSED, cases.TORCH_STEP_LOOP)


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
    shape, width, gates = case.shape, case.shape.F + case.shape.H, CELLS[case.cell].gates
    a = torch.randn(shape.B * shape.S, width, device=on)
    w = torch.randn(width, gates * shape.H, device=on)
    out = torch.empty(shape.B * shape.S, gates * shape.H, device=on)
    return lambda: torch.mm(a, w, out=out)


def _recurrent_step(case: Case, on: torch.device) -> Step:
    shape = case.shape
    module = make_module(case.cell, shape, on)
    run = _runner(case, module, on)
    steps = case.job.steps(shape)
    x = torch.randn(shape.B, shape.S, steps, shape.F, device=on)
    if _folded(case.impl):
        x = x.reshape(shape.B * shape.S, steps, shape.F)
    if not case.job.train:

        def forward() -> object:
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
    """The timed step of a torch case, and how it runs (for ``extra_info``).

    Inference runs under ``no_grad``; training is autograd and SGD.
    """
    on = _torch_device()
    if case.impl == cases.TORCH_GEMM:
        return _synced(_gemm_step(case, on), on), {"path": "torch.mm"}
    return _synced(_recurrent_step(case, on), on), {"path": "autograd + SGD" if case.job.train else "no_grad"}
