"""The python tool: harmony's description with the real timeout, code taken from the body, and
execution results as tool messages, against an in-process session speaking the Session protocol
and against the real sandboxes (bubblewrap, Docker)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import traceback
from typing import Any

import openai_harmony as h
import pytest
from gptoss_agent.sandbox.base import Execution, Session
from gptoss_agent.tools import NamespaceSpec, Python, Toolbox, ToolError
from gptoss_agent.tools.python import extract_code


class ScriptedSession:
    """A stateful in-process session with the sandbox's Session protocol (no isolation): for the
    tool's own logic. Code containing ``__hang__`` reports a timeout, as the sandbox does."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.namespace: dict[str, Any] = {}
        self.runs: list[tuple[str, float | None]] = []
        self.closed = False
        self.resets = 0

    def run(self, code: str, timeout: float | None = None) -> Execution:
        self.runs.append((code, timeout))
        if "__hang__" in code:
            self.namespace.clear()
            return Execution(output=f"[Timed out after {timeout:g} s]", timed_out=True, restarted=True)
        out = io.StringIO()
        value = error = None
        try:
            tree = ast.parse(code)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compile(tree, "<cell>", "exec"), self.namespace)
                if last is not None:
                    result = eval(compile(ast.Expression(last.value), "<cell>", "eval"), self.namespace)
                    value = None if result is None else repr(result)
        except Exception as e:
            error = "".join(traceback.format_exception_only(e))
        text = out.getvalue() + (value or "") + (error or "")
        return Execution(output=text, stdout=out.getvalue(), value=value, error=error)

    def reset(self) -> None:
        self.namespace.clear()
        self.resets += 1

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> ScriptedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def test_scripted_session_speaks_the_protocol() -> None:
    session: Session = ScriptedSession()
    assert session.run("1 + 1").output == "2"


# --- the description the model was trained on ------------------------------------------------


def to_harmony(ns: NamespaceSpec) -> h.ToolNamespaceConfig:
    return h.ToolNamespaceConfig(name=ns.name, description=ns.description, tools=[])


def test_description_is_harmonys_with_the_real_timeout() -> None:
    reference = h.ToolNamespaceConfig.python()
    spec = Python(ScriptedSession()).spec
    assert spec.builtin and spec.name == "python" and spec.functions == ()
    assert to_harmony(spec) == reference
    short = Python(ScriptedSession(), timeout=30).spec.description
    assert short == reference.description.replace("after 120.0 seconds", "after 30.0 seconds")
    assert "after 2.5 seconds" in (Python(ScriptedSession(), timeout=2.5).spec.description or "")


def test_system_message_renders_token_identical() -> None:
    enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)

    def render(system: h.SystemContent) -> list[int]:
        conv = h.Conversation.from_messages([h.Message.from_role_and_content(h.Role.SYSTEM, system)])
        return enc.render_conversation(conv)

    ours = h.SystemContent.new().with_tools(to_harmony(Python(ScriptedSession()).spec))
    assert render(ours) == render(h.SystemContent.new().with_python_tool())
    text = enc.decode(render(ours))
    assert "# Tools\n\n## python\n\nUse this tool to execute Python code" in text
    assert "time out after 120.0 seconds." in text


# --- code from the body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("print(1)", "print(1)"),
        ("\nx = 1\nx\n", "\nx = 1\nx\n"),
        ('{"code": "print(2)"}', "print(2)"),
        ('  {"code": "import os\\nos.getcwd()"}\n', "import os\nos.getcwd()"),
        ("```python\nprint(3)\n```", "print(3)"),
        ("```py\nprint(3)\n```\n", "print(3)"),
        ("```\nprint(4)\n```", "print(4)"),
        ("```python\nprint(5)", "print(5)"),  # unterminated fence
        ("Let me compute:\n```python\nx = 6\n```\nand\n```python\nx * 2\n```", "x = 6\nx * 2"),
        ('{"a": 1}', '{"a": 1}'),  # a dict literal is code
        ('{"code": 7}', '{"code": 7}'),
        ("s = '```'\nprint(s)", "s = '```'\nprint(s)"),  # valid code that merely mentions a fence
    ],
)
def test_extract_code(body: str, code: str) -> None:
    assert extract_code(body) == code


# --- calls ----------------------------------------------------------------------------------


def test_calls_keep_state_and_return_the_output() -> None:
    session = ScriptedSession()
    py = Python(session, timeout=7)
    out = py.call("python", "x = 41\nx + 1")
    assert (out.author, out.content, out.is_error) == ("python", "42", False)
    assert out.metadata == {"timed_out": False, "restarted": False}
    assert py.call("python", '{"code": "print(x)"}').content == "41\n"
    out = py.call("python", "```python\n1/0\n```")
    assert out.is_error and out.content == "ZeroDivisionError: division by zero\n"
    assert out.metadata == {"timed_out": False, "restarted": False, "error": "exception"}
    assert [t for _, t in session.runs] == [7.0, 7.0, 7.0]
    out = py.call("python", "__hang__")
    assert out.is_error and out.metadata == {"timed_out": True, "restarted": True, "error": "timeout"}
    assert out.content == "[Timed out after 7 s]"
    with pytest.raises(ToolError, match="No code to run"):
        py.call("python", "  \n")


def test_through_the_toolbox() -> None:
    py = Python(ScriptedSession())
    box = Toolbox([py])
    assert box.names == ["python"] and box.builtin_namespaces == [py.spec] and box.functions is None
    assert box.dispatch("python", "y = 2\ny * 21").content == "42"
    assert box.dispatch("python.exec", '{"code": "y"}').content == "2"
    assert asyncio.run(box.adispatch("functions.python", "y + 1")).content == "3"
    out = box.dispatch("python", "")
    assert (out.content, out.metadata) == (
        "No code to run: send the Python code as the message to python.",
        {"error": "tool_error"},
    )
    assert py.call_timeout == 150.0  # the sandbox stops code itself; the toolbox waits a bit longer


def test_given_sessions_are_shared_not_closed() -> None:
    session = ScriptedSession()
    with Python(session) as py:
        py.call("python", "z = 1")
        py.reset()
    assert session.resets == 1 and not session.closed


def test_session_opens_lazily_and_closes_when_owned(monkeypatch: pytest.MonkeyPatch) -> None:
    import gptoss_agent.sandbox as sandbox

    opened: list[tuple[str, dict[str, Any]]] = []
    sessions: list[ScriptedSession] = []

    def fake_open(backend: str = "auto", **options: Any) -> ScriptedSession:
        opened.append((backend, options))
        sessions.append(ScriptedSession(options["timeout"]))
        return sessions[-1]

    monkeypatch.setattr(sandbox, "open_sandbox", fake_open)
    py = Python(timeout=9)
    assert opened == []  # nothing starts before the first call
    assert py.call("python", "1 + 2").content == "3"
    assert opened == [("auto", {"timeout": 9.0, "build": False})]  # never a build inside a call
    py.close()
    assert sessions[0].closed
    py.close()  # idempotent


# --- the real sandboxes -----------------------------------------------------------------------


def _real_session_checks(session: Any) -> None:
    with Python(session, timeout=3) as py:
        box = Toolbox([py])
        assert box.dispatch("python", "x = 41\nx + 1").content == "42"
        assert box.dispatch("python", '{"code": "print(x)"}').content == "41\n"
        out = box.dispatch("python", "```python\nimport sys\nsys.version_info[0]\n```")
        assert out.content == "3"
        out = box.dispatch("python", "1/0")
        assert out.is_error and out.metadata["error"] == "exception"
        assert out.content.rstrip().endswith("ZeroDivisionError: division by zero")
        out = box.dispatch("python", "while True:\n    pass")
        assert out.is_error and out.metadata == {"timed_out": True, "restarted": True, "error": "timeout"}
        assert "Timed out after 3 s" in out.content
        out = box.dispatch("python", "x")  # the restart lost the state, and the session still works
        assert "NameError" in out.content


@pytest.mark.bwrap
def test_real_bubblewrap_sandbox() -> None:
    from gptoss_agent.sandbox import open_sandbox

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed here (CI installs it)")
    with open_sandbox("bubblewrap", timeout=3) as session:
        _real_session_checks(session)


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.docker
def test_real_docker_sandbox() -> None:
    from gptoss_agent.sandbox import open_sandbox
    from gptoss_agent.sandbox.image import DEFAULT_IMAGE

    if not os.environ.get("CI"):  # CI starts the engine and builds the image before the tests
        if not _docker_running():
            pytest.skip("no Docker engine answers here (CI starts one)")
        if subprocess.run(["docker", "image", "inspect", DEFAULT_IMAGE], capture_output=True).returncode != 0:
            pytest.skip(f"the sandbox image {DEFAULT_IMAGE} is not built here (CI builds it)")
    with open_sandbox("docker", timeout=3) as session:
        _real_session_checks(session)
