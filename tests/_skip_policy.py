"""The skip policy: in CI a test may not skip for want of something CI provides.

``scripts/test.sh`` installs and starts everything the suite needs (a C compiler for the kernels,
bubblewrap, the Docker engine and the sandbox image, the vLLM server, openssl, the test extras)
and exports ``GPTOSS_CI=1``. There, a skip whose reason names one of those becomes a failure with
the same reason: skipping is not passing. Skips for what CI does not have (a GPU, another CPU
architecture) stay skips. Outside CI every skip stays a skip.
"""

from __future__ import annotations

import os

import pytest

CI_PROVIDES = (
    "kernel",
    "compiler",
    "bubblewrap",
    "bwrap",
    "docker",
    "image",
    "debootstrap",
    "vllm",
    "openssl",
    "setpriv",
    "root",
    "could not import",  # pytest.importorskip: the test extras are installed in CI
)
"""Words of a skip reason that name something the test command provides (lower case)."""


def in_ci() -> bool:
    """Whether this run is the test command's (or a CI service's: ``CI`` set)."""
    return os.environ.get("GPTOSS_CI") == "1" or bool(os.environ.get("CI"))


def provided_by_ci(reason: str) -> bool:
    """Whether a skip ``reason`` names something CI provides."""
    low = reason.lower()
    return any(word in low for word in CI_PROVIDES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if provided_by_ci(reason):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, but scripts/test.sh provides what this test needs: {reason}"
