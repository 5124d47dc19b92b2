"""Every way torch lets a user change a weight, against ``module(x)`` and ``module.streaming_step()`` (issue 23).

Each row of ``CHANGERS`` changes the weights of a multi-state module's inner ``nn.LSTM``/``GRU``/``RNN``
as a user would: in place, by swapping a Parameter's storage, by loading, by an optimizer, by a dtype
round trip, or by a parametrization, ``weight_norm``/``spectral_norm`` (both forms), pruning or a forward
pre-hook that decide the weights each call. The reference is the plain inner RNN called per stream, on
that stream's slice from that stream's state (``nn.Module.__call__``: torch applies its hooks and
parametrizations itself). Outputs, carried states and, for ``module(x)``, the gradients of every
parameter must agree, over two training iterations. The planted faults at the end reintroduce the old
stale reads and must be caught. Modules run in eval mode: ``spectral_norm`` moves its power iteration
on each read in training mode, so a per-stream reference (one read per stream) could not agree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

from harness.porting import torch_class
from models_torch import segments, streaming
from tests.helpers import CELLS, B, F, H, S

DTYPE = torch.float64
TOL = 1e-12
SHAPES = {"1 layer, 1 frame": (1, 1), "2 layers, 3 frames": (2, 3)}  # the cell op's path; the fused op's path


class Triple(nn.Module):
    """A parametrization: the weight the RNN runs is three times its stored original."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 3 * weight


def _random_like(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.randn_like(value) for name, value in module.state_dict().items()}


def _sgd_step(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    module.zero_grad()


def _old_form(register: Callable, rnn: nn.Module, name: str) -> None:
    """The deprecated hook forms warn on registration."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        register(rnn, name)


def _max_norm(name: str, bound: float, with_kwargs: bool = False) -> Callable[[nn.Module], object]:
    """A user's forward pre-hook keeping a weight within ``bound`` (in place, and only when it is not)."""

    def hook(rnn: nn.Module, *args: object) -> None:
        weight = getattr(rnn, name)
        if weight.abs().max() > bound:
            with torch.no_grad():
                weight.clamp_(-bound, bound)

    return lambda m: m.rnn.register_forward_pre_hook(hook, with_kwargs=with_kwargs)


def _then(*changes: Callable[[nn.Module], object]) -> Callable[[nn.Module], None]:
    def change(module: nn.Module) -> None:
        for one in changes:
            one(module)

    return change


def _in_place(tensor: Callable[[nn.Module], torch.Tensor], factor: float = 1.5) -> Callable[[nn.Module], None]:
    """Scale a parametrization's or hook's original in place (registering one alone may keep the weight)."""

    def change(module: nn.Module) -> None:
        with torch.no_grad():
            tensor(module.rnn).mul_(factor)

    return change


CHANGERS: dict[str, Callable[[nn.Module], object]] = {
    ".data =": lambda m: setattr(m.rnn.weight_hh_l0, "data", torch.randn_like(m.rnn.weight_hh_l0)),
    "copy_ under no_grad": lambda m: torch.no_grad()(m.rnn.weight_hh_l0.copy_)(torch.randn_like(m.rnn.weight_hh_l0)),
    "load_state_dict": lambda m: m.load_state_dict(_random_like(m)),
    "load_state_dict(assign=True)": lambda m: m.load_state_dict(_random_like(m), assign=True),
    "vector_to_parameters": lambda m: nn.utils.vector_to_parameters(
        torch.randn(sum(p.numel() for p in m.parameters()), dtype=DTYPE), m.parameters()
    ),
    "optimizer step": _sgd_step,
    ".to(float32) and back": lambda m: m.to(torch.float32).to(DTYPE),
    "parametrization (x3)": lambda m: parametrize.register_parametrization(m.rnn, "weight_hh_l0", Triple()),
    "weight_norm": _then(
        lambda m: parametrizations.weight_norm(m.rnn, "weight_hh_l0"),
        _in_place(lambda rnn: rnn.parametrizations.weight_hh_l0.original0),
    ),
    "weight_norm (hook form)": _then(
        lambda m: _old_form(nn.utils.weight_norm, m.rnn, "weight_hh_l0"), _in_place(lambda rnn: rnn.weight_hh_l0_g)
    ),
    "spectral_norm": lambda m: parametrizations.spectral_norm(m.rnn, "weight_hh_l0"),
    "spectral_norm (hook form)": lambda m: _old_form(nn.utils.spectral_norm, m.rnn, "weight_hh_l0"),
    "pruning": _then(
        lambda m: prune.l1_unstructured(m.rnn, "weight_hh_l0", amount=0.5),
        _in_place(lambda rnn: rnn.weight_hh_l0_orig),
    ),
    "forward pre-hook": _max_norm("weight_hh_l0", 0.1),
    "forward pre-hook (with kwargs)": _max_norm("weight_ih_l0", 0.2, with_kwargs=True),
}


def _module(cell: str, layers: int, frames: int) -> tuple[nn.Module, torch.Tensor]:
    """A float64 module in eval mode with a carried state, and the chunk to run next."""
    torch.manual_seed(0)
    module = torch_class(cell)(F, H, S, num_layers=layers, dtype=DTYPE).eval()
    with torch.no_grad():
        module(torch.randn(B, S, 2, F, dtype=DTYPE))
    return module, torch.randn(B, S, frames, F, dtype=DTYPE)


def per_stream(rnn: nn.Module, x: torch.Tensor, states: tuple) -> tuple[torch.Tensor, tuple]:
    """The plain inner RNN called on each stream's slice from that stream's state: ``(B, S, T, H)`` and
    the new states ``(L, B, S, H)``."""
    outputs, finals = [], []
    for s in range(x.shape[1]):
        hx = tuple(state[:, :, s].contiguous() for state in states)
        out, new = rnn(x[:, s], hx if len(hx) > 1 else hx[0])
        outputs.append(out)
        finals.append(new if isinstance(new, tuple) else (new,))
    return torch.stack(outputs, 1), tuple(torch.stack(parts, 2) for parts in zip(*finals))


def _assert_close(what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    error = (got - want).abs().max().item()
    assert error <= TOL, f"{what} differs from the plain inner RNN by {error:.3g}"


def _grads(module: nn.Module, y: torch.Tensor) -> list[torch.Tensor]:
    params = list(module.parameters())
    grads = torch.autograd.grad(y.square().sum(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def check_module_call(module: nn.Module, x: torch.Tensor) -> None:
    """``module(x)`` against the per-stream reference: output, states, every gradient; then an SGD step
    on those gradients, twice (a weight graph kept from one call breaks the second backward)."""
    for _ in range(2):
        before = module.get_states()
        y = module(x)
        want_y, want_states = per_stream(module.rnn, x, before)
        _assert_close("output", y, want_y)
        for name, got, want in zip(module.state_names, module.get_states(), want_states, strict=True):
            _assert_close(f"state {name}", got, want)
        grads, want_grads = _grads(module, y), _grads(module, want_y)
        for (name, _), got, want in zip(module.named_parameters(), grads, want_grads, strict=True):
            _assert_close(f"gradient of {name}", got, want)
        with torch.no_grad():
            for p, g in zip(module.parameters(), grads):
                p -= 0.1 * g


def check_step(module: nn.Module, x: torch.Tensor, change: Callable[[nn.Module], object]) -> None:
    """A step planned before ``change`` runs what the per-stream reference runs after it, twice: the second
    time after every parameter moved in place (an optimizer step between frames)."""
    step = module.streaming_step()
    with torch.no_grad():
        step(x)
    change(module)
    with torch.no_grad():
        for _ in range(2):
            before = module.get_states()
            y = step(x)
            want_y, want_states = per_stream(module.rnn, x, before)
            _assert_close("output", y, want_y)
            for name, got, want in zip(module.state_names, module.get_states(), want_states, strict=True):
                _assert_close(f"state {name}", got, want)
            for p in module.parameters():
                p.mul_(1.1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("change", CHANGERS)
@pytest.mark.parametrize("cell", CELLS)
def test_module_call_runs_the_weights_torch_would_run(cell, change, shape):
    module, x = _module(cell, *SHAPES[shape])
    CHANGERS[change](module)
    check_module_call(module, x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("change", CHANGERS)
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_step_runs_the_weights_torch_would_run(cell, change, shape):
    module, x = _module(cell, *SHAPES[shape])
    check_step(module, x, CHANGERS[change])


def test_a_step_planned_before_a_dtype_change_refuses_the_old_dtype():
    """After ``module.float()`` a float64 frame is refused by the step as by ``module(x)``, not run on old weights."""
    module, x = _module("gru", 1, 1)
    step = module.streaming_step()
    with torch.no_grad():
        step(x)
        module.float()
        for run in (module, step):
            with pytest.raises(ValueError, match="expected float32, got float64"):
                run(x)


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (lambda rnn: rnn.register_forward_hook(lambda *args: None), "forward or backward hooks"),
        (lambda rnn: rnn.register_full_backward_hook(lambda *args: None), "forward or backward hooks"),
        (lambda rnn: rnn.register_forward_pre_hook(lambda rnn, args: args), "returned new inputs"),
    ],
)
@pytest.mark.parametrize("run", ["module", "streaming_step"])
def test_hooks_that_cannot_act_are_refused_before_any_state_moves(hook, message, run):
    """Hooks on ``module.rnn`` that ``rnn(...)`` would fire but the module's ops cannot are refused, not ignored."""
    module, x = _module("lstm", 1, 1)
    call = module.streaming_step() if run == "streaming_step" else module
    with torch.no_grad():
        call(x)
        hook(module.rnn)
        before = module.get_states()
        with pytest.raises(ValueError, match=message):
            call(x)
    for got, want in zip(module.get_states(), before, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# --- planted faults: each reintroduces a stale read and must be caught ------------------------------------------


def _raw_weights(rnn: nn.Module, *args: object) -> list[torch.Tensor]:
    return rnn._flat_weights


PLANTED = {  # kind -> (module, attribute, planted value, the check that must catch it)
    "stale-weight step (plan blind to new storage)": (streaming, "_DATA_PTR", lambda w: 0, "step"),
    "stale-weight step (hooked weights planned once)": (streaming, "plain_weights", _raw_weights, "step"),
    "parametrization ignored (raw _flat_weights read)": (segments, "weights_of", _raw_weights, "module"),
}


def _caught(kind: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The rows of ``CHANGERS`` whose check fails with the fault planted (LSTM, one layer, one frame)."""
    owner, name, value, check = PLANTED[kind]
    caught = {}
    with monkeypatch.context() as planted:
        planted.setattr(owner, name, value)
        for change_name, change in CHANGERS.items():
            module, x = _module("lstm", 1, 1)
            try:
                if check == "step":
                    check_step(module, x, change)
                else:
                    change(module)
                    check_module_call(module, x)
            except (AssertionError, RuntimeError) as failure:
                caught[change_name] = str(failure).splitlines()[0]
    return caught


@pytest.mark.parametrize("kind", PLANTED)
def test_planted_stale_read_is_caught(kind, monkeypatch, capsys):
    caught = _caught(kind, monkeypatch)
    with capsys.disabled():
        print(f"\n{kind}: caught by {len(caught)} of {len(CHANGERS)} weight changers")
        for change_name, failure in caught.items():
            print(f"  {change_name}: {failure}")
    assert caught, f"planted fault {kind!r} was caught by no weight changer"
