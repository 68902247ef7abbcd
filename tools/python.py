"""The python tool: harmony's built-in ``python`` namespace over a sandbox session.

The model addresses it as ``to=python`` with the code as the message body; the tool runs the code
in a stateful session (``gptoss_agent.sandbox``) and returns the execution's ``output`` (stdout
and stderr in order, the last expression's value, or the traceback, with notes on timeouts and
restarts) as the tool message. The description in the system message is the one the model was
trained on (openai-harmony's ``ToolNamespaceConfig.python()``), with the real timeout.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from gptoss_agent.sandbox.base import Session
from gptoss_agent.tools.base import NamespaceSpec, ToolError, ToolOutput, call_in_thread

__all__ = ["PYTHON_DESCRIPTION", "Python", "extract_code"]

PYTHON_DESCRIPTION = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the "
    "user. This tool should be used for internal reasoning, but not for code that is intended to be "
    "visible to the user (e.g. when creating plots, tables, or files).\n\n"
    "When you send a message containing Python code to python, it will be executed in a stateful "
    "Jupyter notebook environment. python will respond with the output of the execution or time out "
    "after {timeout} seconds. The drive at '/mnt/data' can be used to save and persist user files. "
    "Internet access for this session is UNKNOWN. Depends on the cluster."
)
"""The text openai-harmony renders for the python tool; ``{timeout}`` is ``120.0`` there."""

_GRACE_SECONDS = 30.0
"""How much longer than its sandbox timeout the toolbox waits for one run (startup, restart)."""

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def extract_code(body: str) -> str:
    """The code in a python message body: as written, or unwrapped when the model sent
    ``{"code": "..."}`` or fenced it in ```` ``` ```` (with or without a language)."""
    text = body.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            for key in ("code", "source", "script", "input"):
                if isinstance(data.get(key), str):
                    return str(data[key])
    if text.startswith("```"):
        match = _FENCE.match(text)
        if match:
            return match.group(1)
    elif "```" in text and not _compiles(text):
        blocks = _FENCE.findall(text)
        if blocks:
            return "\n".join(blocks)
    return body


def _compiles(code: str) -> bool:
    try:
        compile(code, "<cell>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


class Python:
    """Harmony's built-in ``python`` tool over one stateful sandbox session.

    Args:
        sandbox: The session to run code in. None opens ``open_sandbox("auto")`` on first use,
            and ``close()`` closes it; a session passed in is shared on purpose and left open.
            A first use never builds the Docker image inside a tool call (it would run against the
            call's timeout): ``prepare()`` before the run builds it, otherwise ``auto`` runs under
            bubblewrap, or says which command builds the image.
        timeout: Seconds one execution may take (the sandbox stops it and says so); this number
            is also the one in the description the model reads.
    """

    name = "python"

    def __init__(self, sandbox: Session | None = None, timeout: float = 120.0) -> None:
        self.timeout = float(timeout)
        self.call_timeout = self.timeout + _GRACE_SECONDS
        self._session = sandbox
        self._owned = sandbox is None
        self._lock = threading.Lock()

    @property
    def spec(self) -> NamespaceSpec:
        return NamespaceSpec(
            name="python", description=PYTHON_DESCRIPTION.format(timeout=self.timeout), builtin=True
        )

    @property
    def session(self) -> Session:
        """The sandbox session, opened on first use when none was given (never building an image)."""
        if self._session is None:
            from gptoss_agent.sandbox import open_sandbox

            self._session = open_sandbox("auto", timeout=self.timeout, build=False)
        assert self._session is not None
        return self._session

    def prepare(self, progress: Callable[[str], None] | None = None) -> None:
        """Open the session now, before the run: a missing Docker image is built here (``progress``
        gets each step), outside any tool call's timeout. A no-op once the session is open."""
        if self._session is None:
            from gptoss_agent.sandbox import open_sandbox

            self._session = open_sandbox("auto", timeout=self.timeout, progress=progress)

    def call(self, function: str, body: str) -> ToolOutput:
        """Run the code in the body; the execution's ``output`` is the tool message."""
        code = extract_code(body)
        if not code.strip():
            raise ToolError("No code to run: send the Python code as the message to python.")
        with self._lock:  # one session runs one cell at a time
            ex = self.session.run(code, timeout=self.timeout)
        metadata: dict[str, Any] = {"timed_out": ex.timed_out, "restarted": ex.restarted}
        if ex.timed_out or ex.error is not None:
            metadata["error"] = "timeout" if ex.timed_out else "exception"
        return ToolOutput(
            author="python",
            content=ex.output,
            is_error=ex.error is not None or ex.timed_out,
            duration=ex.duration,
            metadata=metadata,
        )

    async def acall(self, function: str, body: str) -> ToolOutput:
        return await call_in_thread(self.call, function, body)

    def reset(self) -> None:
        """Forget all state (a fresh interpreter in the same sandbox)."""
        if self._session is not None:
            self._session.reset()

    def close(self) -> None:
        """Close the session if this tool opened it."""
        if self._session is not None and self._owned:
            self._session.close()
            self._session = None

    def __enter__(self) -> Python:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Python(timeout={self.timeout:g})"
