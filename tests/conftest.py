"""Shared fixtures. Real processes only on loopback; see tests/support/ for the pieces."""

from __future__ import annotations

import shutil

import pytest

from tests.support.onions import ONION_A, ONION_B  # noqa: F401  (re-exported for tests)


def require(*programs: str) -> None:
    """Fail (not skip) when a program the test needs is missing: CI installs all of them."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"missing programs {missing}: run 'sh scripts/dev.sh test' to install them")
