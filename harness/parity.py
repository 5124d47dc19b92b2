"""The parity engine: run models whole and in chunks, compare outputs and carried states.

Every model runs the sequence in chunks; at each chunk boundary the engine holds
its output and every carried state against (a) the same model run whole up to
that boundary ("same": chunked vs whole) and (b) the reference model's chunked
run at that boundary ("cross").

State matching is strict: both sides must expose the same state names with the
same shapes (after ``state_map`` renames a model's states to the reference's);
a state one side lacks or of another shape is a failing row ("missing:h",
"unexpected:x", or the name with a shape problem), never skipped.

Example:
    >>> import numpy as np, torch
    >>> from models_torch import MultiStateLSTM
    >>> model = MultiStateLSTM(4, 8, num_streams=3)
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 20, 4)).astype("float32")
    >>> check_parity({"torch": model}, x, "ones").ok
    True
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from harness.precision import full_precision_matmul
from harness.report import Comparison, ParityReport, compare, mismatch
from harness.runners import as_runner
from harness.spec import contract
from harness.tolerances import default_tolerance

PLANS = ("whole", "halves", "random", "ones")
WHOLE_STATE_CHECKS = 8
"""Default number of boundaries whose states are also checked against a whole run of the prefix."""


def chunk_plan(chunks: Sequence[int] | str, steps: int, seed: int = 0) -> list[int]:
    """Chunk lengths summing to ``steps``: a list, or one of ``PLANS`` ("random" uses ``seed``).

    Example:
        >>> chunk_plan("halves", 7), chunk_plan("ones", 3), sum(chunk_plan("random", 50))
        ([3, 4], [1, 1, 1], 50)
    """
    if isinstance(chunks, str):
        if chunks == "whole":
            return [steps]
        if chunks == "halves":
            return [steps // 2, steps - steps // 2] if steps > 1 else [steps]
        if chunks == "ones":
            return [1] * steps
        if chunks == "random":
            rng = np.random.default_rng(seed)
            plan, left = [], steps
            while left:
                n = 1 if rng.random() < 0.3 else int(rng.integers(1, left + 1))
                plan.append(min(n, left))
                left -= plan[-1]
            return plan
        raise ValueError(f"unknown chunk plan {chunks!r}: expected a list of lengths or one of {PLANS}")
    plan = [int(n) for n in chunks]
    if any(n < 1 for n in plan) or sum(plan) != steps:
        raise ValueError(f"chunk lengths must be >= 1 and sum to {steps} time steps, got {plan}")
    return plan


def _renamed(states: dict[str, np.ndarray], names: Mapping[str, str], model: str) -> dict[str, np.ndarray]:
    """``states`` under the reference's names (``names``: this model's name -> the reference's)."""
    out: dict[str, np.ndarray] = {}
    for name, value in states.items():
        new = names.get(name, name)
        if new in out:
            raise ValueError(f"state_map of {model!r} gives two of its states the name {new!r}")
        out[new] = np.asarray(value)
    return out


@dataclasses.dataclass(frozen=True)
class StepArgs:
    """Per-step ``resets`` ``(B, S, T)`` and per-stream ``lengths`` ``(B, S)`` of the whole sequence.

    ``window(start, end)`` gives a chunk's share: its resets, and each stream's length within the
    chunk (``clip(length - start, 0, end - start)``), as keyword arguments for ``Runner.run``.
    """

    resets: np.ndarray | None = None
    lengths: np.ndarray | None = None

    @classmethod
    def checked(cls, x: np.ndarray, resets: np.ndarray | None, lengths: np.ndarray | None) -> StepArgs:
        """``resets`` and ``lengths`` checked against ``x`` ``(B, S, T, F)`` (the models' own contract)."""
        resets = None if resets is None else np.asarray(resets)
        lengths = None if lengths is None else np.asarray(lengths)
        contract.check_step_args(
            x.shape,
            resets=None if resets is None else (resets.shape, str(resets.dtype)),
            lengths=None
            if lengths is None
            else (lengths.shape, str(lengths.dtype), int(lengths.min(initial=0)), int(lengths.max(initial=0))),
        )
        return cls(resets, lengths)

    def window(self, start: int, end: int) -> dict[str, np.ndarray]:
        args = {}
        if self.resets is not None:
            args["resets"] = self.resets[:, :, start:end]
        if self.lengths is not None:
            args["lengths"] = np.clip(self.lengths - start, 0, end - start)
        return args


def _run(runner: Any, model: str, x: np.ndarray, args: dict) -> np.ndarray:
    if args and not _takes_step_args(runner):
        raise ValueError(f"{model!r} cannot take resets/lengths: its runner's run(x) has no such arguments")
    return runner.run(x, **args)


def _takes_step_args(runner: Any) -> bool:
    parameters = inspect.signature(runner.run).parameters
    return {"resets", "lengths"} <= set(parameters) or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _run_chunked(
    runner: Any, x: np.ndarray, plan: list[int], names: Mapping[str, str], model: str, steps: StepArgs
) -> tuple:
    runner.reset()
    outputs, states, start = [], [], 0
    for n in plan:
        outputs.append(_run(runner, model, x[:, :, start : start + n], steps.window(start, start + n)))
        states.append(_renamed(runner.states(), names, model))
        start += n
    return outputs, states


def _run_whole_prefixes(
    runner: Any, x: np.ndarray, ends: list[int], names: Mapping[str, str], model: str, steps: StepArgs
) -> tuple[np.ndarray, dict[int, dict]]:
    """The whole-sequence output, and the states after running whole each prefix ``x[:, :, :end]``."""
    states, out = {}, None
    for end in ends:
        runner.reset()
        out = _run(runner, model, x[:, :, :end], steps.window(0, end))
        states[end] = _renamed(runner.states(), names, model)
    return out, states


def _spread(boundaries: list[int], most: int | None) -> list[int]:
    """At most ``most`` of ``boundaries``, evenly spread, the last always included."""
    if most is None or len(boundaries) <= most:
        return boundaries
    picks = np.linspace(len(boundaries) - 1, 0, most).round().astype(int)
    return sorted({boundaries[i] for i in picks})


def _compare_states(
    pair: str,
    kind: str,
    chunk: int,
    step: int,
    tolerance: Any,
    states: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    sides: tuple[str, str],
) -> list[Comparison]:
    """Every state on either side, layer by layer and stream by stream; a name on one side only fails."""
    actual_side, expected_side = sides

    def one_sided(tensor: str, name: str, value: np.ndarray, has: str, lacks: str, its: dict) -> Comparison:
        problem = (
            f"{has} has state {name!r} {tuple(value.shape)}, {lacks} has none "
            f"(its states: {sorted(its)}; pass state_map= if it names them differently)"
        )
        return mismatch(
            pair=pair, kind=kind, chunk=chunk, tensor=tensor, tolerance=tolerance, problem=problem, size=value.size
        )

    rows = [
        one_sided(f"missing:{name}", name, value, expected_side, actual_side, states)
        for name, value in expected.items()
        if name not in states
    ]
    for name, value in expected.items():
        if name in states:
            rows += compare(
                states[name],
                value,
                pair=pair,
                kind=kind,
                chunk=chunk,
                tensor=name,
                tolerance=tolerance,
                stream_axis=2,
                layer_axis=0,
                axis_names=("layer", "batch", "stream", "unit"),
                at={"step": step},
            )
    rows += [
        one_sided(f"unexpected:{name}", name, value, actual_side, expected_side, expected)
        for name, value in states.items()
        if name not in expected
    ]
    return rows


def _compare_step(
    pair: str,
    kind: str,
    chunk: int,
    start: int,
    end: int,
    tolerance: Any,
    out: np.ndarray,
    out_expected: np.ndarray,
    states: dict,
    states_expected: dict | None,
    sides: tuple[str, str],
) -> list[Comparison]:
    """Output and (unless ``states_expected`` is None) every carried state at one boundary."""
    rows = compare(
        np.asarray(out),
        np.asarray(out_expected),
        pair=pair,
        kind=kind,
        chunk=chunk,
        tensor="output",
        tolerance=tolerance,
        stream_axis=1,
        axis_names=("batch", "stream", "step", "unit"),
        offsets={"step": start},
    )
    if states_expected is not None:
        rows += _compare_states(pair, kind, chunk, end - 1, tolerance, states, states_expected, sides)
    return rows


def check_parity(
    models: Mapping[str, Any],
    x: np.ndarray,
    chunks: Sequence[int] | str,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    reference: str | None = None,
    seed: int = 0,
    whole_state_checks: int | None = WHOLE_STATE_CHECKS,
    state_map: Mapping[str, Mapping[str, str]] | None = None,
    allow_tf32: bool = False,
    resets: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
) -> ParityReport:
    """Run every model whole and chunked; compare outputs and states at every boundary.

    Args:
        models: name -> torch/Keras multi-state model, Keras model, or ``Runner``.
        x: input ``(B, S, T, F)`` as a numpy array; its dtype picks the default tolerances.
        chunks: chunk lengths, or a plan name from ``PLANS``.
        atol, rtol: override the defaults of docs/contract.md for both kinds of comparison.
        reference: the model the others are held against (default: the first).
        seed: seed of the "random" plan.
        whole_state_checks: compare chunked-vs-whole states at this many boundaries
            (default 8, evenly spread, the last included): each costs one run of the
            prefix (quadratic in T; JAX compiles anew for every length). ``None``
            checks every boundary (the full check, on request). Outputs and the
            cross-model comparisons, states included, always cover every boundary.
        state_map: model name -> {that model's state name: the reference's name}, for
            models that name their states differently. Without it, states must carry
            the same names (and shapes) on both sides, or the report fails.
        resets, lengths: per-step resets ``(B, S, T)`` bools and per-stream lengths ``(B, S)`` of the
            whole sequence, handed to every model on every run (each chunk gets its share,
            ``StepArgs.window``); a model whose runner cannot take them is refused.
        allow_tf32: run with the frameworks' reduced-precision float32 matmuls (TF32 on a GPU)
            to see what they cost; by default the check switches them off in every framework
            involved and restores the user's settings afterwards (``report.matmul`` says which
            settings were in force).

    Raises:
        ValueError: bad ``x``, plan, ``reference``, ``whole_state_checks`` (< 1) or ``state_map``.

    Example:
        >>> import numpy as np, torch
        >>> from models_torch import MultiStateGRU
        >>> model = MultiStateGRU(3, 4, num_streams=2)
        >>> x = np.zeros((1, 2, 6, 3), "float32")
        >>> check_parity({"a": model, "b": model}, x, "halves", state_map={"b": {"hidden": "h"}}).ok
        True
    """
    if not models:
        raise ValueError("check_parity needs at least one model")
    if whole_state_checks is not None and (
        isinstance(whole_state_checks, bool) or not isinstance(whole_state_checks, int) or whole_state_checks < 1
    ):
        raise ValueError(
            f"whole_state_checks must be an int >= 1 (boundaries to check) or None (all), got {whole_state_checks!r}"
        )
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, streams, time, features), got shape {x.shape}")
    dtype = str(x.dtype)
    plan = chunk_plan(chunks, x.shape[2], seed)
    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {list(models)}")
    state_map = dict(state_map or {})
    if set(state_map) - set(models):
        raise ValueError(f"state_map names {sorted(set(state_map) - set(models))}, not among the models {list(models)}")
    if state_map.get(reference):
        raise ValueError(f"state_map renames states to the reference's names; {reference!r} is the reference")
    same, cross = (default_tolerance(k, dtype, atol, rtol) for k in ("same", "cross"))
    steps = StepArgs.checked(x, resets, lengths)

    with full_precision_matmul(allow_tf32=allow_tf32) as matmul:
        comparisons = _compare_all(models, x, plan, reference, state_map, same, cross, whole_state_checks, steps)
    return ParityReport(comparisons, plan, dtype, reference, matmul=matmul)


def _compare_all(
    models: Mapping[str, Any],
    x: np.ndarray,
    plan: list[int],
    reference: str,
    state_map: Mapping[str, Mapping[str, str]],
    same: Any,
    cross: Any,
    whole_state_checks: int | None,
    steps: StepArgs,
) -> list[Comparison]:
    """Run every model chunked (and whole, for the prefixes checked), and compare everything."""
    starts = [int(s) for s in np.cumsum([0] + plan[:-1])]
    ends = [int(e) for e in np.cumsum(plan)]
    checked_ends = _spread(ends, whole_state_checks)
    chunked = {}
    comparisons: list[Comparison] = []
    for name, model in models.items():
        runner, names = as_runner(model), state_map.get(name, {})
        chunked[name] = _run_chunked(runner, x, plan, names, name, steps)
        whole, prefix_states = _run_whole_prefixes(runner, x, checked_ends, names, name, steps)
        outs, states = chunked[name]
        for i, (start, end) in enumerate(zip(starts, ends)):
            comparisons += _compare_step(
                f"{name} chunked vs whole",
                "same",
                i,
                start,
                end,
                same,
                outs[i],
                whole[:, :, start:end],
                states[i],
                prefix_states.get(end),
                ("the chunked run", "the whole run"),
            )
    ref_outs, ref_states = chunked[reference]
    for name in models:
        if name == reference:
            continue
        outs, states = chunked[name]
        for i, (start, end) in enumerate(zip(starts, ends)):
            comparisons += _compare_step(
                f"{name} vs {reference}",
                "cross",
                i,
                start,
                end,
                cross,
                outs[i],
                ref_outs[i],
                states[i],
                ref_states[i],
                (repr(name), repr(reference)),
            )
    return comparisons


def assert_parity(*args: Any, **kwargs: Any) -> ParityReport:
    """``check_parity``, raising an ``AssertionError`` that says how many elements differ, by how much, where."""
    report = check_parity(*args, **kwargs)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
