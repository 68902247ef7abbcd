"""Shared fixtures: the real o200k tokenizer, built offline from quicktok-v1 when missing; the skip
policy (``_skip_policy``): in CI, a skip for want of something CI provides is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _skip_policy import pytest_runtest_makereport  # noqa: F401  (the hook: CI fails what it provides)

ROOT = Path(__file__).resolve().parent.parent
TIKTOKEN_DIR = ROOT / ".cache" / "tiktoken"


def _ensure_ranks() -> None:
    if not os.environ.get("TIKTOKEN_ENCODINGS_BASE"):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_o200k.py"), str(TIKTOKEN_DIR)], check=True)
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(TIKTOKEN_DIR)


_ensure_ranks()


@pytest.fixture(scope="session")
def enc():
    """The real o200k_harmony tiktoken encoding."""
    from gptoss_agent.model import load_tokenizer

    return load_tokenizer()
