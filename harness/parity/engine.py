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
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.parity import inputs
from harness.parity.inputs import Inputs
from harness.parity.precision import full_precision_matmul
from harness.parity.report import Comparison, Operands, ParityReport, compare_each, mismatch
from harness.parity.runners import as_runner, model_device
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


def by_position(names: Sequence[str], reference: Sequence[str]) -> dict[str, str]:
    """Renames of ``names`` that match each state to the reference's state of the layer at the same position.

    A state name is ``layer.state`` (a bare ``state`` for a model with one layer); layers are taken in the
    order their states come (the order of the model's tree), and the i-th layer's states take the reference's
    i-th layer name. Where both sides name the same layers, the names match as they are (no renames); a layer
    beyond the other side's count keeps its name (and fails as unmatched); the state names within a layer are
    never changed.

    Example:
        >>> by_position(["encoder.rnn.h", "encoder.rnn.c"], ["core.h", "core.c"])
        {'encoder.rnn.h': 'core.h', 'encoder.rnn.c': 'core.c'}
    """
    layers, ref_layers = (list(dict.fromkeys(name.rpartition(".")[0] for name in n)) for n in (names, reference))
    if set(layers) == set(ref_layers):
        return {}
    to_ref = dict(zip(layers, ref_layers))
    renames = {}
    for name in names:
        layer, dot, state = name.rpartition(".")
        if layer in to_ref:
            renames[name] = f"{to_ref[layer]}.{state}" if to_ref[layer] else state
    return renames


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


def _run(runner: Any, model: str, x: Inputs, args: dict) -> np.ndarray:
    if args and not _takes_step_args(runner):
        raise ValueError(f"{model!r} cannot take resets/lengths: its runner's run(x) has no such arguments")
    return runner.run(x, **args)


def _takes_step_args(runner: Any) -> bool:
    parameters = inspect.signature(runner.run).parameters
    return {"resets", "lengths"} <= set(parameters) or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _run_chunked(
    runner: Any, x: Inputs, plan: list[int], names: Mapping[str, str], model: str, steps: StepArgs
) -> tuple:
    runner.reset()
    outputs, states, start = [], [], 0
    for n in plan:
        out = _run(runner, model, inputs.window(x, start, start + n), steps.window(start, start + n))
        outputs.append(named_outputs(out))
        states.append(_renamed(runner.states(), names, model))
        start += n
    return outputs, states


def _run_whole_prefixes(
    runner: Any, x: Inputs, ends: list[int], names: Mapping[str, str], model: str, steps: StepArgs
) -> tuple[dict[str, np.ndarray], dict[int, dict]]:
    """The whole-sequence outputs, and the states after running whole each prefix (steps ``0`` to ``end``)."""
    states, out = {}, None
    for end in ends:
        runner.reset()
        out = named_outputs(_run(runner, model, inputs.window(x, 0, end), steps.window(0, end)))
        states[end] = _renamed(runner.states(), names, model)
    assert out is not None  # ends holds the last boundary at least (_spread)
    return out, states


def _run_regrouped(
    runner: Any, x: Inputs, ends: list[int], names: Mapping[str, str], model: str, steps: StepArgs
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
            _run(runner, model, inputs.window(x, start, ends[i]), steps.window(start, ends[i]))
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
    out: dict[str, np.ndarray] | None
    out_expected: dict[str, np.ndarray] | None
    states: dict[str, np.ndarray]
    states_expected: dict[str, np.ndarray] | None


def _lacking(what: str, name: str, value: np.ndarray, sides: tuple[str, str], its: Iterable[str], hint: str) -> str:
    """The problem of a ``what`` (state or output) ``name`` that ``sides[0]`` has and ``sides[1]`` lacks."""
    return (
        f"{sides[0]} has {what} {name!r} {tuple(value.shape)}, {sides[1]} has none (its {what}s: {sorted(its)}{hint})"
    )


def _compare_states(
    pair: str, kind: str, tolerance: Any, boundaries: Sequence[_Boundary], sides: tuple[str, str]
) -> list[list[Comparison]]:
    """Every state on either side at each boundary, layer by layer and stream by stream; a name on one side only
    fails. The rows of each boundary in a list of their own; each state is compared at all boundaries at once."""
    actual_side, expected_side = sides

    def one_sided(
        b: _Boundary, tensor: str, name: str, value: np.ndarray, has: str, lacks: str, its: dict
    ) -> Comparison:
        problem = _lacking("state", name, value, (has, lacks), its, "; pass state_map= if it names them differently")
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


def _compare_outputs(
    pair: str, kind: str, tolerance: Any, boundaries: Sequence[_Boundary], sides: tuple[str, str]
) -> list[list[Comparison]]:
    """Every output (by name) at each boundary, stream by stream; an output on one side only fails. The rows of
    each boundary in a list of their own."""
    outputs = [_outputs(b) for b in boundaries]
    actual, expected = outputs[0]  # every boundary has the same outputs
    rows: list[list[Comparison]] = [[] for _ in boundaries]
    for name in dict.fromkeys([*expected, *actual]):
        if name in actual and name in expected:
            each = compare_each(
                [
                    Operands(b.chunk, out[name], want[name], offsets={"step": b.start})
                    for b, (out, want) in zip(boundaries, outputs)
                ],
                pair=pair,
                kind=kind,
                tensor=name,
                tolerance=tolerance,
                stream_axis=1,
                axis_names=_output_axes(expected[name].ndim),
            )
        else:  # one side only: a failing row at every boundary
            tensor, has = (f"missing:{name}", sides[::-1]) if name in expected else (f"unexpected:{name}", sides)
            its = actual if name in expected else expected
            each = [[_output_lacking(pair, kind, tolerance, b, name, tensor, has, its)] for b in boundaries]
        for here, more in zip(rows, each):
            here += more
    return rows


def _outputs(b: _Boundary) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A chunk boundary's outputs, both sides (the regrouped passes, which have none, never come here)."""
    assert b.out is not None and b.out_expected is not None, f"boundary {b.chunk} has no outputs"
    return b.out, b.out_expected


def _output_lacking(
    pair: str, kind: str, tolerance: Any, b: _Boundary, name: str, tensor: str, sides: tuple[str, str], its: dict
) -> Comparison:
    out, want = _outputs(b)
    value = (out if name in out else want)[name]
    problem = _lacking("output", name, value, sides, its, "")
    return mismatch(
        pair=pair, kind=kind, chunk=b.chunk, tensor=tensor, tolerance=tolerance, problem=problem, size=value.size
    )


def _compare_boundaries(
    pair: str, kind: str, tolerance: Any, boundaries: Sequence[_Boundary], sides: tuple[str, str]
) -> list[Comparison]:
    """Every output and (where ``states_expected`` is given) every carried state at each boundary, boundary by
    boundary."""
    outputs = _compare_outputs(pair, kind, tolerance, boundaries, sides)
    with_states = [b for b in boundaries if b.states_expected is not None]
    states = dict(zip((b.chunk for b in with_states), _compare_states(pair, kind, tolerance, with_states, sides)))
    return [row for b, out in zip(boundaries, outputs) for row in out + states.get(b.chunk, [])]


def _output_axes(ndim: int) -> tuple[str, ...]:
    """The axis names of an output ``(B, S, t, ...)`` in the report's locations."""
    return ("batch", "stream", "step", "unit", *(f"axis{i}" for i in range(4, ndim)))


def named_outputs(out: Any) -> dict[str, np.ndarray]:
    """A model's outputs by name, each ``(B, S, t, ...)``: one array is ``output``, a list or tuple's are
    ``output.0``, ``output.1``, ..., a dict's ``output.<key>``; an output ``(B, t, ...)`` (no stream axis, as a
    model that concatenates its streams gives) is compared as one stream.

    Example:
        >>> outputs = named_outputs({"actor": np.zeros((2, 3, 4, 5)), "critic": np.zeros((2, 4, 1))})
        >>> {name: value.shape for name, value in outputs.items()}
        {'output.actor': (2, 3, 4, 5), 'output.critic': (2, 1, 4, 1)}
    """
    if isinstance(out, Mapping):
        named = {f"output.{key}": value for key, value in out.items()}
    elif isinstance(out, (list, tuple)) and len(out) != 1:
        named = {f"output.{i}": value for i, value in enumerate(out)}
    else:
        named = {"output": out[0] if isinstance(out, (list, tuple)) else out}
    arrays = {name: np.asarray(value) for name, value in named.items()}
    for name, value in arrays.items():
        if value.ndim < 3:
            raise ValueError(
                f"output {name!r} has shape {value.shape}: expected (batch, streams, time, ...) or (batch, time, ...)"
            )
    return {name: value[:, None] if value.ndim == 3 else value for name, value in arrays.items()}


def check_parity(
    models: Mapping[str, Any],
    x: Any,
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
        x: input ``(B, S, T, F)`` as a numpy array; or a model's several inputs, a tuple/list (handed over
            positionally: torch ``forward(*x)``, a Keras model a list) or a dict (by name: ``forward(**x)``, a
            Keras model a dict), each ``(B, ·, T, ...)``: batch at axis 0 and time at axis 2, the same ``B``
            and ``T`` for all, every input cut at the same boundaries (``harness.parity.inputs``). The models
            cast floating-point inputs to the dtype they compute in (their weights'; integer and boolean
            inputs are kept), and the default tolerances follow that dtype (read off each model's output;
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
            ``StepArgs.window``); a model whose runner cannot take them is refused. With several inputs,
            give a model's resets as one of its inputs instead.
        allow_tf32: run with the frameworks' reduced-precision float32 matmuls (TF32 on a GPU)
            to see what they cost; by default the check switches them off in every framework
            involved and restores the user's settings afterwards (``report.matmul`` says which
            settings were in force).

    Raises:
        ValueError: bad ``x`` (several inputs: shapes that disagree, or given to an exported file), plan,
            ``reference``, ``whole_state_checks`` (< 1) or ``state_map``.

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
    x = inputs.inputs_checked(x)
    if inputs.is_several(x):
        _refuse_several_inputs_where_one_is_taken(models, resets, lengths)
    plan = chunk_plan(chunks, inputs.steps(x), seed)
    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {list(models)}")
    state_map = dict(state_map or {})
    if set(state_map) - set(models):
        raise ValueError(f"state_map names {sorted(set(state_map) - set(models))}, not among the models {list(models)}")
    if state_map.get(reference):
        raise ValueError(f"state_map renames states to the reference's names; {reference!r} is the reference")
    steps = StepArgs.checked(inputs.first(x), resets, lengths)

    with full_precision_matmul(allow_tf32=allow_tf32) as matmul, left_as_found(models.values()):
        runs = {
            name: _run_model(as_runner(model), x, plan, state_map.get(name, {}), name, steps, whole_state_checks)
            for name, model in models.items()
        }
    dtypes = {name: run.dtype for name, run in runs.items()}
    tolerance = functools.partial(_tolerance, atol=atol, rtol=rtol)
    comparisons = _compare_all(runs, plan, reference, tolerance, mapped=set(state_map))
    devices = {name: device for name, model in models.items() if (device := model_device(model))}
    return ParityReport(
        comparisons,
        plan,
        _coarsest(dtypes.values()),
        reference,
        matmul=matmul,
        input_dtype=inputs.dtype_of(x),
        dtypes=dtypes,
        seed=seed,
        input_shape=inputs.shape_of(x),
        devices=devices,
    )


def _refuse_several_inputs_where_one_is_taken(
    models: Mapping[str, Any], resets: np.ndarray | None, lengths: np.ndarray | None
) -> None:
    """Several inputs go to whole models: not with ``resets``/``lengths`` (which follow the one input's layout),
    nor to an exported file (which takes one input beside its states)."""
    if resets is not None or lengths is not None:
        raise ValueError(
            "resets and lengths go with one input x (B, S, T, F); a model with several inputs takes its "
            "resets as one of them"
        )
    if files := [name for name, model in models.items() if isinstance(model, (str, os.PathLike))]:
        raise ValueError(f"exported files {files} take one input x (B, S, T, F), got several inputs")


@dataclasses.dataclass
class _Runs:
    """One model's runs: its chunked outputs and states per boundary, the whole-sequence output, the states of
    whole prefix runs (by end step, at the boundaries checked), the regrouped passes' states per boundary, and
    the dtype it computes in (its outputs')."""

    outputs: list[dict[str, np.ndarray]]
    states: list[dict]
    whole: dict[str, np.ndarray]
    prefix_states: dict[int, dict]
    regrouped: list[dict]
    dtype: str


def _run_model(
    runner: Any,
    x: Inputs,
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
    return _Runs(outputs, states, whole, prefix_states, regrouped, str(next(iter(whole.values())).dtype))


def _coarsest(dtypes: Iterable[str]) -> str:
    """The dtype of least precision among ``dtypes`` (whose rounding a comparison must allow)."""
    return max(dtypes, key=lambda d: np.finfo(d).eps if np.issubdtype(np.dtype(d), np.floating) else np.inf)


def _tolerance(kind: str, *dtypes: str, atol: float | None, rtol: float | None) -> Any:
    """The tolerance of a ``kind`` comparison between models computing in ``dtypes`` (the coarsest decides)."""
    return default_tolerance(kind, _coarsest(dtypes), atol, rtol)


def _compare_all(
    runs: Mapping[str, _Runs], plan: list[int], reference: str, tolerance: Any, mapped: set[str]
) -> list[Comparison]:
    """Every model's chunked run against its whole and regrouped runs, then against the reference's (states of
    models not in ``mapped``, those without a ``state_map``, matched to the reference's by ``by_position``)."""
    starts = [int(s) for s in np.cumsum([0] + plan[:-1])]
    ends = [int(e) for e in np.cumsum(plan)]
    bounds = list(enumerate(zip(starts, ends)))
    comparisons: list[Comparison] = []
    for name, run in runs.items():
        same = tolerance("same", run.dtype)
        whole = [
            _Boundary(
                i,
                s,
                e,
                run.outputs[i],
                {k: v[:, :, s:e] for k, v in run.whole.items()},
                run.states[i],
                run.prefix_states.get(e),
            )
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
        names = {} if name in mapped else by_position(list(run.states[0]), list(ref.states[0]))
        states = [_renamed(state, names, name) for state in run.states]
        against = [_Boundary(i, s, e, run.outputs[i], ref.outputs[i], states[i], ref.states[i]) for i, (s, e) in bounds]
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
