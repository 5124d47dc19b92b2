"""The parity engine: run models whole and in chunks, compare outputs and carried states.

Every model runs the sequence in chunks; at each chunk boundary the engine holds
its output and every carried state against (a) the same model run whole ("same":
chunked vs whole; states at the boundaries ``whole_state_checks`` picks, from a whole
run of the prefix), (b) the same model's regrouped passes, which stop at every boundary
but never after the same previous one as the chunked run ("same": chunked vs regrouped,
states at every boundary) and (c) the reference model's chunked run at that boundary
("cross"). Tolerances follow the dtype the models compute in. The models given are
left as they were found (``harness.parity.untouched``).

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
import functools
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.parity.precision import full_precision_matmul
from harness.parity.report import Comparison, Operands, ParityReport, compare_each, mismatch
from harness.parity.runners import as_runner
from harness.parity.tolerances import default_tolerance
from harness.parity.untouched import left_as_found
from multistate_core import contract

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
    assert out is not None  # ends holds the last boundary at least (_spread)
    return out, states


def _run_regrouped(
    runner: Any, x: np.ndarray, ends: list[int], names: Mapping[str, str], model: str, steps: StepArgs
) -> list[dict]:
    """The states at every boundary from two passes that each cut at every other boundary.

    Pass 0 cuts at boundaries 0, 2, 4, ..., pass 1 at 1, 3, 5, ...: the piece ending at boundary ``i``
    starts at boundary ``i - 2``, so the state there comes from a run that did not stop at boundary
    ``i - 1`` as the chunked run did (the first boundary's piece is the whole prefix, as in the chunked
    run). Together the passes run about twice the sequence: linear in T, where a whole run of every
    prefix would be quadratic.
    """
    states: list[dict] = [{} for _ in ends]
    for first in (0, 1):
        runner.reset()
        start = 0
        for i in range(first, len(ends), 2):
            _run(runner, model, x[:, :, start : ends[i]], steps.window(start, ends[i]))
            states[i] = _renamed(runner.states(), names, model)
            start = ends[i]
    return states


def _spread(boundaries: list[int], most: int | None) -> list[int]:
    """At most ``most`` of ``boundaries``, evenly spread, the last always included."""
    if most is None or len(boundaries) <= most:
        return boundaries
    picks = np.linspace(len(boundaries) - 1, 0, most).round().astype(int)
    return sorted({boundaries[i] for i in picks})


@dataclasses.dataclass(frozen=True)
class _Boundary:
    """One chunk boundary of a comparison: its chunk index, first and end step, the outputs of the chunk on
    both sides, and the carried states on both sides (``states_expected`` None: states not compared here)."""

    chunk: int
    start: int
    end: int
    out: np.ndarray | None
    out_expected: np.ndarray | None
    states: dict[str, np.ndarray]
    states_expected: dict[str, np.ndarray] | None


def _compare_states(
    pair: str, kind: str, tolerance: Any, boundaries: Sequence[_Boundary], sides: tuple[str, str]
) -> list[list[Comparison]]:
    """Every state on either side at each boundary, layer by layer and stream by stream; a name on one side only
    fails. The rows of each boundary in a list of their own; each state is compared at all boundaries at once."""
    actual_side, expected_side = sides

    def one_sided(
        b: _Boundary, tensor: str, name: str, value: np.ndarray, has: str, lacks: str, its: dict
    ) -> Comparison:
        problem = (
            f"{has} has state {name!r} {tuple(value.shape)}, {lacks} has none "
            f"(its states: {sorted(its)}; pass state_map= if it names them differently)"
        )
        return mismatch(
            pair=pair, kind=kind, chunk=b.chunk, tensor=tensor, tolerance=tolerance, problem=problem, size=value.size
        )

    # state name -> the boundaries where both sides have it, with their expected states
    both: dict[str, list[tuple[_Boundary, dict[str, np.ndarray]]]] = {}
    for b in boundaries:
        assert b.states_expected is not None  # callers pass only boundaries whose states are compared
        for name in b.states_expected:
            if name in b.states:
                both.setdefault(name, []).append((b, b.states_expected))
    compared = {
        name: iter(
            compare_each(
                [Operands(b.chunk, b.states[name], expected[name], at={"step": b.end - 1}) for b, expected in shared],
                pair=pair,
                kind=kind,
                tensor=name,
                tolerance=tolerance,
                stream_axis=2,
                layer_axis=0,
                axis_names=("layer", "batch", "stream", "unit"),
            )
        )
        for name, shared in both.items()
    }
    rows = []
    for b in boundaries:
        expected = b.states_expected
        assert expected is not None  # as above
        here = [
            one_sided(b, f"missing:{name}", name, value, expected_side, actual_side, b.states)
            for name, value in expected.items()
            if name not in b.states
        ]
        here += [row for name in expected if name in b.states for row in next(compared[name])]
        here += [
            one_sided(b, f"unexpected:{name}", name, value, actual_side, expected_side, expected)
            for name, value in b.states.items()
            if name not in expected
        ]
        rows.append(here)
    return rows


def _compare_boundaries(
    pair: str, kind: str, tolerance: Any, boundaries: Sequence[_Boundary], sides: tuple[str, str]
) -> list[Comparison]:
    """Output and (where ``states_expected`` is given) every carried state at each boundary, boundary by boundary."""
    outputs = compare_each(
        [
            Operands(b.chunk, np.asarray(b.out), np.asarray(b.out_expected), offsets={"step": b.start})
            for b in boundaries
        ],
        pair=pair,
        kind=kind,
        tensor="output",
        tolerance=tolerance,
        stream_axis=1,
        axis_names=("batch", "stream", "step", "unit"),
    )
    with_states = [b for b in boundaries if b.states_expected is not None]
    states = dict(zip((b.chunk for b in with_states), _compare_states(pair, kind, tolerance, with_states, sides)))
    return [row for b, out in zip(boundaries, outputs) for row in out + states.get(b.chunk, [])]


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
        x: input ``(B, S, T, F)`` as a numpy array. The models cast it to the dtype they compute in
            (their weights'), and the default tolerances follow that dtype (read off each model's output;
            a cross comparison takes the coarser of its two), not ``x``'s: the report names both.
        chunks: chunk lengths, or a plan name from ``PLANS``.
        atol, rtol: override the defaults of docs/contract.md for both kinds of comparison.
        reference: the model the others are held against (default: the first).
        seed: seed of the "random" plan.
        whole_state_checks: compare chunked states with a whole run of the prefix at this many
            boundaries (default 8, evenly spread, the last included): each costs one run of the
            prefix (quadratic in T; JAX compiles anew for every length). ``None`` checks every
            boundary that way. Every boundary's states are also held against two regrouped passes
            ("chunked vs regrouped": each cuts at every other boundary, about 2T steps in all), and
            outputs and the cross-model comparisons, states included, always cover every boundary;
            the report says how many boundaries each comparison covered.
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
    plan = chunk_plan(chunks, x.shape[2], seed)
    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {list(models)}")
    state_map = dict(state_map or {})
    if set(state_map) - set(models):
        raise ValueError(f"state_map names {sorted(set(state_map) - set(models))}, not among the models {list(models)}")
    if state_map.get(reference):
        raise ValueError(f"state_map renames states to the reference's names; {reference!r} is the reference")
    steps = StepArgs.checked(x, resets, lengths)

    with full_precision_matmul(allow_tf32=allow_tf32) as matmul, left_as_found(models.values()):
        runs = {
            name: _run_model(as_runner(model), x, plan, state_map.get(name, {}), name, steps, whole_state_checks)
            for name, model in models.items()
        }
    dtypes = {name: run.dtype for name, run in runs.items()}
    tolerance = functools.partial(_tolerance, atol=atol, rtol=rtol)
    comparisons = _compare_all(runs, plan, reference, tolerance)
    return ParityReport(
        comparisons, plan, _coarsest(dtypes.values()), reference, matmul=matmul, input_dtype=str(x.dtype), dtypes=dtypes
    )


@dataclasses.dataclass
class _Runs:
    """One model's runs: its chunked outputs and states per boundary, the whole-sequence output, the states of
    whole prefix runs (by end step, at the boundaries checked), the regrouped passes' states per boundary, and
    the dtype it computes in (its outputs')."""

    outputs: list[np.ndarray]
    states: list[dict]
    whole: np.ndarray
    prefix_states: dict[int, dict]
    regrouped: list[dict]
    dtype: str


def _run_model(
    runner: Any,
    x: np.ndarray,
    plan: list[int],
    names: Mapping[str, str],
    model: str,
    steps: StepArgs,
    whole_state_checks: int | None,
) -> _Runs:
    """Run one model chunked, whole (and whole up to each boundary checked), and regrouped."""
    ends = [int(e) for e in np.cumsum(plan)]
    outputs, states = _run_chunked(runner, x, plan, names, model, steps)
    whole, prefix_states = _run_whole_prefixes(runner, x, _spread(ends, whole_state_checks), names, model, steps)
    regrouped = _run_regrouped(runner, x, ends, names, model, steps)
    return _Runs(outputs, states, np.asarray(whole), prefix_states, regrouped, str(np.asarray(whole).dtype))


def _coarsest(dtypes: Iterable[str]) -> str:
    """The dtype of least precision among ``dtypes`` (whose rounding a comparison must allow)."""
    return max(dtypes, key=lambda d: np.finfo(d).eps if np.issubdtype(np.dtype(d), np.floating) else np.inf)


def _tolerance(kind: str, *dtypes: str, atol: float | None, rtol: float | None) -> Any:
    """The tolerance of a ``kind`` comparison between models computing in ``dtypes`` (the coarsest decides)."""
    return default_tolerance(kind, _coarsest(dtypes), atol, rtol)


def _compare_all(runs: Mapping[str, _Runs], plan: list[int], reference: str, tolerance: Any) -> list[Comparison]:
    """Every model's chunked run against its whole and regrouped runs, then against the reference's."""
    starts = [int(s) for s in np.cumsum([0] + plan[:-1])]
    ends = [int(e) for e in np.cumsum(plan)]
    bounds = list(enumerate(zip(starts, ends)))
    comparisons: list[Comparison] = []
    for name, run in runs.items():
        same = tolerance("same", run.dtype)
        whole = [
            _Boundary(i, s, e, run.outputs[i], run.whole[:, :, s:e], run.states[i], run.prefix_states.get(e))
            for i, (s, e) in bounds
        ]
        comparisons += _compare_boundaries(
            f"{name} chunked vs whole", "same", same, whole, ("the chunked run", "the whole run")
        )
        # the regrouped passes give states only: their outputs are not compared (nor kept)
        regrouped = [_Boundary(i, s, e, None, None, run.states[i], run.regrouped[i]) for i, (s, e) in bounds]
        for rows in _compare_states(
            f"{name} chunked vs regrouped", "same", same, regrouped, ("the chunked run", "the regrouped run")
        ):
            comparisons += rows
    ref = runs[reference]
    for name, run in runs.items():
        if name == reference:
            continue
        cross = tolerance("cross", run.dtype, ref.dtype)
        against = [
            _Boundary(i, s, e, run.outputs[i], ref.outputs[i], run.states[i], ref.states[i]) for i, (s, e) in bounds
        ]
        comparisons += _compare_boundaries(
            f"{name} vs {reference}", "cross", cross, against, (repr(name), repr(reference))
        )
    return comparisons


def assert_parity(*args: Any, **kwargs: Any) -> ParityReport:
    """``check_parity``, raising an ``AssertionError`` that says how many elements differ, by how much, where."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this frame with its arguments (the input array)
    report = check_parity(*args, **kwargs)
    if not report.ok:
        raise AssertionError(report.failure_message())
    return report
