"""Fixtures of the sandbox tests (helpers live in _sandbox_support.py)."""

from __future__ import annotations

import pytest
from _sandbox_support import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def session(backend):
    s = open_backend(backend)
    yield s
    s.close()


@pytest.fixture
def session_bw():
    s = open_backend("bubblewrap")
    yield s
    s.close()
