"""Training parity: the same truncated-BPTT SGD run in torch and in Keras, compared step by step.

Both sides start from the same weights (ported torch -> Keras), see the same
chunks in the same order (state carried across chunks, reset at the start of
each pass), minimise MSE with plain SGD, and are compared on every step's loss,
the final weights and the final carried states.

The torch module may live on any device: inputs and targets go to its device, results
come back with ``.cpu()``. The run holds full float32 matmuls in every framework
(``harness.parity.precision.full_precision_matmul``: no TF32 on a GPU) and reports the settings.

Torch keeps two biases (``bias_ih``, ``bias_hh``) where Keras LSTM/SimpleRNN keep
one, their sum: plain SGD moves torch's sum twice as fast. For those cells the
run holds torch's ``bias_hh`` fixed, so both sides train the same parameters.

Keras 3.15's ``ops.mean`` and ``divide_no_nan`` compute float64 in float32 on JAX
and torch (their ``result_type`` maps 64-bit to 32-bit dtypes), so Keras here
minimises the sum of squares with the learning rate divided by the element
count: the same SGD step as MSE, exact in float64.

Example:
    >>> report = check_training_parity(module, x, target, "halves", lr=0.1, steps=6)  # doctest: +SKIP
    >>> report.ok, report.max_rel_loss_error                                          # doctest: +SKIP
    (True, 3.1e-15)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from harness.parity import inputs
from harness.parity.engine import StepArgs, by_position, chunk_plan
from harness.parity.inputs import Inputs
from harness.parity.precision import full_precision_matmul
from harness.parity.runners import KerasRunner, TorchRunner, keras_inputs, torch_inputs
from harness.parity.untouched import left_as_found
from harness.porting.layers import keras_twin
from multistate_core.cells import CELLS

TRAINING_RTOL = {"float32": 1e-4, "float64": 1e-9}


@dataclasses.dataclass
class TrainingParityReport:
    """Per-step losses on both sides and the largest relative differences found."""

    torch_losses: list[float]
    keras_losses: list[float]
    max_rel_loss_error: float
    max_rel_weight_error: float
    max_abs_state_error: float
    rtol: float
    loss_rtol: float
    device: str = "cpu"
    matmul: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.max_rel_loss_error <= self.loss_rtol
            and max(self.max_rel_weight_error, self.max_abs_state_error) <= self.rtol
        )

    @property
    def first_bad_step(self) -> int | None:
        """The first SGD step whose torch and Keras losses differ by more than ``loss_rtol`` (None: none do).

        Example:
            >>> TrainingParityReport([1.0, 2.0], [1.0, 2.5], 0.2, 0.0, 0.0, 1e-9, 1e-9).first_bad_step
            1
        """
        for step, (a, b) in enumerate(zip(self.torch_losses, self.keras_losses)):
            if not abs(a - b) <= self.loss_rtol * max(abs(a), 1e-300):
                return step
        return None

    def table(self) -> str:
        lines = [f"{'step':>4} {'torch loss':>14} {'keras loss':>14} {'rel diff':>10}"]
        for i, (a, b) in enumerate(zip(self.torch_losses, self.keras_losses)):
            lines.append(f"{i:>4} {a:>14.8g} {b:>14.8g} {abs(a - b) / max(abs(a), 1e-300):>10.2e}")
        lines.append(
            f"losses max rel diff {self.max_rel_loss_error:.2e} (allowed {self.loss_rtol:g}); final weights max "
            f"rel diff {self.max_rel_weight_error:.2e}, carried states max abs diff {self.max_abs_state_error:.2e} "
            f"(allowed {self.rtol:g}): {'ok' if self.ok else 'FAIL'}"
        )
        lines.append(f"torch on {self.device}; matmul settings {self.matmul}")
        return "\n".join(lines)


def _sum_of_squares_loss() -> Any:
    import keras

    class SumOfSquares(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)

    return SumOfSquares(reduction="sum")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _report(
    torch_losses: list[float],
    keras_losses: list[float],
    weight_error: float,
    state_error: float,
    rtol: float,
    device: str,
) -> TrainingParityReport:
    """The report of one training comparison: the losses' largest relative gap and the tolerance it is held to."""
    import keras

    loss_error = max(_rel(np.array([k]), np.array([t])) for k, t in zip(keras_losses, torch_losses))
    # Keras's torch backend hands back the (float64) loss rounded to float32.
    loss_rtol = max(rtol, 1e-6) if keras.backend.backend() == "torch" else rtol
    return TrainingParityReport(
        torch_losses, keras_losses, loss_error, weight_error, state_error, rtol, loss_rtol, device=device
    )


def check_training_parity(
    torch_model: Any,
    x: Any,
    target: np.ndarray | Sequence[np.ndarray],
    chunks: Sequence[int] | str,
    *,
    lr: float = 0.1,
    steps: int = 4,
    rtol: float | None = None,
    resets: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    keras_model: Any = None,
) -> TrainingParityReport:
    """Train ``torch_model`` and its Keras twin for ``steps`` SGD updates (one per chunk) and compare.

    Args:
        torch_model: a ``models_torch`` multi-state module, or a user's whole ``nn.Module`` holding them (then
            ``keras_model`` is its Keras twin), on any device. It is trained, then put back as it was found
            (weights, gradients, mode, carried states).
        x, target: ``(B, S, T, F)`` inputs and ``(B, S, T, H)`` targets (numpy), cast to the model's dtype,
            which sets the precision and the default ``rtol``; a model with several outputs (a list or tuple)
            takes a list of targets, one per output, and minimises the sum of their MSEs. A whole model with
            several inputs takes them as ``check_parity`` does (a tuple/list or dict, each ``(B, ·, T, ...)``,
            ``harness.parity.inputs``); integer and boolean inputs are not cast.
        keras_model: the Keras twin of a whole ``torch_model`` (left untouched: a clone of it is trained, with
            the torch weights ported by ``port_weights``); None for a multi-state module, whose twin is made
            here.
        chunks: chunk plan over ``T``; passes repeat it (state reset at each pass) until ``steps`` updates.
        lr: SGD learning rate on both sides.
        rtol: allowed relative difference (default 1e-9 for float64, 1e-4 for float32).
        resets, lengths: per-step resets ``(B, S, T)`` and per-stream lengths ``(B, S)`` of the whole
            sequence, for a multi-state module; each chunk gets its share on both sides (the Keras twin takes
            them as inputs).
    """
    import keras  # noqa: F401  (loads the Keras backend's framework first, so that the switch covers it)
    import torch  # noqa: F401

    from models_torch import MultiStateBase

    if keras_model is None and not isinstance(torch_model, MultiStateBase):
        raise ValueError(
            f"{type(torch_model).__name__} is not a multi-state module: a whole model needs its Keras twin, "
            "keras_model= (the Keras model its weights port into)"
        )
    if keras_model is not None and (resets is not None or lengths is not None):
        raise ValueError("resets and lengths are handed to a bare multi-state module only, not to a whole model")
    x = inputs.inputs_checked(x)
    if keras_model is None and inputs.is_several(x):
        raise ValueError(f"a multi-state module takes one input x (B, S, T, F), got {inputs.shape_of(x)}")
    step_args = StepArgs.checked(inputs.first(x), resets, lengths)
    with full_precision_matmul() as matmul, left_as_found([torch_model]):
        report = _train_and_compare(torch_model, keras_model, x, target, chunks, lr, steps, rtol, step_args)
    report.matmul = matmul
    return report


def _train_and_compare(
    torch_model: Any,
    keras_model: Any,
    x: Inputs,
    target: np.ndarray | Sequence[np.ndarray],
    chunks: Sequence[int] | str,
    lr: float,
    steps: int,
    rtol: float | None,
    step_args: StepArgs,
) -> TrainingParityReport:
    """Train ``torch_model`` and a Keras twin side by side (``keras_model`` None: one made by ``keras_twin``;
    else a clone of it with the torch weights ported) and compare their losses, final weights and states.

    Several outputs: torch minimises the sum of the outputs' MSEs; Keras the sum of squares of each output
    weighted by one over its elements per step, with the learning rate divided by the chunk's steps (the
    same SGD step). Final weights are compared in Keras's layout (the trained torch weights in a fresh
    twin); final states by position in the tree (``harness.parity.engine.by_position``).
    """
    import keras
    import torch

    weight = next(torch_model.parameters())
    dtype = str(weight.dtype).removeprefix("torch.")  # the one rule: the model's dtype
    x = inputs.cast_floating(x, dtype)
    targets = [np.asarray(t, dtype) for t in (target if isinstance(target, (list, tuple)) else [target])]
    rtol = TRAINING_RTOL[dtype] if rtol is None else rtol
    step_args = _both_given(step_args, inputs.first(x).shape)
    stepped = step_args.resets is not None
    twin = _twin_maker(torch_model, keras_model, batch_size=inputs.first(x).shape[0], step_inputs=stepped)
    model = twin()
    torch_runner, keras_runner = TorchRunner(torch_model), KerasRunner(model)
    floatx = keras.config.floatx()
    keras.config.set_floatx(dtype)  # Keras computes losses and their trackers in floatx
    frozen = _hold_summed_biases(torch_model)
    optimizer = torch.optim.SGD([p for p in torch_model.parameters() if p.requires_grad], lr=lr)
    plan = chunk_plan(chunks, inputs.steps(x))
    bounds = [(int(s), int(s + n)) for s, n in zip(np.cumsum([0] + plan[:-1]), plan)]
    per_step = [t[:, :, :1].size for t in targets]  # each output's elements per time step
    torch_losses, keras_losses = [], []
    torch_model.train()
    try:
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr),
            loss=[_sum_of_squares_loss() for _ in targets],
            loss_weights=[1 / n for n in per_step],
        )
        for step in range(steps):
            start, end = bounds[step % len(bounds)]
            if start == 0:
                torch_runner.reset()
                keras_runner.reset()
            xc, chunk_args = inputs.window(x, start, end), step_args.window(start, end)
            chunk_targets = [t[:, :, start:end] for t in targets]
            torch_losses.append(_torch_step(torch_model, optimizer, weight, xc, chunk_args, chunk_targets))
            model.optimizer.learning_rate.assign(lr / (end - start))
            feed = [xc, chunk_args["resets"], chunk_args["lengths"].astype("int32")] if stepped else keras_inputs(xc)
            logs = model.train_on_batch(feed, chunk_targets, return_dict=True)
            keras_losses.append(float(np.asarray(logs["loss"])) / (end - start))
    finally:
        keras.config.set_floatx(floatx)
        for p in frozen:
            p.requires_grad_(True)

    weight_error = max(
        _rel(keras.ops.convert_to_numpy(k), keras.ops.convert_to_numpy(t))
        for k, t in zip(model.trainable_weights, twin().trainable_weights)
    )
    torch_states, keras_states = torch_runner.states(), keras_runner.states()
    names = by_position(list(keras_states), list(torch_states))
    state_error = max(float(np.max(np.abs(v - torch_states[names.get(n, n)]))) for n, v in keras_states.items())
    return _report(torch_losses, keras_losses, weight_error, state_error, rtol, str(weight.device))


def _torch_step(
    model: Any, optimizer: Any, weight: Any, x: Inputs, step_args: dict[str, np.ndarray], targets: list[np.ndarray]
) -> float:
    """One SGD step of the torch ``model`` on a chunk (inputs on the device and in the dtype of ``weight``), on the
    sum of its outputs' MSEs against ``targets``; its loss."""
    import torch

    positional, named = torch_inputs(x, weight.dtype, weight.device)
    step_tensors = {k: torch.from_numpy(v).to(weight.device) for k, v in step_args.items()}
    outs = model(*positional, **named, **step_tensors)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    losses = [torch.nn.functional.mse_loss(o, torch.from_numpy(t).to(weight.device)) for o, t in zip(outs, targets)]
    loss = functools.reduce(torch.add, losses)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.item())


def _both_given(step_args: StepArgs, shape: tuple[int, ...]) -> StepArgs:
    """Per-step resets and lengths with the one not given filled in (no resets, full lengths), as the Keras
    twin takes both as inputs; as they are where neither is given."""
    if step_args.resets is None and step_args.lengths is None:
        return step_args
    return StepArgs(
        np.zeros(shape[:3], bool) if step_args.resets is None else step_args.resets,
        np.full(shape[:2], shape[2]) if step_args.lengths is None else step_args.lengths,
    )


def _twin_maker(torch_model: Any, keras_model: Any, batch_size: int, step_inputs: bool) -> Callable[[], Any]:
    """What makes a Keras model holding ``torch_model``'s weights as they are when it is called: a ``keras_twin``
    of a multi-state module, or a clone of the whole ``keras_model`` with the weights ported."""
    import keras

    from harness.porting import port_weights

    if keras_model is None:
        return functools.partial(keras_twin, torch_model, batch_size=batch_size, step_inputs=step_inputs)
    return lambda: port_weights(torch_model, keras.models.clone_model(keras_model))


def _hold_summed_biases(torch_model: Any) -> list[Any]:
    """Hold ``bias_hh`` fixed in each multi-state module whose Keras twin keeps one summed bias (LSTM, simple RNN):
    plain SGD would move torch's sum twice as fast. Returns the parameters held, to release after training."""
    from models_torch import MultiStateBase

    frozen = [
        p
        for m in torch_model.modules()
        if isinstance(m, MultiStateBase) and not CELLS[m.cell].split_bias
        for n, p in m.rnn.named_parameters()
        if "bias_hh" in n
    ]
    for p in frozen:
        p.requires_grad_(False)
    return frozen
