"""The pytest plugin of multistate-rnn: a ``parity`` fixture, and ``--parity-report=DIR`` for CI artifacts.

Installing the project registers it under the ``pytest11`` entry point, so every test suite in that
environment has it::

    def test_port(parity):
        parity({"torch": module, "keras": layer}, x, "random")  # check_parity's arguments; fails the test

The fixture runs ``check_parity``, fails the test with the report's ``failure_message()`` (its own frame
hidden from the traceback, so pytest never prints the input array) and returns the report.
``pytest --parity-report=DIR`` also writes each test's reports to ``DIR/<test id>.md`` and ``.json``.
This module imports no framework and not the engine: pytest loads it in every run, the engine is
imported on the first check.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from multistate_core.atomic import atomic_path, writable

if TYPE_CHECKING:
    from harness.parity.report import ParityReport

_NAMES = pytest.StashKey[dict]()  # report file stem -> the test id it was given to
_LONGEST_STEM = 150


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("multistate-rnn").addoption(
        "--parity-report",
        metavar="DIR",
        help="write the parity reports of each test using the `parity` fixture to DIR/<test id>.md and .json "
        "(DIR must exist)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an unusable ``--parity-report`` folder before any test runs."""
    folder = config.getoption("parity_report")
    if folder is None:
        return
    path = Path(folder)
    if not path.is_dir():
        what = "a file" if path.exists() else "no such folder"
        raise pytest.UsageError(f"--parity-report={folder}: expected an existing folder, got {what}")
    if not writable(path):
        raise pytest.UsageError(f"--parity-report={folder}: the folder is not writable")
    config.stash[_NAMES] = {}


class ParityCheck:
    """What the ``parity`` fixture gives a test: ``check_parity`` that fails the test where parity fails.

    Calling it takes ``check_parity``'s arguments and returns its ``ParityReport``; every report is kept
    in ``reports`` (in call order) for ``--parity-report``.
    """

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id
        self.reports: list[ParityReport] = []

    def __call__(self, *args: Any, **kwargs: Any) -> ParityReport:
        __tracebackhide__ = True
        from harness.parity.engine import check_parity

        report = check_parity(*args, **kwargs)
        self.reports.append(report)
        if not report.ok:
            raise AssertionError(report.failure_message())
        return report

    def __repr__(self) -> str:
        return f"<parity check of {self.test_id}: {len(self.reports)} report(s)>"


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> Iterator[ParityCheck]:
    """``check_parity`` that fails the test on a failing report (see ``ParityCheck``); with
    ``--parity-report=DIR``, the test's reports are written to DIR when it ends, failing or not."""
    check = ParityCheck(request.node.nodeid)
    yield check
    folder = request.config.getoption("parity_report")
    if folder is not None and check.reports:
        write_reports(Path(folder) / _stem(request.config, check.test_id), check.test_id, check.reports)


def write_reports(stem: Path, test_id: str, reports: list[ParityReport]) -> None:
    """Write ``reports`` of the test ``test_id`` to ``stem.md`` and ``stem.json``, each atomically."""
    document = {
        "test": test_id,
        "ok": all(r.ok for r in reports),
        "reports": [json.loads(r.to_json()) for r in reports],
    }
    for suffix, text in ((".json", json.dumps(document, indent=1)), (".md", markdown(test_id, reports))):
        with atomic_path(stem.with_name(stem.name + suffix)) as tmp, open(tmp, "w") as f:
            f.write(text)


def markdown(test_id: str, reports: list[ParityReport]) -> str:
    """The reports of one test as Markdown: a heading, then each check's ``ParityReport.markdown()``."""
    verdict = "ok" if all(r.ok for r in reports) else "FAIL"
    checks = [report.markdown(title=f"Check {number}") for number, report in enumerate(reports, 1)]
    return "\n".join([f"## Parity of `{test_id}`: {verdict}", "", *checks])


def _stem(config: pytest.Config, test_id: str) -> str:
    """A file name for ``test_id``'s reports: its characters outside ``[A-Za-z0-9_.-]`` become ``_``.

    A name too long, or already given to another test of this run, gets a hash of the test id instead of
    overwriting that test's reports.
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id).strip("._")
    taken = config.stash[_NAMES]
    if len(stem) > _LONGEST_STEM or taken.get(stem, test_id) != test_id:
        stem = f"{stem[:_LONGEST_STEM]}-{hashlib.sha1(test_id.encode()).hexdigest()[:10]}"
    taken[stem] = test_id
    return stem
