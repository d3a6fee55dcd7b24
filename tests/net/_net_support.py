"""Helpers of the transport tests (imported by test files; see tests/gateway/_gateway_support.py)."""

from __future__ import annotations

import pytest

from m2msec.net.acme import acme_available


def require_acme() -> None:
    if not acme_available():
        pytest.skip("acmecse is not installed")
