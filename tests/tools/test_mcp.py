"""MCP servers as tool namespaces: a real SDK server over stdio and streamable HTTP, driven by the
agent with a scripted engine in gpt-oss's own output forms."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gptoss_agent.agent import Agent, ScriptedEngine
from gptoss_agent.agent.harmony import render_conversation
from gptoss_agent.agent.messages import Role
from gptoss_agent.agent.schema_ts import json_schema_to_typescript
from gptoss_agent.tools import MCPConnectionError, MCPServer, Toolbox, load_mcp_config, tool
from gptoss_agent.tools.mcp import harmony_schema, result_text, sanitize_name

SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
DATE = "2026-01-02"


def stdio_server(**kw) -> MCPServer:
    return MCPServer.stdio(sys.executable, [SERVER], **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(transport: str) -> Iterator[int]:
    """The test server on ``--http`` or ``--sse`` (127.0.0.1), as its own process; yields the port."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, SERVER, transport, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, "the HTTP test server exited"
        time.sleep(0.1)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    for port in _serve("--http"):
        yield f"http://127.0.0.1:{port}/mcp"


def call(recipient: str, body: str, *, constrain: bool = True, think: str | None = None) -> str:
    """A completion calling ``recipient`` as gpt-oss writes it (recipient after the channel)."""
    head = f"<|channel|>analysis<|message|>{think}<|end|><|start|>assistant" if think else ""
    form = " <|constrain|>json" if constrain else " json"
    return f"{head}<|channel|>commentary to={recipient}{form}<|message|>{body}<|call|>"


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


def tool_replies(result) -> list[tuple[str, str]]:
    return [(m.author.name, m.text) for m in result.new_messages if m.author.role is Role.TOOL]


# -- schemas and results (no server) -------------------------------------------------------


def test_harmony_schema_drops_titles_inlines_refs_and_makes_null_unions_nullable():
    pydantic_style = {
        "$defs": {
            "Point": {
                "title": "Point",
                "description": "A point.",
                "type": "object",
                "properties": {"x": {"title": "X", "type": "integer"}},
                "required": ["x"],
            }
        },
        "title": "whereArguments",
        "type": "object",
        "properties": {
            "point": {"$ref": "#/$defs/Point"},
            "label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Label"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "string"}], "description": "A count or a name."},
            "title": {"type": "string", "description": "A property that happens to be called title."},
        },
        "required": ["point"],
    }
    cleaned = harmony_schema(pydantic_style)
    assert cleaned == {
        "type": "object",
        "properties": {
            "point": {
                "description": "A point.",
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"],
            },
            "label": {"type": "string", "default": None, "nullable": True},
            "n": {"description": "A count or a name.", "type": ["integer", "string"]},
            "title": {"type": "string", "description": "A property that happens to be called title."},
        },
        "required": ["point"],
    }
    rendered = json_schema_to_typescript(cleaned)
    assert "label?: string | null, // default: null" in rendered
    assert "n?: number | string," in rendered
    assert "// X" not in rendered and "Label" not in rendered and "any" not in rendered


def test_harmony_schema_recursive_ref_stops_at_an_object():
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
    }
    root = harmony_schema(schema)["properties"]["root"]
    assert root["properties"]["child"] == {"type": "object"}


def test_sanitize_name():
    assert sanitize_name("Secure Filesystem Server") == "Secure_Filesystem_Server"
    assert sanitize_name("get-weather") == "get_weather"
    assert sanitize_name("fs/read.file") == "fs_read_file"
    assert sanitize_name("3d") == "_3d"
    assert sanitize_name("***") == "mcp"


def test_result_text_notes_media_and_keeps_structured_content_without_text():
    from mcp_types import CallToolResult, ImageContent, ResourceLink, TextContent

    image = ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png")
    link = ResourceLink(type="resource_link", name="report", uri="file:///r.pdf", mime_type="application/pdf")
    text, meta = result_text(CallToolResult(content=[image, link], structured_content={"ok": True}))
    assert (
        text
        == '[image: image/png, 8 bytes]\n[resource link: report <file:///r.pdf> (application/pdf)]\n{"ok": true}'
    )
    assert meta["media"][0]["mime_type"] == "image/png" and meta["structured_content"] == {"ok": True}
    text, _ = result_text(
        CallToolResult(content=[TextContent(type="text", text="42")], structured_content={"r": 42})
    )
    assert text == "42"  # the text already says it


# -- a stdio server in the agent ------------------------------------------------------------


def test_agent_calls_a_stdio_server_in_gpt_oss_output_forms(enc):
    server = stdio_server()
    engine = ScriptedEngine(
        [
            call("test_server.add", '{"a": 2, "b": 40}', think="Use the server's add."),
            call("test_server.add", '{"a": "two"}', constrain=False),  # ` json` without <|constrain|>
            call("test_server.describe_point", '{"point": {"x": 3}, "label": null}'),
            call("test_server.picture", "{}"),
            final("42"),
        ],
        enc=enc,
    )
    with Agent(engine, [server], enc=enc, date=DATE) as agent:
        assert server._loop is None  # nothing started before the first render
        result = agent.run("Add 2 and 40.")
        developer = render_conversation(agent.messages[1:2], enc, auto_drop_analysis=False)
    text = enc.decode(developer)
    assert "## test_server\n\n// Tools for the MCP client tests.\nnamespace test_server {" in text
    assert (
        "// Add two integers.\ntype add = (_: {\n// First number.\na: number,\nb: number,\n}) => any;" in text
    )
    assert "type die = () => any;" in text
    assert "label?: string | null, // default: null" in text
    assert "Title" not in text and "anyOf" not in text
    replies = tool_replies(result)
    assert replies[0] == ("test_server.add", "42")
    assert replies[1][0] == "test_server.add"
    assert "Invalid arguments for test_server.add:" in replies[1][1]
    assert (
        "$.a: 'two' is not of type 'integer'" in replies[1][1]
        and "'b' is a required property" in replies[1][1]
    )
    assert replies[2] == ("test_server.describe_point", "point at (3, 0)")  # describe-point on the server
    assert (
        replies[3][1]
        == "[image: image/png, 2.0 KB]\n[resource file:///notes.txt (text/plain)]\nhello notes\na caption"
    )
    assert result.answer == "42"
    assert [c.is_error for c in result.tool_calls] == [False, True, False, False]


def test_raising_dying_and_hanging_tools_go_back_to_the_model_and_the_run_goes_on(enc):
    server = stdio_server(timeout=1.5)
    engine = ScriptedEngine(
        [
            call("test_server.boom", '{"reason": "no fuel"}'),
            call("test_server.pid", "{}"),
            call("test_server.die", "{}"),
            call("test_server.pid", "{}"),
            call("test_server.hang", '{"seconds": 30}'),
            call("test_server.add", '{"a": 1, "b": 1}'),
            final("done"),
        ],
        enc=enc,
    )
    with Agent(engine, [server], enc=enc, date=DATE) as agent:
        result = agent.run("Try everything.")
    replies = [text for _, text in tool_replies(result)]
    assert "boom failed: no fuel" in replies[0] and result.tool_calls[0].is_error
    first_pid = int(replies[1])
    assert replies[2].startswith("The MCP server 'test_server' stopped during the call to test_server.die")
    assert "restarted on the next call" in replies[2] and "dying now" in replies[2]
    assert int(replies[3]) != first_pid  # a new process
    assert replies[4].startswith("test_server.hang did not answer within 1.5 seconds")
    assert replies[5] == "2"
    assert server.restarts == 2
    assert result.answer == "done"
    with pytest.raises(ProcessLookupError):  # every process was stopped and reaped
        os.kill(first_pid, 0)


@pytest.mark.parametrize("protocol", ["auto", "legacy"])
def test_tool_list_changes_are_seen_on_the_next_call(protocol):
    with stdio_server(protocol=protocol) as server:
        box = Toolbox([server])
        assert "test_server.fresh" not in box.names
        grown = box.dispatch("test_server.grow", "{}").content
        assert grown.startswith("grown")
        if protocol == "legacy":  # the notification comes before the result on the same stream
            assert grown == (
                "grown\n\n[The MCP server 'test_server' changed its tools.]\n"
                "New: test_server.fresh(word) -- A tool that appeared later."
            )
        deadline = time.monotonic() + 10  # (a 2026-era event may come a moment after the result)
        while "test_server.fresh" not in box.names and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "test_server.fresh" in box.names  # re-listed after the notification
        out = box.dispatch("test_server.fresh", '{"word": "air"}')
        assert (out.content, out.is_error) == ("fresh air", False)


def test_close_reaps_the_process_and_unknown_tools_are_named():
    server = stdio_server(name="calc")
    box = Toolbox([server])
    out = box.dispatch("calc.nope", "{}")
    assert out.is_error and "Unknown tool 'calc.nope'" in out.content and "calc.add" in out.content
    pid = int(box.dispatch("calc.pid", "{}").content)
    box.close()
    assert server._thread is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_slow_restart_does_not_count_against_the_call(tmp_path):
    """The call after a dead server starts with a restart; the toolbox allows that on top of the call."""
    started = tmp_path / "started"
    slow_second_start = (
        "import pathlib, runpy, sys, time\n"
        f"marker = pathlib.Path({str(started)!r})\n"
        "if marker.exists():\n    time.sleep(7.5)  # longer than the call's own limit plus the grace\n"
        "marker.touch()\n"
        f"runpy.run_path({SERVER!r}, run_name='__main__')\n"
    )
    with MCPServer.stdio(sys.executable, ["-c", slow_second_start], timeout=1.5) as server:
        box = Toolbox([server])
        first = int(box.dispatch("test_server.pid", "{}").content)
        assert box.dispatch("test_server.die", "{}").is_error
        out = box.dispatch("test_server.pid", "{}")
        assert not out.is_error and int(out.content) != first, out.content
        assert server.restarts == 1


def test_a_server_that_cannot_start_is_one_sentence():
    server = MCPServer.stdio("/nonexistent/mcp-server", ["--flag"])
    with pytest.raises(MCPConnectionError) as info:
        server.connect()
    message = str(info.value)
    assert message.startswith("The MCP server '/nonexistent/mcp-server --flag' could not be started:")
    assert "\n" not in message
    server.close()


def test_async_callers_share_the_servers_loop():
    async def main() -> list[str]:
        async with stdio_server() as server:
            box = Toolbox([server])
            outs = await asyncio.gather(
                *(box.adispatch("test_server.add", json.dumps({"a": i, "b": 1})) for i in range(4))
            )
            return [o.content for o in outs]

    assert asyncio.run(main()) == ["1", "2", "3", "4"]


def test_mcp_namespace_sits_beside_function_tools():
    @tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    with stdio_server(name="functions") as server:  # a reserved name gets a suffix
        box = Toolbox([echo, server])
        assert box.dispatch("functions.echo", '{"text": "hi"}').content == "hi"
        assert box.dispatch("functions_mcp.add", '{"a": 1, "b": 2}').content == "3"
        assert [ns.name for ns in box.developer_namespaces] == ["functions", "functions_mcp"]


# -- streamable HTTP ---------------------------------------------------------------------------


def test_http_server_with_headers_in_the_agent(enc, http_url):
    server = MCPServer.http(http_url, headers={"X-Test": "hello"}, name="remote")
    engine = ScriptedEngine(
        [call("remote.whoami", "{}"), call("remote.add", '{"a": 5, "b": 6}'), final("ok")], enc=enc
    )
    with Agent(engine, [server], enc=enc, date=DATE) as agent:
        result = agent.run("Who am I?")
    assert tool_replies(result) == [("remote.whoami", "hello"), ("remote.add", "11")]


def test_http_server_that_goes_away_is_reported_then_reconnected(http_url):
    with MCPServer.http(http_url, name="remote", protocol="legacy") as server:
        assert server.call("add", '{"a": 1, "b": 2}').content == "3"
        server._mark_broken("test")  # as after a dropped connection
        assert server.call("add", '{"a": 2, "b": 2}').content == "4"
        assert server.restarts == 1
    bad = MCPServer.http("http://127.0.0.1:9/mcp", connect_timeout=5)
    with pytest.raises(
        MCPConnectionError, match=r"^The MCP server 'http://127\.0\.0\.1:9/mcp' could not be reached: "
    ):
        bad.connect()
    bad.close()


def test_sse_server():
    for port in _serve("--sse"):
        with MCPServer.http(f"http://127.0.0.1:{port}/sse") as server:
            assert server.protocol == "legacy"  # SSE predates the 2026 protocol
            assert server.call("add", '{"a": 20, "b": 22}').content == "42"


# -- the mcpServers configuration -------------------------------------------------------------


def test_load_mcp_config(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "calc": {"command": sys.executable, "args": [SERVER], "env": {"A": "1"}},
                    "remote": {"url": "http://127.0.0.1:8000/mcp", "headers": {"X": "y"}},
                    "old": {"url": "http://127.0.0.1:8000/sse"},
                    "off": {"command": "x", "disabled": True},
                }
            }
        )
    )
    servers = load_mcp_config(path, timeout=5)
    assert [s.name for s in servers] == ["calc", "remote", "old"]
    assert servers[0].timeout == 5 and servers[2].protocol == "legacy"
    with servers[0] as calc:
        assert calc.call("add", '{"a": 1, "b": 2}').content == "3"
    for bad, message in [
        ("{", "is not valid JSON"),
        ('{"servers": 1}', 'has no "mcpServers" object'),
        ('{"mcpServers": {"x": {"args": []}}}', 'has neither "command" nor "url"'),
        ('{"mcpServers": {"x": {"url": "ftp://h/x"}}}', "not an http(s) URL"),
    ]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_mcp_config(path)


# -- workflows ---------------------------------------------------------------------------------


def test_workflow_steps_share_the_server_and_resume_from_a_transcript(enc, tmp_path):
    from gptoss_agent.agent.workflow import Workflow

    transcript = tmp_path / "flow.jsonl"

    def flow(agent: Agent) -> Workflow:
        f = Workflow(agent)
        f.step("pid", "Which process serves you?")
        f.step(
            "sum",
            "Add 20 and 22 with the server.",
            schema={"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]},
        )
        return f

    engine = ScriptedEngine(
        [
            call("test_server.pid", "{}"),
            final("the pid"),
            call("test_server.add", '{"a": 20, "b": 22}'),
            '<|channel|>final <|constrain|>sum<|message|>{"total": 42}<|return|>',
        ],
        enc=enc,
    )
    with Agent(engine, [stdio_server()], enc=enc, date=DATE, transcript=transcript) as agent:
        result = flow(agent).run()
    assert result["sum"].data == {"total": 42}
    pids = [r.tool_calls[0].output for r in result["pid"].runs]
    assert pids and int(pids[0]) > 0
    resumed = ScriptedEngine([], enc=enc)
    with Agent.from_transcript(transcript, resumed, [stdio_server()], enc=enc, date=DATE) as agent:
        again = flow(agent).run()
    assert again["sum"].data == {"total": 42} and again["sum"].resumed and resumed.calls == 0
