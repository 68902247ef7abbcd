"""Transcripts: one openai-harmony message JSON per line, flushed as it happens; resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import openai_harmony as oh
import pytest
from agent_helpers import DATE, add, call, final
from gptoss_agent.agent import (
    Agent,
    ScriptedEngine,
    StopReason,
    Transcript,
    TranscriptError,
    TranscriptLocked,
    load_transcript,
)
from gptoss_agent.agent.harmony import render_conversation_for_completion
from gptoss_agent.agent.messages import Message, Role
from gptoss_agent.tools import tool


@tool
def hang(seconds: float) -> str:
    """Wait.

    Args:
        seconds: How long.
    """
    return f"waited {seconds}"


def test_every_message_is_a_harmony_json_line(enc, tmp_path):
    path = tmp_path / "run.jsonl"
    engine = ScriptedEngine([call("functions.add", '{"a": 2, "b": 3}', think="add"), final("5")], enc=enc)
    agent = Agent(engine, [add], enc=enc, date=DATE, transcript=path)
    result = agent.run("2+3?")
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [m.to_dict() for m in result.messages]
    # openai-harmony reads every line (it ignores "metadata", where the generated token ids are kept)
    theirs = [oh.Message.from_dict(json.loads(line)) for line in lines[1:]]  # (system: our date field)
    plain = [{k: v for k, v in json.loads(line).items() if k != "metadata"} for line in lines[1:]]
    assert [m.to_dict() for m in theirs] == plain
    assert "token_ids" in json.loads(lines[-1])["metadata"]  # the model's messages keep their tokens
    assert load_transcript(path) == result.messages
    roles = [m.author.role for m in load_transcript(path)]
    assert roles == [
        Role.SYSTEM,
        Role.DEVELOPER,
        Role.USER,
        Role.ASSISTANT,
        Role.ASSISTANT,
        Role.TOOL,
        Role.ASSISTANT,
    ]


def test_a_line_cut_off_mid_write_is_ignored(tmp_path):
    path = tmp_path / "t.jsonl"
    with Transcript(path) as t:
        t.append(Message.from_role_and_content(Role.USER, "hello"))
    with open(path, "a") as f:
        f.write('{"role": "assistant", "name": nu')
    assert [m.text for m in load_transcript(path)] == ["hello"]
    path.write_text('{"role": "nobody"}\n')
    with pytest.raises(TranscriptError, match="line 1"):
        load_transcript(path)


CHILD = """
import sys, time
from pathlib import Path
from gptoss_agent.agent import Agent, ScriptedEngine
from gptoss_agent.tools import tool
sys.path.insert(0, {tests!r})
from agent_helpers import add, call

@tool
def hang(seconds: float) -> str:
    '''Wait.

    Args:
        seconds: How long.
    '''
    Path({marker!r}).write_text("running")
    time.sleep(seconds)
    return "finished"

engine = ScriptedEngine([
    call("functions.add", '{{"a": 20, "b": 22}}', think="First add."),
    call("functions.hang", '{{"seconds": 60}}', think="Now wait."),
], enc=None)
Agent(engine, [add, hang], date={date!r}, transcript={path!r}).run("Add, then wait.")
"""


def test_resume_after_kill(enc, tmp_path):
    path, marker = tmp_path / "run.jsonl", tmp_path / "marker"
    tests = os.path.dirname(__file__)
    script = CHILD.format(tests=tests, marker=str(marker), date=DATE, path=str(path))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert time.monotonic() < deadline, "the child never reached its second tool call"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    before = load_transcript(path)
    assert before[-1].recipient == "functions.hang"  # the call was written before it ran
    assert [m.author.name for m in before if m.author.role is Role.TOOL] == ["functions.add"]

    engine = ScriptedEngine([final("42, and I waited.")], enc=enc)
    agent = Agent.from_transcript(path, engine, [add, hang], enc=enc)
    result = agent.resume()
    assert result.stop_reason is StopReason.ANSWER and result.answer == "42, and I waited."
    assert [c.recipient for c in result.tool_calls] == ["functions.hang"]
    assert result.tool_calls[0].output == "waited 60.0" and result.steps == 1
    assert result.tool_calls[0].metadata["rerun"] is True  # cut off by the kill: it may have run
    # one writer per file: a second agent appending while the first is open is refused
    with pytest.raises(TranscriptLocked, match="being written by another agent"):
        Agent.from_transcript(path, ScriptedEngine([final("x")], enc=enc), [add, hang], enc=enc).run("more")
    agent.close()
    # the resumed prompt is exactly the conversation so far (reasoning of this turn kept)
    after = load_transcript(path)
    assert after[: len(before)] == before and len(after) == len(before) + 2
    expected = render_conversation_for_completion(after[:-1], Role.ASSISTANT, enc, auto_drop_analysis=False)
    assert engine.prompts[0] == expected
    assert "First add." in enc.decode(engine.prompts[0])
    # resuming a finished turn returns its answer without generating
    again = Agent.from_transcript(path, ScriptedEngine([], enc=enc), [add, hang], enc=enc).resume()
    assert (again.answer, again.steps) == ("42, and I waited.", 0)
    # a new turn drops the reasoning of the finished one
    nxt = ScriptedEngine([final("ok")], enc=enc)
    Agent.from_transcript(path, nxt, [add, hang], enc=enc).run("thanks")
    assert "First add." not in enc.decode(nxt.prompts[0]) and "Add, then wait." in enc.decode(nxt.prompts[0])


def test_resume_needs_a_turn(enc, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    agent = Agent.from_transcript(path, ScriptedEngine([], enc=enc), enc=enc)
    with pytest.raises(ValueError, match="nothing to resume"):
        agent.resume()


def test_transcript_matches_the_golden_file(enc, tmp_path):
    """Byte for byte: the JSON form, the order, and the tool message's author, recipient and channel."""
    path = tmp_path / "run.jsonl"
    engine = ScriptedEngine(
        [
            call("functions.add", '{"a": 2, "b": "x"}', think="add"),
            call("functions.add", '{"a": 2, "b": 3}'),
            final("5"),
        ],
        enc=enc,
    )
    Agent(engine, [add], enc=enc, date=DATE, instructions="Be exact.", transcript=path).run("2+3?")
    golden = os.path.join(os.path.dirname(__file__), "golden", "transcript.jsonl")
    if os.environ.get("UPDATE_GOLDEN"):
        with open(golden, "w", encoding="utf-8") as f:
            f.write(path.read_text())
    with open(golden, encoding="utf-8") as f:
        assert path.read_text() == f.read()
