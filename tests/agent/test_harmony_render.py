"""Rendering details, the data model's API, and the ``python -m gptoss_agent.agent.harmony`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import harmony_cases as cases
import openai_harmony as oh
import pytest
from gptoss_agent.agent import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    RenderError,
    ResponseFormat,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
    render_conversation_for_completion,
    render_message,
    stop_tokens,
    stop_tokens_for_assistant_actions,
)
from gptoss_agent.agent.harmony import main
from gptoss_agent.agent.schema_ts import json_value_text


@pytest.fixture(scope="module")
def oracle():
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


def test_builtin_namespaces_match_openai_harmony():
    assert ToolNamespaceConfig.browser().to_dict() == oh.ToolNamespaceConfig.browser().model_dump(
        exclude_none=True
    )
    assert ToolNamespaceConfig.python().to_dict() == oh.ToolNamespaceConfig.python().model_dump(
        exclude_none=True
    )


def test_builder_api_mirrors_openai_harmony(enc, oracle):
    def build(m):
        system = (
            m.SystemContent.new()
            .with_reasoning_effort(m.ReasoningEffort.HIGH)
            .with_conversation_start_date("2026-11-27")
            .with_browser_tool()
            .with_python_tool()
        )
        dev = (
            m.DeveloperContent.new()
            .with_instructions("Answer briefly.")
            .with_function_tools(
                [m.ToolDescription.new("get_weather", "Weather now.", {"type": "object", "properties": {}})]
            )
        )
        return m.Conversation.from_messages(
            [
                m.Message.from_role_and_content(m.Role.SYSTEM, system),
                m.Message.from_role_and_content(m.Role.DEVELOPER, dev),
                m.Message.from_role_and_content(m.Role.USER, "Weather?"),
                m.Message.from_role_and_content(m.Role.ASSISTANT, "{}")
                .with_channel("commentary")
                .with_recipient("functions.get_weather")
                .with_content_type("<|constrain|>json"),
                m.Message.from_author_and_content(m.Author.new(m.Role.TOOL, "functions.get_weather"), "sunny")
                .with_recipient("assistant")
                .with_channel("commentary"),
            ]
        )

    ours, theirs = build(sys.modules["gptoss_agent.agent"]), build(oh)
    assert ours.to_json() == theirs.to_json()
    assert render_conversation_for_completion(ours, Role.ASSISTANT, enc) == (
        oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT)
    )


def test_reasoning_effort_accepts_any_case():
    assert SystemContent.new().with_reasoning_effort("high").reasoning_effort is ReasoningEffort.HIGH
    assert SystemContent.from_dict({"reasoning_effort": "low"}).reasoning_effort is ReasoningEffort.LOW
    with pytest.raises(ValueError, match="low, medium or high"):
        ReasoningEffort.parse("extreme")


def test_missing_keys_take_defaults_and_nulls_stay_none():
    sc = SystemContent.from_dict({"type": "system_content", "knowledge_cutoff": None})
    assert sc.model_identity is not None and sc.knowledge_cutoff is None
    assert sc.to_dict() == oh.SystemContent(knowledge_cutoff=None).to_dict() | {"reasoning_effort": "Medium"}


def test_unknown_content_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown content type 'image'"):
        Message.from_dict({"role": "user", "content": [{"type": "image"}]})


def test_response_formats_render_as_the_format_guide_shows(enc):
    dev = DeveloperContent.new().with_instructions("You are a helpful shopping assistant")
    dev.with_response_format(
        ResponseFormat(
            "shopping_list",
            {"properties": {"items": {"type": "array", "items": {"type": "string"}}}, "type": "object"},
            "entries on the shopping list",
        )
    )
    tokens = render_message(Message.from_role_and_content(Role.DEVELOPER, dev), enc)
    assert enc.decode(tokens) == (
        "<|start|>developer<|message|># Instructions\n\nYou are a helpful shopping assistant\n\n"
        "# Response Formats\n\n## shopping_list\n\n// entries on the shopping list\n"
        '{"properties":{"items":{"type":"array","items":{"type":"string"}}},"type":"object"}<|end|>'
    )
    # the JSON form carries it; openai-harmony reads the transcript and ignores the key
    payload = Conversation([Message.from_role_and_content(Role.DEVELOPER, dev)]).to_json()
    assert Conversation.from_json(payload).messages[0].content[0] == dev
    oh.Conversation.from_json(payload)


def test_render_errors_are_callers_bugs(enc):
    with pytest.raises(RenderError, match="needs an author name"):
        render_message(Message.from_role_and_content(Role.TOOL, "x"), enc)
    with pytest.raises(RenderError, match="SystemContent may only appear in system messages"):
        render_message(Message.from_role_and_content(Role.USER, SystemContent()), enc)
    with pytest.raises(RenderError, match="DeveloperContent"):
        render_message(Message.from_role_and_content(Role.USER, DeveloperContent()), enc)


def test_cached_rendering_follows_edits(enc, oracle):
    system = SystemContent.new().with_browser_tool()
    convo = Conversation([Message.from_role_and_content(Role.SYSTEM, system)])
    first = render_conversation_for_completion(convo, Role.ASSISTANT, enc)
    assert render_conversation_for_completion(convo, Role.ASSISTANT, enc) == first
    system.with_reasoning_effort(ReasoningEffort.LOW)
    convo.messages.append(Message.from_author_and_content(Author(Role.USER, None), "hi"))
    second = render_conversation_for_completion(convo, Role.ASSISTANT, enc)
    assert second != first
    assert second == oracle.render_conversation_for_completion(
        oh.Conversation.from_json(convo.to_json()), oh.Role.ASSISTANT
    )


def test_analysis_drop_rule(enc, oracle):
    msgs = [
        Message.from_role_and_content(Role.USER, "q1"),
        Message.from_role_and_content(Role.ASSISTANT, "think1").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "a1").with_channel("final"),
        Message.from_role_and_content(Role.USER, "q2"),
        Message.from_role_and_content(Role.ASSISTANT, "think2").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "a2").with_channel("final"),
    ]
    text = enc.decode(render_conversation_for_completion(msgs, Role.ASSISTANT, enc))
    assert "think1" not in text and "think2" in text  # only analysis before the first final goes
    ongoing = enc.decode(render_conversation_for_completion(msgs[:5], Role.ASSISTANT, enc))
    assert "think1" in ongoing  # the last assistant message is not final: nothing is dropped
    theirs = oh.Conversation.from_json(Conversation(msgs).to_json())
    assert render_conversation_for_completion(msgs, Role.ASSISTANT, enc) == (
        oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT)
    )


@pytest.mark.parametrize(
    "value",
    [
        0.5,
        1e-7,
        1e21,
        123456789.125,
        -0.0,
        0.0,
        2.5e-5,
        1e16,
        1e15,
        1e-5,
        1e-6,
        0.0001,
        2**64,
        -(2**63),
        1.5e300,
    ],
)
def test_default_values_print_as_serde_json_does(enc, oracle, value):
    tool = ToolDescription(
        "f", "d", {"type": "object", "properties": {"x": {"type": "number", "default": value}}}
    )
    msg = Message.from_role_and_content(Role.DEVELOPER, DeveloperContent().with_function_tools([tool]))
    expected = oracle.render(oh.Message.from_dict(json.loads(msg.to_json())))
    assert render_message(msg, enc) == expected
    assert f"default: {json_value_text(value)}" in enc.decode(expected)


def test_stop_tokens_match_openai_harmony(oracle):
    assert stop_tokens() == set(oracle.stop_tokens())
    assert stop_tokens_for_assistant_actions() == set(oracle.stop_tokens_for_assistant_actions())


# -- command line ---------------------------------------------------------------------------------


def _cli(capsys, *args: str) -> tuple[int, list]:
    status = main(list(args))
    return status, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_render_and_parse(tmp_path, oracle, capsys):
    files, expected = [], []
    for seed in range(3):
        payload = json.dumps(cases.conversation(seed))
        path = tmp_path / f"c{seed}.json"
        path.write_text(payload)
        files.append(str(path))
        expected.append(
            oracle.render_conversation_for_completion(oh.Conversation.from_json(payload), oh.Role.ASSISTANT)
        )
    assert _cli(capsys, "render", *files) == (0, expected)

    good = oracle.render_conversation(
        oh.Conversation.from_json(json.dumps({"messages": cases.completion(1)}))
    )[2:]
    bad = [*good[:-1], 200003, 200003]  # stray specials, and no stop token
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    status, (line_good, line_bad) = _cli(
        capsys, "parse", str(tmp_path / "good.json"), str(tmp_path / "bad.json")
    )
    assert status == 0
    assert line_good == [
        m.to_dict() for m in oracle.parse_messages_from_completion_tokens(good, oh.Role.ASSISTANT)
    ]
    assert line_bad["messages"] and {e["kind"] for e in line_bad["errors"]} == {"stray_special", "truncated"}


def test_cli_reports_bad_files_one_line_each(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "dict.json").write_text("{}")
    status, lines = _cli(capsys, "render", str(tmp_path / "missing.json"), str(tmp_path / "bad.json"))
    assert status == 1
    assert [line["file"] for line in lines] == [str(tmp_path / "missing.json"), str(tmp_path / "bad.json")]
    status, lines = _cli(capsys, "parse", str(tmp_path / "dict.json"))
    assert status == 1 and "list of token ids" in lines[0]["error"]
    assert main(["frobnicate"]) == 2


def test_module_entry_point(tmp_path):
    """``python -m gptoss_agent.agent.harmony render FILE`` runs as a program."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cases.conversation(7)))
    out = subprocess.run(
        [sys.executable, "-m", "gptoss_agent.agent.harmony", "render", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ours = Conversation.from_json(path.read_text())
    assert json.loads(out.stdout) == render_conversation_for_completion(ours)
