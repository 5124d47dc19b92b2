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
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.parity.engine import StepArgs, chunk_plan
from harness.parity.precision import full_precision_matmul
from harness.parity.untouched import left_as_found
from harness.porting.layers import describe, keras_twin, read_weights
from multistate_core.cells import CELLS, to_keras

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
    x: np.ndarray,
    target: np.ndarray,
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
            takes a list of targets, one per output, and minimises the sum of their MSEs.
        keras_model: the Keras twin of a whole ``torch_model`` (left untouched: a clone of it is trained, with
            the torch weights ported by ``port_weights``); None for a multi-state module, whose twin is made
            here.
        chunks: chunk plan over ``T``; passes repeat it (state reset at each pass) until ``steps`` updates.
        lr: SGD learning rate on both sides.
        rtol: allowed relative difference (default 1e-9 for float64, 1e-4 for float32).
        resets, lengths: per-step resets ``(B, S, T)`` and per-stream lengths ``(B, S)`` of the whole
            sequence; each chunk gets its share on both sides (the Keras twin takes them as inputs).
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
    with full_precision_matmul() as matmul, left_as_found([torch_model]):
        train = _train_and_compare if keras_model is None else functools.partial(_train_whole, keras_model=keras_model)
        report = train(
            torch_model,
            x,
            target,
            chunks,
            lr=lr,
            steps=steps,
            rtol=rtol,
            step_args=StepArgs.checked(x, resets, lengths),
        )
    report.matmul = matmul
    return report


def _train_and_compare(
    torch_model: Any,
    x: np.ndarray,
    target: np.ndarray,
    chunks: Sequence[int] | str,
    *,
    lr: float,
    steps: int,
    rtol: float | None,
    step_args: StepArgs,
) -> TrainingParityReport:
    import keras
    import torch

    device = next(torch_model.parameters()).device
    dtype = str(next(torch_model.parameters()).dtype).removeprefix("torch.")  # the one rule: the model's dtype
    x, target = np.asarray(x, dtype), np.asarray(target, dtype)
    rtol = TRAINING_RTOL[dtype] if rtol is None else rtol
    spec = describe(torch_model)
    stepped = step_args.resets is not None or step_args.lengths is not None
    if stepped:  # the Keras twin takes both inputs: fill in the one not given (no resets, full lengths)
        step_args = StepArgs(
            np.zeros(x.shape[:3], bool) if step_args.resets is None else step_args.resets,
            np.full(x.shape[:2], x.shape[2]) if step_args.lengths is None else step_args.lengths,
        )
    model = keras_twin(torch_model, batch_size=x.shape[0], step_inputs=stepped)
    floatx = keras.config.floatx()
    keras.config.set_floatx(dtype)  # Keras computes losses and their trackers in floatx
    frozen = [] if CELLS[spec.cell].split_bias else [p for n, p in torch_model.rnn.named_parameters() if "bias_hh" in n]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in torch_model.parameters() if p.requires_grad], lr=lr)

    plan = chunk_plan(chunks, x.shape[2])
    bounds = [(int(s), int(s + n)) for s, n in zip(np.cumsum([0] + plan[:-1]), plan)]
    torch_losses, keras_losses = [], []
    torch_model.train()
    try:
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss=_sum_of_squares_loss())
        for step in range(steps):
            start, end = bounds[step % len(bounds)]
            if start == 0:
                torch_model.reset_states()
                model.layers[-1].reset_states()
            xc, yc = x[:, :, start:end], target[:, :, start:end]
            chunk_args = step_args.window(start, end)
            torch_args = {k: torch.from_numpy(v).to(device) for k, v in chunk_args.items()}
            loss = torch.nn.functional.mse_loss(
                torch_model(torch.from_numpy(xc).to(device), **torch_args), torch.from_numpy(yc).to(device)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            torch_losses.append(loss.item())
            model.optimizer.learning_rate.assign(lr / yc.size)
            inputs = [xc, chunk_args["resets"], chunk_args["lengths"].astype("int32")] if stepped else xc
            keras_losses.append(float(np.asarray(model.train_on_batch(inputs, yc))) / yc.size)
    finally:
        keras.config.set_floatx(floatx)
        for p in frozen:
            p.requires_grad_(True)

    torch_weights, keras_weights = read_weights(torch_model), read_weights(model.layers[-1])
    weight_error = max(
        _rel(k, t)
        for tl, kl in zip(torch_weights.layers, keras_weights.layers)
        for t, k in zip(to_keras(spec.cell, tl), to_keras(spec.cell, kl))
    )
    state_error = max(
        float(np.max(np.abs(k - t))) for k, t in zip(model.layers[-1].get_states(), torch_model.numpy_states())
    )
    return _report(torch_losses, keras_losses, weight_error, state_error, rtol, str(device))


def _train_whole(
    torch_model: Any,
    x: np.ndarray,
    target: np.ndarray | Sequence[np.ndarray],
    chunks: Sequence[int] | str,
    *,
    lr: float,
    steps: int,
    rtol: float | None,
    step_args: StepArgs,
    keras_model: Any,
) -> TrainingParityReport:
    """``_train_and_compare`` for a whole torch model and (a clone of) its Keras twin ``keras_model``.

    Several outputs: torch minimises the sum of the outputs' MSEs; Keras the sum of squares of each output
    weighted by one over its elements per step, with the learning rate divided by the chunk's steps (the
    same SGD step). Final weights are compared in Keras's layout (the trained torch model ported into a
    second clone); final states by position in the tree (``harness.parity.engine.by_position``).
    """
    import keras
    import torch

    from harness.parity.engine import by_position
    from harness.parity.runners import KerasRunner, TorchRunner
    from harness.porting import port_weights
    from models_torch import MultiStateBase

    device = next(torch_model.parameters()).device
    dtype = str(next(torch_model.parameters()).dtype).removeprefix("torch.")
    targets = [np.asarray(t, dtype) for t in (target if isinstance(target, (list, tuple)) else [target])]
    x = np.asarray(x, dtype)
    rtol = TRAINING_RTOL[dtype] if rtol is None else rtol
    model = port_weights(torch_model, keras.models.clone_model(keras_model))
    torch_runner, keras_runner = TorchRunner(torch_model), KerasRunner(model)
    floatx = keras.config.floatx()
    keras.config.set_floatx(dtype)
    frozen = [
        p
        for m in torch_model.modules()
        if isinstance(m, MultiStateBase) and not CELLS[m.cell].split_bias
        for n, p in m.rnn.named_parameters()
        if "bias_hh" in n
    ]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in torch_model.parameters() if p.requires_grad], lr=lr)
    plan = chunk_plan(chunks, x.shape[2])
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
            outs = torch_model(torch.from_numpy(x[:, :, start:end]).to(device))
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            chunk_targets = [t[:, :, start:end] for t in targets]
            losses = [
                torch.nn.functional.mse_loss(o, torch.from_numpy(t).to(device)) for o, t in zip(outs, chunk_targets)
            ]
            loss = functools.reduce(torch.add, losses)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            torch_losses.append(loss.item())
            model.optimizer.learning_rate.assign(lr / (end - start))
            logs = model.train_on_batch(x[:, :, start:end], chunk_targets, return_dict=True)
            keras_losses.append(float(np.asarray(logs["loss"])) / (end - start))
    finally:
        keras.config.set_floatx(floatx)
        for p in frozen:
            p.requires_grad_(True)

    trained = port_weights(torch_model, keras.models.clone_model(keras_model))
    weight_error = max(
        _rel(keras.ops.convert_to_numpy(k), keras.ops.convert_to_numpy(t))
        for k, t in zip(model.trainable_weights, trained.trainable_weights)
    )
    torch_states = torch_runner.states()
    keras_states = keras_runner.states()
    names = by_position(list(keras_states), list(torch_states))
    state_error = max(float(np.max(np.abs(v - torch_states[names.get(n, n)]))) for n, v in keras_states.items())
    return _report(torch_losses, keras_losses, weight_error, state_error, rtol, str(device))
