"""Conformance with openai-harmony 0.0.8 (the oracle): JSON form, rendering and parsing.

Conversations are generated from seeds (tests/agent/harmony_cases.py) and fed to both libraries.
"""

from __future__ import annotations

import json
import random

import harmony_cases as cases
import openai_harmony as oh
import pytest
from gptoss_agent.agent import (
    Conversation,
    Message,
    ParseErrorKind,
    Role,
    StreamParser,
    parse_completion,
    render_conversation,
    render_conversation_for_completion,
    render_conversation_for_training,
    render_message,
)

N_CONVERSATIONS = 240
SEEDS = range(N_CONVERSATIONS)


@pytest.fixture(scope="module")
def oracle():
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


def _both(seed: int) -> tuple[str, oh.Conversation, Conversation]:
    payload = json.dumps(cases.conversation(seed))
    return payload, oh.Conversation.from_json(payload), Conversation.from_json(payload)


def _oracle_parse(oracle, tokens, role):
    try:
        return [m.to_dict() for m in oracle.parse_messages_from_completion_tokens(tokens, role)]
    except Exception:  # openai-harmony raises HarmonyError (and others) on malformed input
        return None


def test_generated_conversations_cover_the_format():
    """The generator exercises every role, channel, recipient form and schema shape."""
    seen: set[str] = set()
    for seed in SEEDS:
        payload = json.dumps(cases.conversation(seed))
        for m in json.loads(payload)["messages"]:
            seen.add(f"role:{m['role']}")
            seen.add(f"channel:{m.get('channel')}")
            if m.get("recipient"):
                seen.add("recipient")
            if m.get("content_type"):
                seen.add(f"ct:{m['content_type']}")
        for key in (
            "oneOf",
            "anyOf",
            "enum",
            "items",
            "default",
            "required",
            "nullable",
            "title",
            "examples",
        ):
            if f'"{key}"' in payload:
                seen.add(key)
    expected = {
        "role:system", "role:developer", "role:user", "role:assistant", "role:tool",
        "channel:analysis", "channel:commentary", "channel:final", "channel:None", "recipient",
        "ct:<|constrain|>json", "ct:json", "oneOf", "anyOf", "enum", "items", "default", "required",
        "nullable", "title", "examples",
    }  # fmt: skip
    assert expected <= seen


@pytest.mark.parametrize("seed", SEEDS)
def test_json_form_identical(seed):
    _payload, theirs, ours = _both(seed)
    assert ours.to_json() == theirs.to_json()
    assert ours.to_dict() == theirs.to_dict()
    # re-reading a written transcript behaves alike too (both drop nulls, so defaults come back)
    again = theirs.to_json()
    assert Conversation.from_json(again).to_json() == oh.Conversation.from_json(again).to_json()
    for m_ours, m_theirs in zip(ours.messages, theirs.messages, strict=True):
        assert m_ours.to_json() == m_theirs.to_json()


@pytest.mark.parametrize("seed", SEEDS)
def test_render_token_identical(seed, oracle, enc):
    _, theirs, ours = _both(seed)
    expected = oracle.render_conversation_for_completion(theirs, oh.Role.ASSISTANT)
    assert render_conversation_for_completion(ours, Role.ASSISTANT, enc) == expected
    assert render_conversation(ours, enc) == oracle.render_conversation(theirs)
    no_drop = oh.RenderConversationConfig(auto_drop_analysis=False)
    assert render_conversation(ours, enc, auto_drop_analysis=False) == oracle.render_conversation(
        theirs, no_drop
    )
    assert render_conversation_for_training(ours, enc) == oracle.render_conversation_for_training(theirs)
    for m_ours, m_theirs in zip(ours.messages, theirs.messages, strict=True):
        assert render_message(m_ours, enc) == oracle.render(m_theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_rendered_conversation_identical(seed, oracle, enc):
    """Parsing a rendered conversation (from <|start|>) gives openai-harmony's messages."""
    _, theirs, _ = _both(seed)
    tokens = oracle.render_conversation(theirs, oh.RenderConversationConfig(auto_drop_analysis=False))
    expected = _oracle_parse(oracle, tokens, None)
    messages, errors = parse_completion(tokens, enc, role=None)
    if expected is None:
        # openai-harmony cannot read its own rendering here (a named user: "user:alice")
        assert errors
    else:
        # recipient "all" renders no "to=" but still ends with <|call|>: a call to no one, which
        # the parser reports (the messages are openai-harmony's all the same)
        assert [e.kind for e in errors if e.kind is not ParseErrorKind.CALL_WITHOUT_RECIPIENT] == []
        assert [m.to_dict() for m in messages] == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_parse_completion_identical(seed, oracle, enc):
    """Completions after <|start|>assistant parse, token by token, to openai-harmony's messages."""
    raw = cases.completion(seed)
    tokens = oracle.render_conversation(oh.Conversation.from_json(json.dumps({"messages": raw})))
    assert tokens[:2] == [200006, *enc.encode_ordinary("assistant")]
    tokens = tokens[2:]
    expected = _oracle_parse(oracle, tokens, oh.Role.ASSISTANT)
    assert expected is not None
    parser = StreamParser(enc, Role.ASSISTANT)
    streamed: list[str] = []
    for t in tokens:
        for event in parser.process(t):
            if type(event).__name__ == "ContentDelta":
                streamed.append(event.text)
    parser.process_eos()
    assert parser.errors == []
    assert [m.to_dict() for m in parser.messages] == expected
    assert "".join(streamed) == "".join(m.text for m in parser.messages)
    # the oracle's own streaming parser agrees message by message
    sp = oh.StreamableParser(oracle, oh.Role.ASSISTANT)
    for t in tokens:
        sp.process(t)
    sp.process_eos()
    assert [m.to_dict() for m in sp.messages] == expected


@pytest.mark.parametrize("seed", range(400))
def test_mutated_streams_agree_unless_flagged(seed, oracle, enc):
    """On damaged streams: no exception; where no error is reported, openai-harmony's messages."""
    rng = random.Random(seed)
    raw = cases.completion(seed)
    tokens = oracle.render_conversation(oh.Conversation.from_json(json.dumps({"messages": raw})))[2:]
    tokens = cases.mutate(rng, tokens)
    role = oh.Role.ASSISTANT if seed % 4 else None
    if role is None:
        tokens = [200006, *enc.encode_ordinary("assistant"), *tokens]
    expected = _oracle_parse(oracle, tokens, role)
    messages, errors = parse_completion(tokens, enc, role=None if role is None else Role.ASSISTANT)
    if not errors:
        assert expected is not None, f"openai-harmony rejects {tokens} but no error was reported"
        assert [m.to_dict() for m in messages] == expected


def test_message_json_reads_rust_string_content(oracle):
    """openai-harmony's Rust side writes a single text content as a plain string."""
    m = Message.from_dict({"role": "assistant", "content": "hi", "channel": "final"})
    assert (
        m.to_dict()
        == oh.Message.from_dict({"role": "assistant", "content": "hi", "channel": "final"}).to_dict()
    )
