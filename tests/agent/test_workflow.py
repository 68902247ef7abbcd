"""Workflows: steps sharing one session, JSON Schema answers validated and retried, resume after a crash."""

from __future__ import annotations

import pytest
from agent_helpers import DATE, call, final
from gptoss_agent.agent import Agent, ScriptedEngine, ScriptExhausted
from gptoss_agent.agent.harmony import render_conversation
from gptoss_agent.agent.messages import Role
from gptoss_agent.agent.workflow import Workflow, WorkflowError, parse_json_answer
from gptoss_agent.tools import tool

STATIONS = {"Sihwa Lake": 254, "La Rance": 240, "Swansea": 320}


@tool
def capacity(station: str) -> int:
    """Installed capacity of a tidal power station in MW.

    Args:
        station: Its name.
    """
    return STATIONS[station]


TOTAL = {
    "type": "object",
    "properties": {
        "total_mw": {"type": "integer"},
        "stations": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["total_mw", "stations"],
    "additionalProperties": False,
}


def research_then_total(agent: Agent) -> Workflow:
    flow = Workflow(agent)
    flow.step("research", "Look up the capacity of Sihwa Lake and La Rance.")
    flow.step(
        "total",
        lambda done: f"Add up what you found ({done['research'].answer}).",
        schema=TOTAL,
        description="The total capacity.",
    )
    return flow


SCRIPT = [
    call("functions.capacity", '{"station": "Sihwa Lake"}', think="Look both up."),
    call("functions.capacity", '{"station": "La Rance"}'),
    final("Sihwa Lake 254 MW, La Rance 240 MW.", think="Got both."),
    final('{"total_mw": "494"}', think="Sum."),  # wrong type: retried
    final('```json\n{"total_mw": 494, "stations": ["Sihwa Lake", "La Rance"]}\n```'),
]


def test_two_steps_share_the_session_and_retry_until_the_schema_holds(enc):
    engine = ScriptedEngine(SCRIPT, enc=enc)
    agent = Agent(engine, [capacity], enc=enc, date=DATE)
    seen = []
    result = research_then_total(agent).run(on_event=lambda name, event: seen.append(name))
    assert result["research"].answer == "Sihwa Lake 254 MW, La Rance 240 MW."
    assert result["research"].data is None and len(result["research"].runs) == 1
    total = result["total"]
    assert total.data == {"total_mw": 494, "stations": ["Sihwa Lake", "La Rance"]}
    assert len(total.runs) == 2 and not total.resumed
    assert total.task == "Add up what you found (Sihwa Lake 254 MW, La Rance 240 MW.)."
    assert seen[0] == "research" and seen[-1] == "total"
    # the schema is a harmony response format of the developer message, declared up front
    developer = enc.decode(render_conversation(agent.messages[1:2], enc))
    assert "# Response Formats\n\n## total\n\n// The total capacity.\n" in developer
    users = [m.text for m in agent.messages if m.author.role is Role.USER]
    assert users[1].endswith("Answer with JSON only, in the `total` response format.")
    assert users[2].startswith("Your answer does not match the response format `total`")
    assert "at $.total_mw: '494' is not of type 'integer'" in users[2]
    assert "stations" in users[2]  # every problem is named
    # one session: step 2's prompt still holds step 1's question and answer
    step2 = enc.decode(engine.prompts[3])
    assert "Look up the capacity" in step2 and "La Rance 240 MW." in step2


def test_a_step_that_never_fits_fails_with_its_attempts(enc):
    engine = ScriptedEngine([final("not json")], enc=enc, repeat_last=True)
    flow = Workflow(Agent(engine, enc=enc, date=DATE)).step(
        "n", "Give a number.", schema={"type": "integer"}, retries=1
    )
    with pytest.raises(WorkflowError, match="no answer matching its schema after 2 attempts") as info:
        flow.run()
    assert len(info.value.step.runs) == 2 and engine.calls == 2
    assert "it is not JSON" in enc.decode(engine.prompts[1])


def test_a_step_stopped_by_a_limit_fails(enc):
    engine = ScriptedEngine([call("functions.capacity", '{"station": "Swansea"}')], enc=enc, repeat_last=True)
    flow = Workflow(Agent(engine, [capacity], enc=enc, date=DATE, max_steps=2)).step("a", "loop")
    with pytest.raises(WorkflowError, match="stopped by max_steps"):
        flow.run()


def test_resume_after_a_crash_in_the_second_step(enc, tmp_path):
    path = tmp_path / "flow.jsonl"
    # the first process dies in step 2, after its first (invalid) answer and during the retry
    crashing = ScriptedEngine(SCRIPT[:4], enc=enc)
    crashed = Agent(crashing, [capacity], enc=enc, date=DATE, transcript=path)
    with pytest.raises(ScriptExhausted):
        research_then_total(crashed).run()
    crashed.close()  # the process is gone, and its lock on the transcript with it
    # a new process: the same workflow over the transcript
    engine = ScriptedEngine(SCRIPT[4:], enc=enc)
    agent = Agent.from_transcript(path, engine, [capacity], enc=enc)
    result = research_then_total(agent).run()
    assert result["research"].resumed and result["research"].runs == []
    assert result["research"].answer == "Sihwa Lake 254 MW, La Rance 240 MW."
    assert result["total"].resumed and result["total"].data["total_mw"] == 494
    assert engine.calls == 1  # only the interrupted retry was generated
    # a finished workflow resumes without generating anything
    idle = ScriptedEngine([], enc=enc)
    again = research_then_total(Agent.from_transcript(path, idle, [capacity], enc=enc)).run()
    assert again["total"].data == result["total"].data and idle.calls == 0


def test_schema_given_after_the_session_began_goes_in_the_task(enc):
    engine = ScriptedEngine([final("hi"), final('{"x": 1}')], enc=enc)
    agent = Agent(engine, enc=enc, date=DATE)
    agent.run("hello")
    flow = Workflow(agent).step("obj", "Give x.", schema={"type": "object", "required": ["x"]})
    assert flow.run()["obj"].data == {"x": 1}
    assert 'matching this JSON Schema: {"type":"object","required":["x"]}' in enc.decode(engine.prompts[1])


def test_parse_json_answer_and_bad_schemas():
    assert parse_json_answer(" ```\n[1, 2]\n``` ") == [1, 2]
    with pytest.raises(ValueError):
        parse_json_answer("nope")
    flow = Workflow.__new__(Workflow)
    flow.steps = []
    with pytest.raises(Exception, match="is not valid"):
        flow.step("bad", "x", schema={"type": "nonsense"})
    flow.step("ok", "x")
    with pytest.raises(ValueError, match="already exists"):
        flow.step("ok", "y")


# -- the examples run as written (--demo: a scripted model, a local web page) ---------------------


def _example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_custom_tool(capsys):
    assert _example("custom_tool").main(["--demo"]) == 0
    out = capsys.readouterr().out
    assert "'miles' is not one of ['km', 'mi']" in out and "243.6 miles" in out


def test_example_structured_output(capsys):
    assert _example("structured_output").main(["--demo"]) == 0
    out = capsys.readouterr().out
    assert '"servings": 4' in out and "valid after 2 attempt(s)" in out


@pytest.mark.bwrap
def test_example_workflow_research_compute(capsys, tmp_path):
    from gptoss_agent.sandbox.bubblewrap import bubblewrap_available

    if not bubblewrap_available():
        pytest.skip("bubblewrap is missing or cannot create namespaces here (CI installs it)")
    module = _example("workflow_research_compute")
    transcript = tmp_path / "flow.jsonl"
    assert module.main(["--demo", "--sandbox", "bubblewrap", "--transcript", str(transcript)]) == 0
    out = capsys.readouterr().out
    assert "553 184.33" in out and '"total_mw": 553' in out
    # run again: everything comes from the transcript
    assert module.main(["--demo", "--sandbox", "bubblewrap", "--transcript", str(transcript)]) == 0
    assert '"total_mw": 553' in capsys.readouterr().out
