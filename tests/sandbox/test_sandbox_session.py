"""Notebook semantics of a session, on every backend (dangerous-local runs everywhere)."""

from __future__ import annotations

import ast
import asyncio
import sys
import threading

import pytest
from _sandbox_support import BACKENDS, SMALL, open_backend
from gptoss_agent.sandbox import Execution, SandboxError, open_sandbox

ALL = [*BACKENDS, "dangerous-local"]


@pytest.fixture(params=ALL)
def any_session(request):
    s = open_backend(request.param)
    yield s
    s.close()


def test_state_persists_across_calls(any_session):
    assert any_session.run("x = 41\nimport math\ndef inc(v):\n    return v + 1").value is None
    ex = any_session.run("inc(x), math.floor(2.5)")
    assert ex.value == "(42, 2)"
    assert ex.output == "(42, 2)"
    assert not ex.error and not ex.timed_out and not ex.restarted


def test_final_expression_like_a_notebook(any_session):
    assert any_session.run("1 + 1").value == "2"
    assert any_session.run("y = 3").value is None
    ex = any_session.run("print('hi')")
    assert (ex.output, ex.value) == ("hi\n", None)
    ex = any_session.run("for i in range(2):\n    print(i)\n'done'")
    assert ex.output == "0\n1\n'done'"
    assert any_session.run("z = 5; z * 2").value == "10"
    assert any_session.run("_ + 1").value == "11"


def test_stdout_and_stderr_in_order(any_session):
    ex = any_session.run(
        "import sys, os\nprint('a')\nprint('b', file=sys.stderr)\nos.system('echo c')\nprint('d')"
    )
    assert ex.output == "a\nb\nc\nd\n"
    assert ex.stdout == "a\nc\nd\n"
    assert ex.stderr == "b\n"


def test_subprocess_output_keeps_its_place_every_time(any_session):
    """The pump thread that records a subprocess's output marks the pipes collected before it reads
    them; a print in that instant was recorded ahead of the subprocess's line (1 in 300 cells quiet,
    21 in 3,000 on a loaded machine). 600 rounds in one cell: each one was a chance to overtake."""
    ex = any_session.run(
        "import sys, os\nfor _ in range(600):\n    print('b', file=sys.stderr)\n    os.system('echo c')\n    print('d')",
        timeout=60,
    )
    assert ex.error is None and not ex.timed_out, ex.output[-300:]
    expected = "b\nc\nd\n" * 600
    first = next((i for i, (x, y) in enumerate(zip(ex.output, expected, strict=False)) if x != y), min(len(ex.output), len(expected)))
    in_order = ex.output == expected  # a plain bool: pytest's diff of two 3,600-character strings takes minutes
    assert in_order, f"out of order at character {first}: {ex.output[max(0, first - 8) : first + 8]!r}"


def test_traceback_without_driver_frames(any_session):
    ex = any_session.run("def f():\n    raise ValueError('boom')\n\nf()")
    assert ex.error and ex.error == ex.output
    assert ex.error.startswith('Traceback (most recent call last):\n  File "<cell-')
    assert "raise ValueError('boom')" in ex.error
    assert ex.error.rstrip().endswith("ValueError: boom")
    assert "<string>" not in ex.error and "driver" not in ex.error and "exec(" not in ex.error
    assert any_session.run("1").value == "1"


def test_syntax_error(any_session):
    ex = any_session.run("x = (")
    assert ex.error and "SyntaxError" in ex.error and "ast.py" not in ex.error and "Traceback" not in ex.error


def test_output_before_an_exception_is_kept(any_session):
    ex = any_session.run("print('before')\n1/0")
    assert ex.output.startswith("before\nTraceback")
    assert "ZeroDivisionError" in ex.output


def test_long_output_keeps_head_and_tail(any_session):
    ex = any_session.run("for i in range(20000):\n    print(f'line {i}')")
    assert ex.output.startswith("line 0\nline 1\n")
    assert ex.output.rstrip().endswith("line 19999")
    assert "characters of output cut ...]" in ex.output
    assert len(ex.output) < SMALL.output_chars + 200
    ex = any_session.run("'v' * 100000")
    assert ex.value and len(ex.value) < SMALL.output_chars + 200 and "characters cut" in ex.value
    ex = any_session.run("raise ValueError('e' * 100000)")
    assert ex.error and len(ex.error) < SMALL.output_chars + 200 and ex.error.startswith("Traceback")


def test_invalid_utf8_and_binary_output(any_session):
    ex = any_session.run(
        "import sys, os\nsys.stdout.buffer.write(b'A\\xff\\xfeB\\n')\nos.write(1, b'C\\xc3(\\n')\nprint('\\udcff')"
    )
    assert "A\\xff\\xfeB" in ex.output and "C\\xc3(" in ex.output
    ex.output.encode("utf-8")  # always valid text
    assert any_session.run("bytes(range(5))").value == "b'\\x00\\x01\\x02\\x03\\x04'"


def test_files_in_mnt_data_persist(session):  # the isolated backends (dangerous-local has no /mnt/data)
    ex = session.run("import os\nopen('/mnt/data/notes.txt', 'w').write('kept')\nos.getcwd()")
    assert ex.value == "'/mnt/data'"
    assert session.run("open('notes.txt').read()").value == "'kept'"


def test_reset_forgets_everything(any_session):
    any_session.run("x = 1\nopen('f.txt', 'w').write('x')")
    any_session.reset()
    ex = any_session.run("x")
    assert ex.error and "NameError" in ex.error and not ex.restarted
    assert any_session.run("import os; os.path.exists('f.txt')").value == "False"


def test_a_slow_start_does_not_count_against_the_code(tmp_path):
    """The timeout is the code's: a fresh interpreter's start (after a reset, on a loaded machine:
    seconds) has its own limit. Here a Python that takes 2 s to start runs a 1 s cell."""
    from gptoss_agent.sandbox.local import DangerousLocalSession

    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nsleep 2\nexec {sys.executable} "$@"\n')
    slow_python.chmod(0o755)
    with DangerousLocalSession(SMALL, python=str(slow_python)) as s:
        ex = s.run("1 + 1", timeout=1)
        assert (ex.value, ex.timed_out) == ("2", False), ex.output
        s.reset()
        ex = s.run("1 + 2", timeout=1)
        assert (ex.value, ex.timed_out) == ("3", False), ex.output


def test_async_and_threads(any_session):
    async def two():
        return await asyncio.gather(
            any_session.arun("import time; time.sleep(0.2); 1"), any_session.arun("2")
        )

    assert [ex.value for ex in asyncio.run(two())] == ["1", "2"]
    results: list[Execution] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(any_session.run(f"{i} * 10"))) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ex.value or "" for ex in results) == ["0", "10", "20", "30"]


def test_closed_session_refuses(any_session):
    any_session.close()
    with pytest.raises(SandboxError):
        any_session.run("1")
    any_session.close()


def test_unknown_backend_and_bad_limits():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        open_sandbox("podman")
    with pytest.raises(ValueError, match="memory"):
        open_sandbox("dangerous-local", memory=0)


def test_auto_explains_how_to_get_a_sandbox(monkeypatch):
    import gptoss_agent.sandbox.bubblewrap as bw
    import gptoss_agent.sandbox.docker as dk

    monkeypatch.setattr(dk, "docker_available", lambda: False)
    monkeypatch.setattr(bw, "bubblewrap_available", lambda: False)
    with pytest.raises(SandboxError, match=r"(?s)Docker.*bubblewrap"):
        open_sandbox("auto")


@pytest.mark.parametrize("backend", BACKENDS)
def test_libraries_a_model_reaches_for(backend):
    with open_backend(backend) as s:
        if backend == "bubblewrap" and str(s.root) == "/":
            pytest.skip("bubblewrap runs the host's Python here (the image's root filesystem is not built)")
        code = (
            "import numpy as np, pandas as pd, sympy, scipy, matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3]); plt.savefig('/mnt/data/plot.png')\n"
            "int(np.arange(10).sum()), str(sympy.integrate(sympy.Symbol('x'))), len(pd.DataFrame({'a': [1, 2]}))"
        )
        ex = s.run(code, timeout=60)
        assert ex.value == "(45, 'x**2/2', 2)", ex.output


def test_sessions_are_independent_and_run_in_parallel(backend):
    with open_backend(backend) as a, open_backend(backend) as b:
        a.run("x = 'a'\nopen('/mnt/data/who', 'w').write('a')")
        assert "NameError" in (b.run("x").error or "")
        assert b.run("import os; os.path.exists('/mnt/data/who')").value == "False"
        results: dict[str, Execution] = {}

        def sleepy(name, s):  # each cell reports when it ran, on the clock host and sandbox share
            results[name] = s.run("import time; t = time.time(); time.sleep(2); (t, time.time())")

        threads = [threading.Thread(target=sleepy, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        spans = [ast.literal_eval(results[n].value or "") for n in ("a", "b")]
        # parallel means the two cells overlapped; no bound on how long a loaded machine took
        assert max(start for start, _ in spans) < min(end for _, end in spans), spans
