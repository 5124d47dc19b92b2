"""Planted faults: the parity engine must catch every one and say where it is.

Each row of ``FAULTS`` is a realistic bug planted in a copy of a correct
``models_torch`` module (a wrong weight layout, a state carried wrongly, a stale
output, a rounding...). ``check_parity`` holds the faulty copy against the correct
module; the fault must fail the report, and ``ParityReport.first_failure()`` must
name the chunk boundary, the tensor ("output", "h", "c"), the stream, the layer and
(where it matters) the batch row where the fault first shows. ``TRAINING_FAULTS``
do the same for ``check_training_parity`` (they need Keras). The controls show the
un-faulted copies pass under the same tolerances, and the summary tests print the
catch rate per kind and the smallest magnitude caught.

Same-framework tolerances: float32 atol 1e-6, float64 atol 1e-13, rtol 0 (the
correct copy is bit-identical to the reference).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch

from harness import check_parity, default_tolerance
from harness.parity import ParityReport
from harness.porting import torch_class
from tests.helpers import B, F, H, S

T, PLAN = 12, [3, 3, 3, 3]
LONG_B, LONG_S, LONG_T, LONG_PLAN = 1, 2, 1_000, [100] * 10
ATOL = {dtype: default_tolerance("same", dtype).atol for dtype in ("float32", "float64")}  # rtol 0 below


class Faulty:
    """A runner (``reset``/``run``/``states``) driving a copy of a correct module through one planted fault.

    ``before(self, x)`` runs before each call, ``after(self, out)`` after it and may
    replace the output; ``self.call`` counts calls since ``reset`` and ``self.steps``
    the time steps already run.
    """

    def __init__(self, model: torch.nn.Module, before: Callable | None = None, after: Callable | None = None) -> None:
        self.model, self.before, self.after = model, before, after
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self.call, self.steps, self.memory = 0, 0, None

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            xt = torch.from_numpy(x)
            if self.before:
                self.before(self, xt)
            out = self.forward(xt)
            if self.after:
                out = self.after(self, out)
        self.call += 1
        self.steps += x.shape[2]
        return out.numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def states(self) -> dict[str, np.ndarray]:
        return {n: s.numpy() for n, s in zip(self.model.state_names, self.model.get_states())}

    def edit(self, fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        """Replace the carried states by ``fn(states)`` (a list of ``(L, B, S, H)`` copies)."""
        self.model.set_states(fn([s.clone() for s in self.model.get_states()]))


# --- the faults --------------------------------------------------------------------------------------------------


def _weights(fn: Callable[[torch.nn.Module], None]) -> Callable[[torch.nn.Module], Faulty]:
    """A fault in the weights: ``fn`` edits the copy's parameters in place."""

    def make(model: torch.nn.Module) -> Faulty:
        with torch.no_grad():
            fn(model)
        return Faulty(model)

    return make


def _swap_gates(a: int, b: int, layer: int = 0) -> Callable[[torch.nn.Module], None]:
    """Gate blocks ``a`` and ``b`` exchanged (a porting table with the wrong gate order)."""

    def fn(model: torch.nn.Module) -> None:
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            p = getattr(model.rnn, f"{kind}_l{layer}")
            blocks = list(p.data.chunk(p.shape[0] // model.hidden_size))
            blocks[a], blocks[b] = blocks[b], blocks[a]
            p.copy_(torch.cat(blocks))

    return fn


def _at_call(k: int, fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> Callable:
    """An ``after`` hook editing the carried states once, after call ``k`` (so at boundary ``k``)."""

    def after(r: Faulty, out: torch.Tensor) -> torch.Tensor:
        if r.call == k:
            r.edit(fn)
        return out

    return after


def _every_call(fn: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> Callable:
    def after(r: Faulty, out: torch.Tensor) -> torch.Tensor:
        r.edit(fn)
        return out

    return after


def _add(eps: float, state: int = 0, layer: int = 0, stream: int | None = None, batch: int | None = None) -> Callable:
    """``states[state][layer, batch, stream] += eps`` (all batch rows / streams where None)."""

    def fn(states: list[torch.Tensor]) -> list[torch.Tensor]:
        index = (layer, slice(None) if batch is None else batch, slice(None) if stream is None else stream)
        states[state][index] += eps
        return states

    return fn


def _hooks(before: Callable | None = None, after: Callable | None = None) -> Callable[[torch.nn.Module], Faulty]:
    return lambda model: Faulty(model, before, after)


def _lagged_state(r: Faulty, out: torch.Tensor) -> torch.Tensor:
    """The carried state taken from the output one step too early (``out[:, :, -2]`` instead of ``-1``)."""
    r.model.set_states([out[:, :, -2].unsqueeze(0)])
    return out


def _swap_streams(states: list[torch.Tensor]) -> list[torch.Tensor]:
    return [s[:, :, [2, 1, 0]] for s in states]


def _fold_transposed(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Streams unfolded from the batch in the wrong order: row ``b*S + s`` read back as ``s*B + b``."""
    return [s.reshape(s.shape[0], S, B, H).transpose(1, 2) for s in states]


def _leak_row(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Batch row 0's state leaking into row 1 (a wrong broadcast in a masked update)."""
    states[0][:, 1] += 0.1 * states[0][:, 0]
    return states


def _neighbour_state(states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stream 2 continues from stream 1's state (an off-by-one stream index when storing)."""
    states[0][:, :, 2] = states[0][:, :, 1]
    return states


def _shift_output(r: Faulty, out: torch.Tensor) -> torch.Tensor:
    """Outputs one step late: each chunk starts with the previous chunk's last step."""
    last = torch.zeros_like(out[:, :, :1]) if r.memory is None else r.memory
    r.memory = out[:, :, -1:]
    return torch.cat([last, out[:, :, :-1]], dim=2)


def _stale_output(r: Faulty, out: torch.Tensor) -> torch.Tensor:
    """Right state, but the output buffer of the previous chunk handed back."""
    previous, r.memory = r.memory, out
    return out if previous is None or previous.shape != out.shape else previous


def _output_nudge(eps: float, call: int, stream: int) -> Callable:
    def after(r: Faulty, out: torch.Tensor) -> torch.Tensor:
        if r.call == call:
            out = out.clone()
            out[:, stream, 1] += eps
        return out

    return after


def _other_activation(model: torch.nn.Module) -> Faulty:
    """The RNN built with relu where the reference has tanh (the Keras activation lost in porting)."""
    twin = torch_class("rnn")(F, H, S, nonlinearity="relu")
    twin.load_state_dict(model.state_dict())
    return Faulty(twin)


class _AfterStep(Faulty):
    """The state of stream 1 nudged by 1e-3 once 550 steps have run (a slow counter overflowing, say)."""

    AT = 550

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = self.AT - self.steps
        if not 0 < cut < x.shape[2]:
            return self.model(x)
        first = self.model(x[:, :, :cut])
        self.edit(_add(1e-3, stream=1))
        return torch.cat([first, self.model(x[:, :, cut:])], dim=2)


@dataclasses.dataclass(frozen=True)
class Fault:
    """One planted fault and where the report must locate it.

    ``streams``: the streams it may name (None: it hits every stream); ``tensors``:
    the tensors it may name (an LSTM fault in both gates' paths hits ``h`` and ``c``).
    """

    name: str
    kind: str
    make: Callable[[torch.nn.Module], Faulty]
    chunk: int
    tensors: tuple[str, ...] = ("h",)
    streams: tuple[int, ...] | None = None
    layer: int = 0
    batch: int | None = None
    step: int | None = None
    magnitude: float | None = None
    cell: str = "gru"
    layers: int = 1
    dtype: str = "float32"
    long: bool = False


HC = ("h", "c")
FAULTS = [
    # weights: every stream, from the first chunk on
    Fault("lstm gate order i<->f", "weights", _weights(_swap_gates(0, 1)), 0, HC, cell="lstm"),
    Fault("gru gate order r<->z", "weights", _weights(_swap_gates(0, 1)), 0),
    Fault("gru recurrent bias dropped", "weights", _weights(lambda m: m.rnn.bias_hh_l0.zero_()), 0),
    Fault("rnn bias doubled (sum ported into bias_ih)", "weights", _weights(lambda m: m.rnn.bias_ih_l0.add_(
        m.rnn.bias_hh_l0)), 0, cell="rnn"),
    Fault("lstm forget-gate bias dropped", "weights", _weights(lambda m: m.rnn.bias_ih_l0[H : 2 * H].zero_()), 0, HC,
          cell="lstm"),
    Fault("rnn recurrent kernel transposed", "weights", _weights(lambda m: m.rnn.weight_hh_l0.copy_(
        m.rnn.weight_hh_l0.T.clone())), 0, cell="rnn"),
    Fault("wrong activation (relu for tanh)", "weights", _other_activation, 0, cell="rnn"),
    # carried state
    Fault("state carried with one step of lag", "state carry", _hooks(after=_lagged_state), 0),
    Fault("state not carried across boundary 1", "state carry", _hooks(before=lambda r, x: r.call == 2
          and r.model.reset_states()), 2),
    Fault("stream 1 reset on every call", "state carry", _hooks(before=lambda r, x: r.model.reset_states(
        streams=[1])), 1, streams=(1,)),
    Fault("streams 0 and 2 swapped at boundary 1", "streams", _hooks(after=_at_call(1, _swap_streams)), 1,
          streams=(0, 2)),
    Fault("stream 2 continues from stream 1's state", "streams", _hooks(after=_at_call(1, _neighbour_state)), 1,
          streams=(2,)),
    Fault("streams unfolded from the batch in the wrong order", "streams", _hooks(after=_every_call(
        _fold_transposed)), 0),
    Fault("batch row 0's state leaking into row 1", "streams", _hooks(after=_every_call(_leak_row)), 0, batch=1),
    Fault("lstm fault only in c (stream 2)", "state carry", _hooks(after=_at_call(1, _add(1e-3, state=1, stream=2))),
          1, ("c",), streams=(2,), cell="lstm"),
    Fault("float64 state rounded to float32", "precision", _hooks(after=_every_call(
        lambda st: [s.float().double() for s in st])), 0, dtype="float64"),
    # outputs
    Fault("output shifted by one step", "output", _hooks(after=_shift_output), 0, ("output",)),
    Fault("right state, output of the previous chunk", "output", _hooks(after=_stale_output), 1, ("output",)),
    Fault("float64 output rounded to float32", "precision", _hooks(after=lambda r, out: out.float().double()), 0,
          ("output",), dtype="float64"),
    # layers
    Fault("weight fault only in layer 2 of 2", "layers", _weights(lambda m: m.rnn.weight_hh_l1[0, 0].add_(1e-3)), 0,
          layer=1, layers=2),
    Fault("state fault only in layer 2 of 2 (stream 1)", "layers", _hooks(after=_at_call(2, _add(1e-3, layer=1,
          stream=1))), 2, streams=(1,), layer=1, layers=2),
    Fault("weight fault in layer 1 of 2 (shows in both)", "layers", _weights(lambda m: m.rnn.weight_ih_l0[0, 0].add_(
        1e-3)), 0, layers=2),
    Fault("lstm c fault in layer 2 of 2", "layers", _hooks(after=_at_call(1, _add(1e-3, state=1, layer=1,
          stream=0))), 1, ("c",), streams=(0,), layer=1, layers=2, cell="lstm"),
    # time
    # the GRU forgets the nudge within 50 steps: the boundary states are right again, the output at step 550 is not
    Fault("fault after step 550 of 1,000 (stream 1)", "time", _AfterStep, 5, ("output",), streams=(1,), step=550,
          long=True),
    # magnitudes: a state nudged once, at boundary 2 of stream 1; an output nudged once
    *(
        Fault(f"state nudged by {eps:g} ({dtype})", "magnitude", _hooks(after=_at_call(2, _add(eps, stream=1))), 2,
              streams=(1,), magnitude=eps, dtype=dtype)
        for eps, dtype in ((1e-3, "float32"), (1e-5, "float32"), (2e-6, "float32"), (2e-13, "float64"))
    ),
    Fault("output nudged by 2e-06 (float32)", "magnitude", _hooks(after=_output_nudge(2e-6, 1, 2)), 1, ("output",),
          streams=(2,), magnitude=2e-6),
]  # fmt: skip


def _config(fault: Fault) -> tuple:
    return (fault.cell, fault.layers, fault.dtype, fault.long)


def _setup(config: tuple) -> tuple[torch.nn.Module, np.ndarray, list[int]]:
    """The correct module, the input and the chunk plan of a configuration."""
    cell, layers, dtype, long = config
    batch, streams, steps, plan = (LONG_B, LONG_S, LONG_T, LONG_PLAN) if long else (B, S, T, PLAN)
    torch.manual_seed(0)
    model = torch_class(cell)(F, H, streams, num_layers=layers, dtype=getattr(torch, dtype))
    x = np.random.default_rng(0).standard_normal((batch, streams, steps, F)).astype(dtype)
    return model, x, plan


def _check(config: tuple, make: Callable[[torch.nn.Module], Faulty]) -> ParityReport:
    model, x, plan = _setup(config)
    faulty = make(copy.deepcopy(model))
    return check_parity({"reference": model, "faulty": faulty}, x, plan, atol=ATOL[config[2]], rtol=0.0)


@functools.cache
def _outcome(name: str) -> ParityReport:
    """The report of one fault (cached: the summary reuses the parametrized tests' runs)."""
    fault = next(f for f in FAULTS if f.name == name)
    return _check(_config(fault), fault.make)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_caught_and_located(fault: Fault) -> None:
    report = _outcome(fault.name)
    assert not report.ok, f"{fault.name}: not caught\n{report.table()}"
    first = report.first_failure()
    located = (first.chunk, first.tensor, first.stream, first.layer, first.where.get("batch"))
    context = f"{fault.name}: located at {located}\n{report.failure_message()}"
    assert first.chunk == fault.chunk, context
    assert first.tensor in fault.tensors, context
    assert first.layer == (None if first.tensor == "output" else fault.layer), context
    failing_now = [c for c in report.failures() if c.chunk == fault.chunk]
    if fault.streams is not None:
        assert {c.stream for c in failing_now} <= set(fault.streams), context
        assert first.stream in fault.streams, context
    else:
        assert {c.stream for c in failing_now} == set(range(S)), context
    if fault.batch is not None:
        assert first.where["batch"] == fault.batch, context
    if fault.step is not None:
        assert first.where["step"] == fault.step, context
    if fault.tensors == ("output",):
        assert all(c.tensor == "output" for c in report.failures()), f"{fault.name}: states should be right"
    if fault.layers == 2 and fault.layer == 1:
        assert all(c.layer != 0 for c in report.failures()), f"{fault.name}: layer 1 of 2 should be right"
    if fault.magnitude is not None and fault.tensors != ("output",):
        assert first.max_abs == pytest.approx(fault.magnitude, rel=0.05), context
    assert f"tensor {first.tensor!r}, chunk {first.chunk}" in report.failure_message()


@pytest.mark.parametrize("config", sorted({_config(f) for f in FAULTS}), ids=str)
def test_control_unfaulted_copy_passes(config: tuple) -> None:
    """The same harness around a copy with no fault passes: the suite does not just fail everything."""
    report = _check(config, Faulty)
    assert report.ok, report.failure_message()
    assert max(c.max_abs for c in report.comparisons if c.kind == "cross") == 0.0  # the copy is bit-identical


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_control_nudge_below_the_tolerance_passes(dtype: str) -> None:
    """Half the tolerance is not caught: the magnitude faults sit just above the line, not far from it."""
    report = _check(("gru", 1, dtype, False), _hooks(after=_at_call(2, _add(ATOL[dtype] / 2, stream=1))))
    assert report.ok and 0 < report.max_abs_error <= ATOL[dtype]


def _print_summary(title: str, rows: list[tuple[str, str, bool, float | None]]) -> None:
    kinds: dict[str, list[bool]] = {}
    for _, kind, caught, _ in rows:
        kinds.setdefault(kind, []).append(caught)
    caught_magnitudes = [m for _, _, caught, m in rows if caught and m is not None]
    lines = [f"\n{title}: {sum(c for *_, c, _ in rows)}/{len(rows)} caught"]
    lines += [f"  {kind:<12} {sum(c)}/{len(c)} ({100 * sum(c) / len(c):.0f}%)" for kind, c in kinds.items()]
    if caught_magnitudes:
        lines.append(f"  smallest magnitude caught: {min(caught_magnitudes):g}")
    print("\n".join(lines))


def test_catch_rate_is_100_percent(capsys: pytest.CaptureFixture) -> None:
    rows = [(f.name, f.kind, not _outcome(f.name).ok, f.magnitude) for f in FAULTS]
    with capsys.disabled():
        _print_summary("planted faults (check_parity)", rows)
    assert len(FAULTS) >= 25 and all(caught for _, _, caught, _ in rows)
    assert min(m for *_, m in rows if m is not None) <= 2e-6


# --- training: state detached where it should not be, and not detached where it should --------------------------


def _training_faults() -> dict[str, type]:
    from models_torch import MultiStateGRU

    class DetachedMidChunk(MultiStateGRU):
        """Truncates BPTT inside each chunk: runs it in two halves, the carried state detached between."""

        def forward(self, x, stream=None, **kwargs):
            cut = x.shape[2] // 2
            return torch.cat([super().forward(x[:, :, :cut]), super().forward(x[:, :, cut:])], dim=2)

    class GradientIntoPreviousChunk(MultiStateGRU):
        """Not detached: the carried state is recomputed from the previous chunk with the graph kept."""

        def reset_states(self, *args, **kwargs):
            super().reset_states(*args, **kwargs)
            self.previous = None

        def forward(self, x, stream=None, **kwargs):
            previous = getattr(self, "previous", None)
            start = self.get_states()[0] if self.batch_size is not None else x.new_zeros(1, x.shape[0], S, H)
            if previous is None or not self.training:
                out = super().forward(x)
            else:
                _, (h0,) = super().forward(previous[0], initial_state=(previous[1],), return_state=True)
                out, new = super().forward(x, initial_state=(h0,), return_state=True)
                self._store(new)
            self.previous = (x, start.detach())
            return out

    return {"state detached mid-chunk": DetachedMidChunk, "state not detached across chunks": GradientIntoPreviousChunk}


TRAINING_FAULTS = {"state detached mid-chunk": 1, "state not detached across chunks": 1}  # name -> first bad step


@functools.cache
def _training_outcome(name: str | None):
    from harness import check_training_parity
    from models_torch import MultiStateGRU

    cls = MultiStateGRU if name is None else _training_faults()[name]
    torch.manual_seed(0)
    module = cls(F, H, S, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((B, S, T, F)), rng.standard_normal((B, S, T, H))
    return check_training_parity(module, x, target, "halves", lr=0.3, steps=4)


@pytest.mark.keras
@pytest.mark.parametrize("name", list(TRAINING_FAULTS))
def test_training_fault_is_caught_at_the_right_step(name: str) -> None:
    report = _training_outcome(name)
    assert not report.ok, report.table()
    assert report.first_bad_step == TRAINING_FAULTS[name], report.table()
    assert report.max_rel_weight_error > report.rtol, report.table()


@pytest.mark.keras
def test_training_control_and_catch_rate(capsys: pytest.CaptureFixture) -> None:
    control = _training_outcome(None)
    assert control.ok and control.first_bad_step is None, control.table()
    rows = [(name, "training", not _training_outcome(name).ok, None) for name in TRAINING_FAULTS]
    with capsys.disabled():
        _print_summary("planted faults (check_training_parity)", rows)
    assert all(caught for _, _, caught, _ in rows)


# --- one model alone: a state fault at a single boundary that the whole-prefix runs do not sample ----------------


class _ReportsWrongStateOnce(Faulty):
    """Carries the right state, but hands out ``h`` of stream 1 off by 1e-3 after call 9 (boundary 10 of 40)."""

    AT_CALL = 9

    def states(self) -> dict[str, np.ndarray]:
        states = super().states()
        if self.call == self.AT_CALL + 1:
            states["h"] = states["h"].copy()
            states["h"][:, :, 1] += 1e-3
        return states


def test_single_boundary_state_fault_is_caught_alone_at_40_one_step_chunks() -> None:
    """A one-model check at T=40 in one-step chunks compares states at all 40 boundaries, not just the 8 that the
    whole-prefix runs sample (boundary 10 is not one of them)."""
    torch.manual_seed(0)
    model = torch_class("gru")(F, H, S)
    x = np.random.default_rng(0).standard_normal((B, S, 40, F)).astype("float32")
    report = check_parity({"faulty": _ReportsWrongStateOnce(model)}, x, "ones")
    sampled = {c.chunk for c in report.comparisons if c.pair == "faulty chunked vs whole" and c.tensor == "h"}
    assert _ReportsWrongStateOnce.AT_CALL not in sampled and len(sampled) == 8
    assert not report.ok, f"not caught:\n{report.table()}"
    first = report.first_failure()
    assert (first.chunk, first.tensor, first.stream) == (9, "h", 1), report.failure_message()
    assert first.max_abs == pytest.approx(1e-3, rel=0.01), report.failure_message()
    rows = {(r["pair"], r["tensor"]): r for r in report.summary()}
    assert rows[("faulty chunked vs regrouped", "h")]["boundaries"] == 40
    assert "faulty chunked vs whole h 8/40; faulty chunked vs regrouped h 40/40" in report.failure_message()
    assert " 8/40 " in report.table() and " 40/40 " in report.table()
