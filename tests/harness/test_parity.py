"""The parity engine, its reports and the command line (torch side; no Keras needed)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import assert_parity, check_parity, chunk_plan
from harness.cli import main
from harness.porting import torch_class
from tests.helpers import B, F, H, S, T, random_input


class PerStreamCopies:
    """A per-stream loop where every stream has its own copy of the weights (a Runner)."""

    def __init__(self, rnn: torch.nn.LSTM, streams: int) -> None:
        self.copies = [torch.nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True) for _ in range(streams)]
        for c in self.copies:
            c.load_state_dict(rnn.state_dict())
        self.reset()

    def reset(self) -> None:
        self.hc = [None] * len(self.copies)

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            outs = []
            for s, lstm in enumerate(self.copies):
                out, self.hc[s] = lstm(torch.from_numpy(x[:, s]), self.hc[s])
                outs.append(out)
        return torch.stack(outs, 1).numpy()

    def states(self) -> dict[str, np.ndarray]:
        return {n: torch.stack([hc[i] for hc in self.hc], 2).numpy() for i, n in enumerate("hc")}


def test_engine_catches_a_planted_weight_error_and_names_the_stream(rng):
    torch.manual_seed(0)
    model = torch_class("lstm")(F, H, S)
    copies = PerStreamCopies(model.rnn, S)
    x = random_input(rng, (B, S, T, F))
    assert check_parity({"ours": model, "copies": copies}, x, "random").ok
    with torch.no_grad():
        copies.copies[2].weight_hh_l0[5, 1] += 1e-3
    report = check_parity({"ours": model, "copies": copies}, x, "random")
    assert not report.ok
    assert {c.stream for c in report.failures()} == {2}
    assert {c.pair for c in report.failures()} == {"copies vs ours"}
    with pytest.raises(
        AssertionError, match=r"(?s)Mismatched elements: \d+ / \d+.*Greatest absolute difference: .* stream 2"
    ):
        assert_parity({"ours": model, "copies": copies}, x, "random")


def test_report_markdown_has_the_table_columns_and_the_environment(rng):
    """``markdown()`` holds the columns of ``table()`` (an rtol beside max rel), the failure of a planted fault,
    and the environment; the matmul settings show in ``table()`` only when they were not full float32."""
    torch.manual_seed(0)
    model, other = torch_class("gru")(F, H, S), torch_class("gru")(F, H, S)
    x = random_input(rng, (B, S, T, F))
    report = check_parity({"a": model, "b": other}, x, "halves")
    markdown, table = report.markdown(), report.table()
    columns = ["pair", "tensor", "max abs", "max rel", "atol", "rtol", "bad/total", "boundaries", "result"]
    markdown_header = next(line for line in markdown.splitlines() if line.startswith("| pair"))
    assert [c.strip() for c in markdown_header.strip("|").split("|")] == columns, markdown
    assert re.split(r"\s{2,}", table.splitlines()[1].strip()) == columns, table
    for expected in (
        "### Parity: FAIL",
        "| max rel | atol | rtol |",
        "Greatest absolute difference",
        "- chunk plan: 2 chunks",
        f"- input shape: {x.shape}",
        "- seed: 0",
        "- tolerances: float32: atol",
        f"- packages: numpy {np.__version__}",
    ):
        assert expected in markdown, (expected, markdown)
    rtol = report.summary()[0]["rtol"]
    assert f"| {rtol:.3g} |" in markdown, markdown
    assert "matmul" not in table, table
    assert "not full float32" in check_parity({"a": model}, x, "halves", allow_tf32=True).table()


def test_report_table_and_json(rng):
    torch.manual_seed(0)
    model, other = torch_class("gru")(F, H, S), torch_class("gru")(F, H, S)
    report = check_parity({"a": model, "b": other}, random_input(rng, (B, S, T, F)), "halves")
    assert "FAIL" in report.table() and "ok (bit-identical)" in report.table()
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["plan"] == [T // 2, T - T // 2]
    worst = max(data["comparisons"], key=lambda c: c["max_abs"])
    assert worst["max_abs"] == pytest.approx(report.max_abs_error)
    assert set(worst["where"]) >= {"chunk", "stream", "unit"}


def test_tolerance_override_is_used(rng):
    torch.manual_seed(0)
    model = torch_class("rnn")(F, H, S)
    x = random_input(rng, (B, S, T, F))
    noisy = PerturbedRunner(model, 1e-7)
    assert not check_parity({"m": model, "noisy": noisy}, x, "halves", atol=1e-9).ok
    assert check_parity({"m": model, "noisy": noisy}, x, "halves", atol=1e-6).ok


class PerturbedRunner:
    """Another model's runner whose outputs are off by ``eps``."""

    def __init__(self, model, eps: float) -> None:
        from harness.parity.runners import TorchRunner

        self.inner, self.eps = TorchRunner(model), eps

    def reset(self) -> None:
        self.inner.reset()

    def run(self, x):
        return self.inner.run(x) + np.float32(self.eps)

    def states(self):
        return self.inner.states()


@pytest.mark.parametrize(
    ("chunks", "message"), [([3, 3], "sum to 16"), ([0, 16], ">= 1"), ("thirds", "unknown chunk plan")]
)
def test_bad_chunk_plans_are_refused(chunks, message):
    with pytest.raises(ValueError, match=message):
        chunk_plan(chunks, 16)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    streams=st.integers(1, 4),
    steps=st.integers(1, 20),
    features=st.integers(1, 4),
    units=st.integers(1, 6),
    cell=st.sampled_from(["lstm", "gru", "rnn"]),
    layers=st.integers(1, 2),
    plan_seed=st.integers(0, 1000),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_property_chunked_equals_whole_for_any_shape_and_plan(
    batch, streams, steps, features, units, cell, layers, plan_seed, dtype
):
    torch.manual_seed(plan_seed)
    model = torch_class(cell)(features, units, streams, num_layers=layers, dtype=getattr(torch, dtype))
    x = np.random.default_rng(plan_seed).standard_normal((batch, streams, steps, features)).astype(dtype)
    assert_parity(
        {"torch": model, "per-band loop": StreamLoop(model)}, x, "random", seed=plan_seed, whole_state_checks=None
    )


class StreamLoop:
    """The reference: the same module called once per stream (``stream=k``), in reverse order."""

    def __init__(self, model) -> None:
        self.model = model

    def reset(self) -> None:
        self.model.reset_states()

    def run(self, x):
        with torch.no_grad():
            outs = {k: self.model(torch.from_numpy(x[:, k]), stream=k) for k in reversed(range(x.shape[1]))}
        return torch.stack([outs[k] for k in range(x.shape[1])], 1).numpy()

    def states(self):
        return {n: s.numpy() for n, s in zip(self.model.state_names, self.model.get_states())}


def test_cli_parity_prints_a_summary_and_writes_every_row(tmp_path, capsys):
    """One console line per backend, cell and dtype (with its worst error); every row in --json and --report."""
    out, md = tmp_path / "parity.json", tmp_path / "parity.md"
    args = ["parity", "--backend", "torch", "--cell", "gru", "--dtype", "float64", "--json", str(out)]
    code = main([*args, "--report", str(md)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    assert data["ok"] and {r["plan"] for r in data["rows"]} == {"whole", "halves", "random", "ones"}
    worst = max(r["max_abs"] for r in data["rows"])
    lines = [line.split() for line in printed.splitlines() if line.startswith("torch ")]
    assert [line[:5] for line in lines] == [
        ["torch", "gru", "float64", f"{len(data['rows'])}/{len(data['rows'])}", f"{worst:.3g}"]
    ], printed
    assert "PASS" in printed
    report = md.read_text()
    table = [line for line in report.splitlines() if line.startswith("| torch | gru | float64 | ")]
    assert len(table) == 1 + len(data["rows"]), report  # the summary line, then every row
    for expected in ("| max abs | max rel | atol | rtol |", "- packages: numpy", "- seeds:", "- input shape:"):
        assert expected in report, (expected, report)


def test_cli_parity_with_episodes(capsys):
    """Streams restarting inside chunks: the job passes, and refuses a rate outside [0, 1] (exported files:
    ``test_main_job_covers_the_reset_input_of_exported_files``)."""
    assert main(["parity", "--backend", "torch", "--cell", "lstm", "--dtype", "float64", "--episodes", "0.2"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["parity", "--episodes", "1.5"]) == 1
    assert "must lie in [0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("episodes", [0.0, 0.2])
def test_main_job_covers_the_reset_input_of_exported_files(episodes):
    """A format with a reset input runs its plain file and its reset-input file (random resets) against torch in
    every plan; with episodes, the reset-input file alone on the episodes' resets. Every row within 1e-6."""
    pytest.importorskip("onnxruntime")
    from harness import scenarios
    from harness.parity.engine import PLANS

    rows = list(scenarios.run_backend("onnx", ["gru"], ["float32"], streams=2, episodes=episodes))
    backends = ["onnx+reset"] if episodes else ["onnx", "onnx+reset"]
    assert sorted({r["backend"] for r in rows}) == backends
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        assert {r["plan"] for r in mine} == set(PLANS) and all(r["ok"] for r in mine), mine
        assert max(r["max_abs"] for r in mine) <= 1e-6, max(r["max_abs"] for r in mine)


def test_entry_point_refusals(tmp_path, capsys):
    from harness.porting import convert_file
    from harness.porting.files import file_kind

    with pytest.raises(ValueError, match="unsupported weight file 'w.onnx'"):
        file_kind("w.onnx")
    with pytest.raises(ValueError, match="are both torch files"):
        convert_file(tmp_path / "a.pt", tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=r"x must be \(batch, streams, time, features\)"):
        check_parity({"m": torch_class("gru")(F, H, S)}, np.zeros((B, T, F), "float32"), "halves")
    assert main(["port", str(tmp_path / "missing.pt"), str(tmp_path / "out.keras")]) == 1
    assert "no such weight file" in capsys.readouterr().err


class RenamedStates:
    """A runner of ``model`` whose states are renamed, offset by ``shift`` and optionally trimmed or dropped."""

    def __init__(self, model, names: dict[str, str], shift: float = 0.0, drop=(), trim: bool = False) -> None:
        from harness.parity.runners import TorchRunner

        self.inner, self.names, self.shift, self.drop, self.trim = TorchRunner(model), names, shift, drop, trim

    def reset(self) -> None:
        self.inner.reset()

    def run(self, x):
        return self.inner.run(x)

    def states(self):
        return {
            self.names.get(n, n): (s[..., :-1] if self.trim else s) + self.shift
            for n, s in self.inner.states().items()
            if n not in self.drop
        }


def _strict_case(rng, cell="lstm"):
    torch.manual_seed(0)
    return torch_class(cell)(F, H, S), random_input(rng, (B, S, T, F))


def test_states_named_differently_fail_even_when_off_by_1e3(rng):
    model, x = _strict_case(rng)
    renamed = RenamedStates(model, {"h": "hidden", "c": "cell"}, shift=1e3)
    report = check_parity({"ref": model, "renamed": renamed}, x, "halves")
    assert not report.ok
    tensors = {c.tensor for c in report.failures()}
    assert tensors == {"missing:h", "missing:c", "unexpected:hidden", "unexpected:cell"}
    first = report.first_failure()
    assert first.problem and first.chunk == 0 and first.pair == "renamed vs ref"
    assert "has state 'h'" in report.failure_message() or "has state 'c'" in report.failure_message()
    assert "missing:" in report.failure_message() and "state_map" in report.failure_message()
    assert "FAIL: 'ref' has state" in report.table()


def test_state_map_matches_them_and_then_the_1e3_is_caught(rng):
    model, x = _strict_case(rng)
    names = {"renamed": {"hidden": "h", "cell": "c"}}
    assert check_parity(
        {"ref": model, "renamed": RenamedStates(model, {"h": "hidden", "c": "cell"})}, x, "halves", state_map=names
    ).ok
    report = check_parity(
        {"ref": model, "renamed": RenamedStates(model, {"h": "hidden", "c": "cell"}, shift=1e3)},
        x,
        "halves",
        state_map=names,
    )
    assert not report.ok and {c.tensor for c in report.failures()} == {"h", "c"}
    assert report.max_abs_error == pytest.approx(1e3)
    assert all(not c.problem for c in report.comparisons)


def test_a_missing_state_fails(rng):
    model, x = _strict_case(rng)
    report = check_parity({"ref": model, "no c": RenamedStates(model, {}, drop=("c",))}, x, [4, 4, T - 8])
    assert not report.ok
    assert {(c.tensor, c.chunk) for c in report.failures()} == {("missing:c", i) for i in range(3)}
    assert f"'ref' has state 'c' {(1, B, S, H)}, 'no c' has none" in report.failure_message()
    # the reference lacking a state the model has fails too
    report = check_parity({"no c": RenamedStates(model, {}, drop=("c",)), "ref": model}, x, "halves")
    assert {c.tensor for c in report.failures()} == {"unexpected:c"}
    data = json.loads(report.to_json(), parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))
    assert data["ok"] is False and data["max_abs_error"] == "inf"


def test_a_state_of_another_shape_fails_without_crashing(rng):
    model, x = _strict_case(rng, "gru")
    report = check_parity({"ref": model, "trimmed": RenamedStates(model, {}, trim=True)}, x, "halves")
    assert not report.ok
    (first,) = {(c.tensor, c.problem) for c in report.failures()}
    shapes = f"shape {(1, B, S, H - 1)}, expected {(1, B, S, H)}"
    assert first == ("h", shapes)
    assert f"Problem: {shapes}" in report.failure_message()
    with pytest.raises(AssertionError, match="tensor 'h'"):
        assert_parity({"ref": model, "trimmed": RenamedStates(model, {}, trim=True)}, x, "halves")


def test_states_of_multistate_layers_are_matched_by_position(rng):
    """Runners name states ``layer.h``; layers are matched by position in the tree (their names may differ, as a
    torch path and a Keras layer name do), the state names within a layer must match, a layer too many fails."""
    model, x = _strict_case(rng)

    def named(**names: str) -> RenamedStates:
        return RenamedStates(model, names)

    first = named(h="first.h", c="first.c")
    assert check_parity({"first": first, "second": named(h="second.h", c="second.c")}, x, "halves").ok
    report = check_parity({"first": first, "hidden": named(h="second.hidden", c="second.c")}, x, "halves")
    assert {c.tensor for c in report.failures()} == {"missing:first.h", "unexpected:first.hidden"}
    report = check_parity({"first": first, "two": named(h="a.h", c="b.c")}, x, "halves")
    assert {c.tensor for c in report.failures()} == {"missing:first.c", "unexpected:b.c"}
    # state_map overrides the positions
    state_map = {"two": {"a.h": "first.h", "b.c": "first.c"}}
    assert check_parity({"first": first, "two": named(h="a.h", c="b.c")}, x, "halves", state_map=state_map).ok


def test_bad_state_map_and_whole_state_checks_are_refused(rng):
    model, x = _strict_case(rng, "gru")
    with pytest.raises(ValueError, match=r"state_map names \['other'\]"):
        check_parity({"a": model}, x, "halves", state_map={"other": {"h": "h"}})
    with pytest.raises(ValueError, match="is the reference"):
        check_parity({"a": model, "b": model}, x, "halves", state_map={"a": {"h": "x"}})
    with pytest.raises(ValueError, match="gives two of its states the name 'h'"):
        check_parity({"a": model, "b": _LSTMish(model)}, x, "halves", state_map={"b": {"g": "h"}})
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"whole_state_checks must be an int >= 1 .* or None \(all\)"):
            check_parity({"a": model}, x, "halves", whole_state_checks=bad)


class _LSTMish(RenamedStates):
    def __init__(self, model) -> None:
        super().__init__(model, {})

    def states(self):
        (h,) = self.inner.states().values()
        return {"h": h, "g": h}


class _CountingRunner(RenamedStates):
    def __init__(self, model) -> None:
        super().__init__(model, {})
        self.lengths: list[int] = []

    def run(self, x):
        self.lengths.append(x.shape[2])
        return super().run(x)


def test_whole_state_checks_default_is_8_spread_boundaries_and_none_means_all(rng):
    model = torch_class("gru")(F, H, S)
    x = random_input(rng, (1, S, 40, F))
    runner = _CountingRunner(model)
    report = check_parity({"m": runner}, x, "ones")
    prefixes, regrouped = runner.lengths[40:48], runner.lengths[48:]
    assert len(prefixes) == 8 and prefixes[-1] == 40
    assert regrouped == [1] + [2] * 19 + [2] * 20  # two passes, each cutting at every other boundary
    assert {c.chunk for c in report.comparisons if c.tensor == "output"} == set(range(40))

    def state_chunks(report, pair):
        return {c.chunk for c in report.comparisons if c.tensor == "h" and c.pair == pair}

    assert state_chunks(report, "m chunked vs whole") == {n - 1 for n in prefixes}
    assert state_chunks(report, "m chunked vs regrouped") == set(range(40))
    runner.lengths.clear()
    report = check_parity({"m": runner}, x, "ones", whole_state_checks=None)
    assert runner.lengths[40:80] == list(range(1, 41))
    assert state_chunks(report, "m chunked vs whole") == set(range(40))


@pytest.mark.parametrize("x_dtype, model_dtype", [("float64", "float32"), ("float32", "float64")])
def test_tolerances_follow_the_dtype_the_models_compute_in(x_dtype, model_dtype, rng):
    """numpy's default float64 input to a float32 model: float32 tolerances, and the report says x was cast."""
    torch.manual_seed(0)
    model = torch_class("lstm")(F, H, S, dtype=getattr(torch, model_dtype))
    x = random_input(rng, (B, S, 20, F), x_dtype)
    report = check_parity({"m": model}, x, "ones")
    assert report.ok, report.failure_message()
    assert (report.dtype, report.input_dtype, report.dtypes) == (model_dtype, x_dtype, {"m": model_dtype})
    assert {c.tolerance.atol for c in report.comparisons} == {1e-6 if model_dtype == "float32" else 1e-13}
    assert f"x is {x_dtype}, cast by the models" in report.table()
    failing = check_parity({"m": model}, x, "ones", atol=1e-30)  # any rounding difference fails now
    message = failing.failure_message()
    assert f"Tolerances for {model_dtype}, the dtype the models compute in (m {model_dtype}); x is {x_dtype}" in message


def _rows_one_by_one(items: list, tolerance) -> list[list[tuple]]:
    """Each state item's rows computed plainly, slice by slice: (chunk, stream, layer, max abs, bad, where)."""
    out = []
    for item in items:
        if item.actual.shape != item.expected.shape:
            out.append([(item.chunk, None, None, float("inf"), max(item.actual.size, item.expected.size))])
            continue
        rows = []
        for stream in range(item.actual.shape[2]):
            for layer in range(item.actual.shape[0]):
                a, e = item.actual[layer, :, stream].astype(float), item.expected[layer, :, stream].astype(float)
                diff = np.where(np.isnan(a - e), np.inf, np.abs(a - e))
                batch, unit = np.unravel_index(int(np.argmax(diff)), diff.shape)
                where = {"chunk": item.chunk, "stream": stream, **item.at, "layer": layer, "batch": int(batch),
                         "unit": int(unit) + item.offsets.get("unit", 0)}  # fmt: skip
                rows.append((item.chunk, stream, layer, float(diff.max()), int((~(diff <= 1e-6)).sum()), where))
        out.append(rows)
    return out


@pytest.mark.parametrize("most", [None, 50])
def test_compare_each_gives_the_rows_of_each_item_alone(monkeypatch: pytest.MonkeyPatch, most: int | None) -> None:
    """Items stacked by shape (and split in batches of at most ``STACKED_ELEMENTS``) give, item by item and in order,
    the rows a plain slice-by-slice comparison gives: errors, mismatch counts and the worst element's location."""
    import harness.parity.report as report
    from harness.parity import Tolerance

    if most is not None:
        monkeypatch.setattr(report, "STACKED_ELEMENTS", most)
    rng = np.random.default_rng(0)
    items = []
    for chunk in range(9):
        shape = (2, 3, 4, 5) if chunk % 3 else (2, 3, 4, 2)  # two shapes, interleaved
        actual = rng.standard_normal(shape).astype("float32")
        expected = actual + (rng.random(shape) < 0.1) * rng.standard_normal(shape) * 1e-3
        if chunk == 4:
            expected[1, 2, 3, 1] = np.nan
        if chunk == 7:
            expected = expected[:, :1]
        items.append(report.Operands(chunk, actual, expected, offsets={"unit": chunk}, at={"step": 10 * chunk}))
    rows = report.compare_each(
        items, pair="p", kind="same", tensor="h", tolerance=Tolerance(1e-6, 0.0), stream_axis=2, layer_axis=0,
        axis_names=("layer", "batch", "stream", "unit"),
    )  # fmt: skip
    got = [
        [(r.chunk, r.stream, r.layer, r.max_abs, r.mismatched, r.where) if r.stream is not None else
         (r.chunk, None, None, r.max_abs, r.mismatched) for r in item] for item in rows
    ]  # fmt: skip
    expected = _rows_one_by_one(items, Tolerance(1e-6, 0.0))
    for chunk, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"chunk {chunk}: compare_each gave\n{g}\nslice by slice:\n{e}"
    assert sum(r.mismatched for item in rows for r in item) > 0


def _readme_runner_class() -> type:
    """``MyRunner`` as the README's "The ``Runner`` protocol" example writes it."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("**The `Runner` protocol**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(block.split("\ncheck_parity(", 1)[0], namespace)  # the class; the call is the test's own below
    return namespace["MyRunner"]


class _Stepper:
    """A user's model with ``step(x, h) -> (y, h)`` on numpy, made of a multi-state GRU; ``forgets`` plants a
    fault: the state handed back in is ignored."""

    def __init__(self, module: torch.nn.Module, forgets: bool = False) -> None:
        self.module, self.forgets = module, forgets

    def step(self, x: np.ndarray, h: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            if h is None or self.forgets:
                self.module.reset_states()
            else:
                self.module.set_states([h[None]])
            y = self.module(torch.from_numpy(x))
        return y.numpy(), self.module.get_states()[0][0].numpy()


def test_the_readme_runner_example_drives_check_parity(rng):
    """The README's ``MyRunner`` holds parity with the module it wraps, and a model that drops its state fails."""
    import copy

    runner_class = _readme_runner_class()
    torch.manual_seed(0)
    module = torch_class("gru")(F, H, S)
    x = random_input(rng, (B, S, T, F))
    report = check_parity({"mine": runner_class(_Stepper(copy.deepcopy(module))), "torch": module}, x, "halves")
    assert report.ok, report.failure_message()
    forgetful = runner_class(_Stepper(copy.deepcopy(module), forgets=True))
    assert not check_parity({"mine": forgetful, "torch": module}, x, "halves").ok
