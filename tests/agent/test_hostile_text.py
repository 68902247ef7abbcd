"""Hostile text through a real agent run: lone surrogates from a page, a tool and the user reach
the transcript, ``--jsonl`` and a resume; escape sequences from pages, tools and the model reach
a real terminal stream through the rich view."""

from __future__ import annotations

import io
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from agent_helpers import DATE, call, final
from gptoss_agent.agent import Agent, ScriptedEngine, StopReason, load_transcript
from gptoss_agent.agent import cli as cli_module
from gptoss_agent.agent.events import event_to_dict
from gptoss_agent.agent.render import Renderer
from gptoss_agent.tools import Browser, tool
from rich.console import Console

LONE = "\ud800"


@tool
def echo(text: str) -> str:
    """Say ``text`` back.

    Args:
        text: What to say.
    """
    return f"you said: {text}"


@tool
def terminal_output() -> str:
    """What a program printed (with its cursor movements and a window title)."""
    return "step 1\r\nstep 2\x1b[1A\x1b[2K\x1b]0;owned\x07\ttabbed\n\x9b2Jend"


PAGES = {
    # valid JSON: each escape is a lone surrogate once parsed
    "/data.json": (b'{"name": "\\ud800 lone", "pair": "\\ud83d\\ude00"}', "application/json"),
    "/news": (
        (
            b"<html><head><title>News\x1b]0;retitled\x07</title></head><body><p>Read \x1b[2J\x1b[H"
            b"\x1b]8;;http://evil.test/\x1b\\this link\x1b]8;;\x1b\\ now.</p></body></html>"
        ),
        "text/html; charset=utf-8",
    ),
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body, kind = PAGES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def site():
    """A real HTTP server on 127.0.0.1 serving ``PAGES``; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _script(site: str) -> list[str]:
    return [
        call("browser.open", json.dumps({"id": f"{site}/data.json"}), think="Open the data."),
        call("functions.echo", '{"text": "\\ud800 and \\udfff"}'),
        final("Done: \ufffd."),
    ]


def _strict_utf8(lines: list[str]) -> None:
    for line in lines:
        line.encode("utf-8")  # raises on a lone surrogate


def test_lone_surrogates_from_a_page_a_tool_and_the_user_do_not_stop_the_run(enc, site, tmp_path):
    path = tmp_path / "run.jsonl"
    tools = [Browser(allow_private_urls=True, encoding=enc), echo]
    agent = Agent(ScriptedEngine(_script(site), enc=enc), tools, enc=enc, date=DATE, transcript=path)
    events = list(agent.stream(f"look up {LONE} the data"))
    agent.close()
    result = events[-1].result
    assert result.stop_reason is StopReason.ANSWER, result
    outputs = [c.output for c in result.tool_calls]
    assert '"name": "\ufffd lone"' in outputs[0] and '"pair": "😀"' in outputs[0]
    assert outputs[1] == "you said: \ufffd and \ufffd"
    # every event has a JSON line that encodes as UTF-8 (what --jsonl prints)
    _strict_utf8([json.dumps(event_to_dict(e), ensure_ascii=False) for e in events])
    # the transcript is valid UTF-8 all through, and it loads and resumes
    path.read_bytes().decode("utf-8")
    messages = load_transcript(path)
    assert messages[2].text.startswith("look up \ufffd the data")
    again = Agent.from_transcript(
        path, ScriptedEngine([final("Still fine.")], enc=enc), tools, enc=enc, date=DATE
    )
    assert again.run("and again?").answer == "Still fine."
    again.close()
    assert len(load_transcript(path)) == len(messages) + 2
    # a crash right after the call to the page: resuming runs the call again, and goes on
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = next(i for i, m in enumerate(messages) if m.recipient == "browser.open")
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("".join(lines[: cut + 1]), encoding="utf-8")
    engine = ScriptedEngine([final("Recovered.")], enc=enc)
    resumed = Agent.from_transcript(crashed, engine, tools, enc=enc, date=DATE)
    result = resumed.resume()
    resumed.close()
    assert result.answer == "Recovered." and "\ufffd lone" in result.tool_calls[0].output
    crashed.read_bytes().decode("utf-8")


def test_a_transcript_with_escaped_surrogates_and_bad_bytes_still_loads(tmp_path):
    path = tmp_path / "old.jsonl"
    line = json.dumps({"role": "user", "content": [{"type": "text", "text": "a\ud800b"}]})  # ASCII escapes
    path.write_bytes(line.encode() + b"\n" + line.replace("a", "\xff").encode("latin-1") + b"\n")
    assert [m.text for m in load_transcript(path)] == ["a\ufffdb", "\ufffd\ufffdb"]


class _Stdout(io.TextIOWrapper):
    """A pipe's stdout: UTF-8, strict, as Python opens it under a UTF-8 locale."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)


def test_cli_jsonl_and_resume_with_lone_surrogates(enc, site, tmp_path, monkeypatch):
    path = tmp_path / "cli.jsonl"
    engines = iter(
        [
            ScriptedEngine([call("functions.echo", '{"text": "\\udfff!\\u009b"}'), final("ok")], enc=enc),
            ScriptedEngine([final("resumed")], enc=enc),
        ]
    )
    monkeypatch.setattr(cli_module, "_load_engine", lambda args, quiet: (next(engines), enc))
    common = ["--jsonl", "--tools", f"{__name__}:echo"]
    for argv in (
        [*common, "--transcript", str(path), "task \udcff from a bad byte in argv"],
        [*common, "--resume", str(path), "next"],
    ):
        out = _Stdout()
        monkeypatch.setattr(sys, "stdout", out)
        assert cli_module.main(argv) == 0
        lines = out.buffer.getvalue().decode("utf-8").splitlines()  # type: ignore[attr-defined]
        assert not re.search("[\x7f-\x9f]", "".join(lines))  # C1 controls escaped in JSON too
        done = [json.loads(line) for line in lines if '"run_done"' in line]
        assert done and done[-1]["result"]["stop_reason"] == "answer"
    assert [m.text for m in load_transcript(path)][-1] == "resumed"
    assert "you said: \ufffd!\x9b" in [m.text for m in load_transcript(path)]


_SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_escape_sequences_reach_the_terminal_only_as_visible_text(enc, site):
    script = [
        call("browser.open", json.dumps({"id": f"{site}/news"}), think="Look\x1b]0;think\x07 it up."),
        call("functions.terminal_output", "{}"),
        final("See \x1b]8;;http://evil.test/\x1b\\here\x1b]8;;\x1b\\ and \x1b[31mred\x1b[0m\x9b2J."),
    ]
    agent = Agent(
        ScriptedEngine(script, enc=enc),
        [Browser(allow_private_urls=True, encoding=enc), terminal_output],
        enc=enc,
    )
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, color_system="truecolor", width=100)
    renderer = Renderer(console)
    for event in agent.stream("news?"):
        renderer(event)
    agent.close()
    shown = stream.getvalue()
    assert _SGR.search(shown), "the view's own styling is still there"
    rest = _SGR.sub("", shown)
    assert "\x1b" not in rest and "\x07" not in rest and not re.search("[\x80-\x9f]", rest), repr(rest)
    for visible in (
        "News\\x1b]0;retitled\\a",  # the page title, in the tool panel
        "\\x1b[2J\\x1b[H",  # page text
        "\\x1b]8;;http://evil.test/\\x1b\\this link",  # a spoofed link, shown not followed
        "step 2\\x1b[1A\\x1b[2K\\x1b]0;owned\\a",  # a program's output
        "\\x9b2Jend",
        "Look\\x1b]0;think\\a it up.",  # the reasoning
        "\\x1b[31mred\\x1b[0m\\x9b2J",  # the answer
    ):
        assert visible in rest, (visible, rest)
    assert re.search(r"│ step 1 +│\n│ step 2", rest), rest  # \r\n is a line break, \n stays one


def test_markup_in_a_tool_name_is_not_a_link():
    from gptoss_agent.agent.events import ToolCallFinished, ToolCallRecord

    stream = io.StringIO()
    renderer = Renderer(Console(file=stream, force_terminal=True, width=100))
    record = ToolCallRecord(step=1, recipient="[link=http://evil.test]x[/link]", arguments="{}", channel=None)
    renderer(ToolCallFinished(record))
    assert "\x1b]8" not in stream.getvalue() and "[link=http://evil.test]x[/link]" in stream.getvalue()


@pytest.mark.bwrap
def test_sandbox_output_reaches_the_terminal_only_as_visible_text(enc):
    import shutil

    from gptoss_agent.sandbox import open_sandbox
    from gptoss_agent.tools import Python

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed here (CI installs it)")
    code = 'print("top\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\x1b]8;;http://evil.test/\\x1b\\\\link\\x9b31m")'
    script = [f"<|channel|>analysis to=python code<|message|>{code}<|call|>", final("Printed.")]
    with open_sandbox("bubblewrap", timeout=20) as session:  # opened here, as the python tool would
        agent = Agent(ScriptedEngine(script, enc=enc), [Python(session)], enc=enc)
        stream = io.StringIO()
        renderer = Renderer(Console(file=stream, force_terminal=True, width=120))
        for event in agent.stream("print it"):
            renderer(event)
    rest = _SGR.sub("", stream.getvalue())
    assert "\x1b" not in rest and not re.search("[\x80-\x9f\x07]", rest), repr(rest)
    assert "top\\x1b[2J\\x1b[H\\x1b]0;owned\\a\\x1b]8;;http://evil.test/\\x1b\\link\\x9b31m" in rest, rest
