"""Transcripts: one openai-harmony message JSON per line, flushed as it happens; resume after kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import random
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


def test_resume_after_a_torn_last_line_never_corrupts(enc, tmp_path):
    """The issue's reproduction: cut the file at points inside its last lines, resume, load again."""
    path = tmp_path / "whole.jsonl"
    engine = ScriptedEngine([call("functions.add", '{"a": 1, "b": 2}', think="add"), final("3")], enc=enc)
    with Agent(engine, [add], enc=enc, date=DATE, transcript=path) as agent:
        agent.run("1+2?")
    data = path.read_bytes()
    lines = data.split(b"\n")
    user_line = next(i for i, line in enumerate(lines) if json.loads(line)["role"] == "user")
    user_end = sum(len(line) + 1 for line in lines[: user_line + 1])
    cuts = sorted(random.Random(5).sample(range(user_end + 1, len(data)), 25))
    for cut in cuts:
        copy = tmp_path / f"cut{cut}.jsonl"
        copy.write_bytes(data[:cut])
        before = load_transcript(copy)
        resumed = Agent.from_transcript(copy, ScriptedEngine([final("3")], enc=enc, repeat_last=True), [add], enc=enc)
        resumed.resume() if before[-1].channel != "final" else resumed.run("again")
        resumed.close()
        after = load_transcript(copy)  # never TranscriptError
        assert after[: len(before)] == before and after[-1].channel == "final"


def test_fsync_on_request(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    with Transcript(tmp_path / "a.jsonl") as plain:
        plain.append(Message.from_role_and_content(Role.USER, "flushed"))
    assert synced == []
    with Transcript(tmp_path / "new" / "b.jsonl", fsync=True) as durable:
        durable.append(Message.from_role_and_content(Role.USER, "one"))
        durable.append(Message.from_role_and_content(Role.USER, "two"))
    assert len(synced) >= 3  # the new file's folder, then each line
    assert [m.text for m in load_transcript(tmp_path / "new" / "b.jsonl")] == ["one", "two"]


ZYGOTE = r"""
import os, sys, time
sys.path.insert(0, sys.argv[3])
from agent_helpers import call, final
from gptoss_agent.agent import Agent, ScriptedEngine, Transcript, load_transcript
from gptoss_agent.model import load_tokenizer
from gptoss_agent.tools import tool

PATH, LOG = sys.argv[1], sys.argv[2]
enc = load_tokenizer()


def log(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


class Logged(Transcript):
    def append(self, message):
        super().append(message)
        log("appended")  # after the write: everything logged must survive the kill


@tool
def step(n: int) -> str:
    '''One step of work.

    Args:
        n: Which step.
    '''
    log(f"tool {n}")
    time.sleep(0.05)
    return f"step {n} done"


def respond(prompt):
    tail = enc.decode(prompt[-40:])
    head, _, last = tail.rpartition("<|start|>")
    previous = head.rpartition("<|start|>")[2]
    if previous.startswith("functions.step") and "done" in previous:
        n = int(previous.split("step ")[-1].split(" done")[0])
        if n >= 2:
            return final(f"all steps done", think="That was the last step. " * 3)
        return call("functions.step", '{"n": %d}' % (n + 1), think=f"Now step {n + 1}. " * 4)
    return call("functions.step", '{"n": 0}', think="Start with step 0. " * 4)


class Slow(ScriptedEngine):
    def _stream(self, *args):
        for token in super()._stream(*args):
            time.sleep(0.0005)
            yield token


def child(k):
    engine = Slow([respond], enc=enc, repeat_last=True)
    messages = load_transcript(PATH) if os.path.exists(PATH) and os.path.getsize(PATH) else []
    if messages:
        agent = Agent.from_transcript(PATH, engine, [step], enc=enc)
    else:
        agent = Agent(engine, [step], enc=enc, date="2026-01-02")
    agent.transcript = Logged(PATH)
    if messages and messages[-1].channel != "final" and any(m.author.role.value == "user" for m in messages):
        agent.resume()
    else:
        agent.run(f"task {k}")


for line in sys.stdin:
    k = int(line.split()[1])
    pid = os.fork()
    if pid == 0:
        try:
            child(k)
        finally:
            os._exit(0)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


def _last_line(path) -> str:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def test_sigkill_at_random_points_never_corrupts_and_loses_at_most_one_message(enc, tmp_path):
    """A real child process (forked from a warm parent) SIGKILLed at random points, 50 times."""
    path, log = tmp_path / "run.jsonl", tmp_path / "child.log"
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(path), str(log), os.path.dirname(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    rng = random.Random(12)
    kills = mid_tool = 0
    before: list[Message] = []
    span = 0.3  # seconds a whole turn takes (re-measured from every child that was not killed)
    try:
        for k in range(300):
            if kills >= 50:
                break
            log.unlink(missing_ok=True)
            zygote.stdin.write(f"go {k}\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            started = time.monotonic()
            if k > 0:  # the first child runs a whole turn undisturbed: the kills then land anywhere in one
                if k % 5 == 0:  # every fifth: while a tool runs (it sleeps 50 ms after logging)
                    while time.monotonic() - started < 3 * span and not _last_line(log).startswith("tool"):
                        time.sleep(0.002)
                    time.sleep(rng.uniform(0.0, 0.03))
                else:
                    time.sleep(rng.uniform(0.0, span))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            status = int(zygote.stdout.readline())
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            if not killed:
                span = max(0.05, 1.1 * (time.monotonic() - started))
            kills += killed
            after = load_transcript(path) if path.exists() else []  # every resume point loads
            assert after[: len(before)] == before  # nothing written before is lost or changed
            lines = log.read_text().splitlines() if log.exists() else []
            reported = lines.count("appended")
            assert reported <= len(after) - len(before) <= reported + 1  # at most the one in flight
            if killed and lines and lines[-1].startswith("tool"):
                mid_tool += 1  # cut off mid-call: the call is the last message, so resume reruns it
                assert after[-1].recipient == "functions.step"
            before = after
        assert kills >= 50 and mid_tool >= 5, (kills, mid_tool)
        # a last, undisturbed run finishes the session; the whole file loads and renders
        log.unlink(missing_ok=True)
        zygote.stdin.write("go 999\n")
        zygote.stdin.flush()
        zygote.stdout.readline()
        assert int(zygote.stdout.readline()) == 0
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
    final_messages = load_transcript(path)
    if final_messages[-1].channel != "final":  # the undisturbed run resumed a cut turn: finish the next
        pytest.fail(f"the last run did not finish its turn: {final_messages[-1].to_dict()}")
    render_conversation_for_completion(final_messages, Role.ASSISTANT, enc, auto_drop_analysis=False)
    for i, message in enumerate(final_messages[:-1]):
        if message.author.role is Role.ASSISTANT and message.recipient is not None:
            assert final_messages[i + 1].author.role is Role.TOOL  # every call got its (re-run) result
