"""The benchmark suite, one parametrized test per case of ``cases.PLAN``.

Run ``pytest benchmarks --benchmark-only``. Keras cases carry the ``keras`` marker, so a run with
``-m keras`` (as ``run_cpu.sh`` does for the JAX and torch backends) measures only those.
"""

from __future__ import annotations

import pytest

from benchmarks.cases import Case, all_cases

CASES = {case.id: case for case in all_cases()}


def _param(case: Case) -> pytest.param:
    marks = [pytest.mark.keras] if case.framework == "keras" else []
    return pytest.param(case.id, id=case.id, marks=marks)


@pytest.mark.parametrize("case_id", [_param(case) for case in CASES.values()])
def test_case(case_id: str, measure) -> None:
    measure(CASES[case_id])
