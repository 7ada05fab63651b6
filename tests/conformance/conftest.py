"""Counts the conformance outcomes and prints them at the end of the session:

    ONNX conformance: N passed, M excluded (K cases of ops convc does not claim skipped)
    unclaimed ops, by cases: CastLike 227, ...

Excluded cases skip with a reason starting "excluded:" (tests/conformance/exclusions.py); cases of
ops convc does not claim skip with one starting "not claimed:".
"""
from __future__ import annotations

import collections

import pytest

_OUTCOMES: collections.Counter[str] = collections.Counter()
_UNCLAIMED_OPS: collections.Counter[str] = collections.Counter()
_CASES = ("test_onnx_backend.py::test_node[", "test_onnx_backend.py::test_model[",
          "test_onnx_backend.py::test_light_model[")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not any(mark in report.nodeid for mark in _CASES):
        return
    if report.when == "call" and report.passed:
        _OUTCOMES["passed"] += 1
    elif report.failed:
        _OUTCOMES["failed"] += 1
    elif report.skipped:
        for key, ops in report.user_properties:
            if key == "unclaimed":
                _UNCLAIMED_OPS.update(ops)
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        _OUTCOMES["excluded" if "excluded:" in reason else "unclaimed" if "not claimed:" in reason else "skipped"] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if not _OUTCOMES:
        return
    failed = f", {_OUTCOMES['failed']} FAILED" if _OUTCOMES["failed"] else ""
    other = f", {_OUTCOMES['skipped']} skipped otherwise" if _OUTCOMES["skipped"] else ""
    terminalreporter.write_line(
        f"ONNX conformance: {_OUTCOMES['passed']} passed, {_OUTCOMES['excluded']} excluded{failed}{other} "
        f"({_OUTCOMES['unclaimed']} cases of ops convc does not claim skipped)", bold=True)
    if _UNCLAIMED_OPS:
        top = ", ".join(f"{op} {n}" for op, n in _UNCLAIMED_OPS.most_common(12))
        terminalreporter.write_line(f"  unclaimed ops, by cases: {top}, ...")
