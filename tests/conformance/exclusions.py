"""Every conformance case of an op convc claims that is not run, with the reason, in one place.

Cases whose graph uses an op convc does not claim (no converter) are skipped by rule in
test_onnx_backend.py and are not listed here. test_exclusions_are_current checks that every name
below is a collected case of claimed ops only.
"""
from __future__ import annotations

EXCLUDED: dict[str, str] = {}
