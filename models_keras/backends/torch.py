"""The torch backend's pieces: the whole stack as ONE torch RNN call, with resets and lengths, and the streaming step.

Imported only when Keras runs on torch (``models_keras.backends`` picks it). Keras steps an
LSTM through a Python loop on the CPU; here the whole stack runs as one ``nn.LSTM``/``nn.GRU``/
``nn.RNN`` op (oneDNN on the CPU, cuDNN on a GPU) on contiguous parameters built from the
Keras variables (``multistate_core.cells.to_torch``), so gradients reach them. The kernels are
``models_torch.ops``'s, imported on first use (``import models_keras`` loads no ``models_torch``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.func import functional_call

from models_keras.backends.portable import (
    check_dtype,
    exact_tanh,
    guard,
    in_graph,
    in_replica,
    rnn_kwargs,
    run_time_checks,
    scan,
    strategy_replicas,
    xla,
)
from multistate_core.cells import CELLS, to_torch

if TYPE_CHECKING:
    from models_torch.ops.kernels import Stack

__all__ = [
    "check_dtype",
    "exact_tanh",
    "guard",
    "holds_values",
    "in_graph",
    "in_replica",
    "on_gpu",
    "parameters",
    "rnn_kwargs",
    "run_fused",
    "run_fused_stepped",
    "run_time_checks",
    "scan",
    "step_function",
    "strategy_replicas",
    "xla",
]


def holds_values(x: Any) -> bool:
    return x.device.type != "meta"


@functools.cache
def on_gpu() -> bool:
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=64)
def _template(cell: str, input_size: int, units: int, layers: int, bias: bool, nonlinearity: str, dtype: Any) -> Any:
    """A parameter-less (meta device) torch module of the stack's shape, to call with the Keras weights."""
    # A one-gate cell (the simple RNN) is the one whose torch class takes its activation as ``nonlinearity``.
    extra = {"nonlinearity": nonlinearity} if CELLS[cell].gates == 1 else {}
    return getattr(torch.nn, CELLS[cell].torch_class)(
        input_size, units, num_layers=layers, bias=bias, batch_first=True, device="meta", dtype=dtype, **extra
    )


def parameters(layer: Any) -> dict[str, Any]:
    """Torch-named, contiguous parameters built from the Keras variables, keeping the autograd link.

    Contiguous: cuDNN flattens the weights into one buffer and refuses strided views.
    """
    params = {}
    for i, rnn in enumerate(layer.rnn_layers):
        weights = [w.value for w in rnn.cell.weights]
        for name, value in to_torch(layer.cell, weights).items():
            params[f"{name}_l{i}"] = value.contiguous()
    return params


def _stack(layer: Any, params: dict[str, Any], training: bool | None) -> Stack:
    """The stack as ``models_torch.ops.kernels`` runs it, on the torch-named ``params`` of ``parameters(layer)``."""
    from models_torch.ops.kernels import Stack

    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if layer.use_bias else ())
    layers = [[params[f"{name}_l{k}"] for name in names] for k in range(layer.num_layers)]
    nonlinearity = layer.rnn_layers[0].cell.activation.__name__
    return Stack(layer.cell, layers, bool(training), nonlinearity=nonlinearity)


def _fused(layer: Any, dtype: Any, params: dict[str, Any], stack: Stack) -> Callable:
    """``fused(x, hx) -> (output, [final states])``: the whole stack as ONE torch RNN call with the Keras weights.

    ``x`` is an ``(N, T, F)`` tensor (``models_torch.ops.kernels.run_plain`` on ``stack``: torch's op, or its
    cell ops for a small one-step chunk) or a ``PackedSequence`` (an ``nn`` module of the stack's shape
    through ``functional_call`` on ``params``); ``hx`` a sequence of ``(L, N, H)`` states.
    """
    from models_torch.ops.kernels import run_plain

    def fused(x: Any, initial: Any) -> tuple[Any, list]:
        if isinstance(x, torch.Tensor):
            out, final = run_plain(stack, x, tuple(initial))
            return out, list(final)
        module = _template(
            layer.cell, layer.input_size, layer.units, layer.num_layers, layer.use_bias, stack.nonlinearity, dtype
        )
        module.train(stack.training)
        hx = tuple(s.contiguous() for s in initial)
        out, final = functional_call(module, params, (x, hx if len(hx) > 1 else hx[0]))
        return out, list(final) if isinstance(final, tuple) else [final]

    return fused


def run_fused(layer: Any, x: Any, initial: list, training: bool | None) -> tuple[Any, list]:
    """Run the whole stack on ``x`` ``(N, T, F)`` from ``initial`` (each ``(L, N, H)``) in one fused call."""
    params = parameters(layer)
    return _fused(layer, x.dtype, params, _stack(layer, params, training))(x, initial)


def run_fused_stepped(
    layer: Any, x: Any, initial: list, resets: Any, lengths: Any, training: bool | None
) -> tuple[Any, list]:
    """``run_fused`` with resets and lengths, chosen as ``models_torch`` chooses (``run_segmented``): on a CPU
    an LSTM or GRU with saturated gates, one plain call per layer; otherwise every row cut into segments at
    its resets and length, run as ONE packed call or between cuts of the time axis."""
    from models_torch.ops.segments import run_segmented

    params = parameters(layer)
    stack = _stack(layer, params, training)
    resets = None if resets is None else resets.to(torch.bool)
    out, finals = run_segmented(_fused(layer, x.dtype, params, stack), x, tuple(initial), resets, lengths, stack=stack)
    return out, list(finals)


def step_function(layer: Any, checked: Callable[[Any], Any], compiled: bool) -> Callable[[Any], Any]:
    """The stack straight through torch's ops (``models_torch.ops.step_runs``), planned once per input shape;
    ``compiled=True``: compiled ahead of time by AOTInductor (CPU)."""
    return _TorchStep(layer, checked, compiled)


class _TorchStep:
    """The torch backend's step: the layer's stack in torch's layout through ``models_torch.ops.step_runs`` (as
    ``models_torch.streaming``), planned once per input shape and again only after a weight or a state
    variable changed (``_stamps``: Keras assigns a torch variable in place, ``param.data = ...`` and
    ``vector_to_parameters`` swap its storage); the new states are copied into the state variables' own
    tensors."""

    def __init__(self, layer: Any, checked: Callable[[Any], Any], compiled: bool) -> None:
        self.layer, self.checked = layer, checked
        self.programs: dict | None = {} if compiled else None  # the compiled programs, by shape
        self.plan: dict[str, Any] = {}

    def __call__(self, x: Any) -> Any:
        x, plan = self.checked(x), self.plan
        if not plan or x.shape != plan["shape"] or _stamps(plan["tensors"]) != plan["stamps"]:
            plan = self._prepare(x)
        on_cpu = isinstance(x, np.ndarray) and plan["device"].type == "cpu"
        y, new = plan["run"](
            torch.from_numpy(x) if on_cpu else torch.as_tensor(x, device=plan["device"]), plan["folded"]
        )
        for held, value in zip(plan["folded"], new):  # no graph: state variables are not trainable
            held.copy_(value)
        plan["stamps"] = _stamps(plan["tensors"])
        return y if self.layer.return_sequences else y[:, :, -1]

    def _prepare(self, x: Any) -> dict[str, Any]:
        from models_torch.ops.step_runs import plan_run

        layer = self.layer
        states = [v.value for v in layer.state_variables]
        weights = [w.value for rnn in layer.rnn_layers for w in rnn.cell.weights]
        with torch.no_grad():  # torch-layout copies of the weights: the plan is rebuilt when a variable moves
            stack = _stack(layer, parameters(layer), False)
        device = states[0].device
        run, fold = plan_run(stack, tuple(x.shape), tuple(states[0].shape), device.type, self.programs)
        self.plan = {
            "shape": x.shape,
            "tensors": weights + states,
            "stamps": _stamps(weights + states),
            "run": run,
            "folded": [s.view(fold) for s in states],  # views into the state variables
            "device": device,
        }
        return self.plan


def _stamps(tensors: list) -> list[tuple[int, int]]:
    """What changes when a torch tensor is written in place (its version) or given new storage (its address)."""
    return [(t._version, t.data_ptr()) for t in tensors]
