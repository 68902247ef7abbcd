"""``gptoss-agent mcp-server`` driven by the SDK's own ``ClientSession``, over stdio and streamable
HTTP: the tool list, python state kept per MCP session (a real sandbox), and the browser
searching and reading a local site."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from websim import web_fixture  # noqa: F401  (the `web` fixture: a local site and search APIs)

COMMAND = [sys.executable, "-m", "gptoss_agent.agent", "mcp-server"]


def _env(web=None) -> dict[str, str]:
    env = {"TIKTOKEN_ENCODINGS_BASE": os.environ.get("TIKTOKEN_ENCODINGS_BASE", "")}
    for key in ("PATH", "HOME", "DOCKER_HOST", "XDG_RUNTIME_DIR"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    if web is not None:
        env["SEARXNG_URL"] = f"{web.search.url}/searxng"
    return env


def text_of(result) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    """``mcp-server --tools python --http PORT`` as its own process."""
    port = _free_port()
    proc = subprocess.Popen(
        [*COMMAND, "--tools", "python", "--http", str(port)],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"mcp-server exited: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_stdio_lists_tools_keeps_python_state_and_browses_a_local_site(web):
    params = StdioServerParameters(
        command=COMMAND[0],
        args=[*COMMAND[1:], "--search", "searxng", "--allow-private-urls"],
        env=_env(web),
    )

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            info = await session.initialize()
            assert info.server_info.name == "gptoss-agent"
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert list(tools) == ["search", "open", "find", "python"]
            assert tools["search"].input_schema["required"] == ["query"]
            assert "stateful Jupyter notebook" in (tools["python"].description or "")

            first = await session.call_tool("python", {"code": "x = 41\nprint('set')"})
            assert text_of(first).strip() == "set" and not first.is_error
            second = await session.call_tool("python", {"code": "x + 1"})
            assert text_of(second).strip() == "42"
            failed = await session.call_tool("python", {"code": "1 / 0"})
            assert failed.is_error and "ZeroDivisionError" in text_of(failed)

            found = await session.call_tool("search", {"query": "tidal power", "topn": 2})
            page = text_of(found)
            assert not found.is_error and "Tidal turbines light up the bay" in page
            assert page.startswith("[0]") and "【0†Tidal turbines light up the bay" in page
            opened = await session.call_tool("open", {"id": f"{web.site.url}/articles/tide-energy"})
            assert not opened.is_error and text_of(opened).startswith("[1]")
            match = await session.call_tool("find", {"pattern": "tidal", "cursor": 1})
            assert not match.is_error and "Find results for text: `tidal`" in text_of(match)
            bad = await session.call_tool("open", {"id": 7, "cursor": 0})
            assert bad.is_error and "Invalid link id" in text_of(bad)

    asyncio.run(main())


@pytest.mark.slow
def test_http_sessions_each_have_their_own_python(http_server):
    async def session_calls(url: str, value: int, started: asyncio.Event, other: asyncio.Event) -> str:
        async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert [t.name for t in (await session.list_tools()).tools] == ["python"]
            await session.call_tool("python", {"code": f"x = {value}"})
            started.set()
            await other.wait()  # both sessions have set x before either reads it
            return text_of(await session.call_tool("python", {"code": "print(x)"})).strip()

    async def main() -> list[str]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(
            await asyncio.gather(session_calls(http_server, 1, a, b), session_calls(http_server, 2, b, a))
        )

    assert asyncio.run(main()) == ["1", "2"]


def test_our_client_uses_our_server_over_stdio():
    """The two halves together: gptoss-agent's MCPServer client on gptoss-agent's mcp-server."""
    from gptoss_agent.tools import MCPServer, Toolbox

    with MCPServer.stdio(COMMAND[0], [*COMMAND[1:], "--tools", "browser"], env=_env()) as server:
        box = Toolbox([server])
        assert box.names == ["gptoss_agent.search", "gptoss_agent.open", "gptoss_agent.find"]
        out = box.dispatch("gptoss_agent.search", '{"query": ""}')
        assert out.is_error and "`query` is empty" in out.content
        out = box.dispatch("gptoss_agent.search", '{"topn": 3}')  # checked against the schema first
        assert out.is_error and "'query' is a required property" in out.content


def test_bad_flags_are_one_sentence():
    done = subprocess.run([*COMMAND, "--tools", "shell"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "gptoss-agent mcp-server: unknown tools shell: choose from browser, python."
