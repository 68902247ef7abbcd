"""Every example runs with ``--demo`` as a new user meets it: a fresh process, an empty home and
caches, no tokenizer variables, no network (every proxy points at a closed port)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "custom_tool": ["'miles' is not one of ['km', 'mi']", "243.6 miles"],
    "structured_output": ['"servings": 4', "valid after 2 attempt(s)"],
    "workflow_research_compute": ["553 184.33", '"total_mw": 553'],
    "remote_engine": ["17 * 23 = 391.", "'What is 99 * 101?' -> '99 * 101 = 9999.'"],
}


def test_every_example_is_covered():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


def _new_user_env(tmp_path: Path) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "DOCKER_HOST", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep}
    home = tmp_path / "home"
    home.mkdir()
    env |= {"HOME": str(home), "TMPDIR": str(tmp_path), "NO_PROXY": "127.0.0.1,localhost"}
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        env[var] = "http://127.0.0.1:9"  # a closed port: any download fails at once
    return env


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_demo_runs_offline_in_a_clean_environment(name, tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--demo"],
        env=_new_user_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for text in EXPECTED[name]:
        assert text in done.stdout, done.stdout[-3000:]
