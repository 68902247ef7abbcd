"""StreamParser: events, UTF-8 handling, and the malformed output gpt-oss emits in the wild."""

from __future__ import annotations

import random

import harmony_cases as cases
import openai_harmony as oh
import pytest
from gptoss_agent.agent import (
    AnswerDone,
    ContentDelta,
    MessageDone,
    MessageStarted,
    ParseError,
    ParseErrorKind,
    Role,
    StreamParser,
    ToolCall,
    normalize_recipient,
    parse_completion,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EVENT_TYPES = (MessageStarted, ContentDelta, MessageDone, ToolCall, AnswerDone, ParseError)


@pytest.fixture(scope="module")
def oracle():
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


def toks(enc, text: str) -> list[int]:
    return enc.encode(text, allowed_special="all")


def run(enc, tokens, role=Role.ASSISTANT):
    parser = StreamParser(enc, role)
    events = []
    for t in tokens:
        events += parser.process(t)
    events += parser.process_eos()
    return parser, events


def oracle_dicts(oracle, tokens, role=oh.Role.ASSISTANT):
    return [m.to_dict() for m in oracle.parse_messages_from_completion_tokens(tokens, role)]


def kinds(parser):
    return [e.kind for e in parser.errors]


# -- well-formed streams ------------------------------------------------------------------------


def test_event_sequence_of_a_tool_calling_turn(enc):
    stream = (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'
    )
    parser, events = run(enc, toks(enc, stream))
    assert parser.errors == []
    types = [type(e).__name__ for e in events if not isinstance(e, ContentDelta)]
    assert types == ["MessageStarted", "MessageDone", "MessageStarted", "MessageDone", "ToolCall"]
    started = [e for e in events if isinstance(e, MessageStarted)]
    assert started[1] == MessageStarted(
        Role.ASSISTANT, None, "commentary", "functions.get_weather", "<|constrain|>json"
    )
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.recipient == "functions.get_weather"
    assert (call.namespace, call.function, call.arguments) == ("functions", "get_weather", '{"city":"Paris"}')
    deltas = [e for e in events if isinstance(e, ContentDelta)]
    assert "".join(d.text for d in deltas if d.channel == "analysis") == "Need weather."
    assert all(d.recipient == "functions.get_weather" for d in deltas if d.channel == "commentary")
    done = [e for e in events if isinstance(e, MessageDone)]
    assert [d.end for d in done] == ["end", "call"]


def test_final_answer_ends_with_answer_done(enc, oracle):
    tokens = toks(enc, "<|channel|>final<|message|>It is 4.<|return|>")
    parser, events = run(enc, tokens)
    assert isinstance(events[-1], AnswerDone)
    assert events[-1].message.text == "It is 4."
    assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)
    assert parser.state == "ExpectStart"


def test_polling_properties_follow_the_stream(enc):
    parser = StreamParser(enc)
    for t in toks(enc, "<|channel|>commentary to=python<|message|>print(1)"):
        parser.process(t)
    assert parser.state == "Content"
    assert (parser.current_role, parser.current_channel, parser.current_recipient) == (
        Role.ASSISTANT,
        "commentary",
        "python",
    )
    assert parser.current_content == "print(1)"
    assert parser.last_content_delta is not None


def test_multibyte_characters_split_across_tokens_are_never_split(enc, oracle):
    text = "emoji 😀👩‍💻 and 日本語テキスト, ǅ e\u0301 — 🚀🚀"
    body = enc.encode_ordinary(text)
    # one token per byte-level piece: find tokens whose bytes are not valid UTF-8 on their own
    pieces = [enc.decode_single_token_bytes(t) for t in body]
    assert any(_invalid_utf8(p) for p in pieces), "the text should split characters across tokens"
    tokens = [*toks(enc, "<|channel|>final<|message|>"), *body, 200002]
    parser, events = run(enc, tokens)
    deltas = [e.text for e in events if isinstance(e, ContentDelta)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_invalid_utf8_becomes_replacement_character_like_openai_harmony(enc, oracle):
    lone = next(t for t in range(1000, 199998) if _invalid_utf8(enc.decode_single_token_bytes(t)))
    for body in ([lone], [lone, *enc.encode_ordinary("ok")], [*enc.encode_ordinary("a"), lone, lone]):
        tokens = [*toks(enc, "<|channel|>final<|message|>"), *body, 200007]
        parser, events = run(enc, tokens)
        assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == parser.messages[0].text


# -- what gpt-oss emits in the wild ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "<|channel|>commentary to=functions.lookup <|constrain|>json",  # recipient in the channel header
        " to=functions.lookup<|channel|>commentary <|constrain|>json",  # recipient in the role position
        " to=functions.lookup<|channel|>commentary<|constrain|>json",  # no space before <|constrain|>
        " to=functions.lookup<|channel|>commentary json",  # content type without <|constrain|>
        "<|channel|>commentary to=functions.lookup<|constrain|>json",
    ],
)
def test_header_variants_openai_harmony_accepts(enc, oracle, header):
    tokens = toks(enc, header + '<|message|>{"q":1}<|call|>')
    parser, events = run(enc, tokens)
    assert parser.errors == []
    assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)
    call = events[-1]
    assert isinstance(call, ToolCall) and call.recipient == "functions.lookup"


def test_constrain_followed_by_a_space_is_recovered(enc, oracle):
    tokens = toks(enc, "<|channel|>commentary to=functions.lookup <|constrain|> json<|message|>{}<|call|>")
    with pytest.raises(Exception):  # noqa: B017 - openai-harmony rejects it
        oracle_dicts(oracle, tokens)
    parser, events = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MALFORMED_HEADER]
    msg = parser.messages[0]
    assert (msg.channel, msg.recipient, msg.content_type) == (
        "commentary",
        "functions.lookup",
        "<|constrain|>json",
    )
    assert isinstance(events[-1], ToolCall)


def test_builtin_tool_addressed_under_functions_is_routed_to_the_builtin(enc, oracle):
    tokens = toks(enc, '<|channel|>commentary to=functions.browser.search<|message|>{"query":"x"}<|call|>')
    parser, events = run(enc, tokens)
    assert parser.errors == []
    assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)  # message kept as written
    call = events[-1]
    assert isinstance(call, ToolCall)
    assert call.message.recipient == "functions.browser.search"
    assert (call.recipient, call.namespace, call.function) == ("browser.search", "browser", "search")


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("functions.browser.search", "browser.search"),
        ("functions.python", "python"),
        ("python", "python"),
        ("to=functions.get_weather", "functions.get_weather"),
        ("functions.get_weather<|constrain|>json", "functions.get_weather"),
        ("functions.browser_helper", "functions.browser_helper"),
        (" browser.open ", "browser.open"),
    ],
)
def test_normalize_recipient(recipient, expected):
    assert normalize_recipient(recipient) == expected


def test_channel_without_channel_token_first_message(enc, oracle):
    tokens = toks(enc, "final<|message|>Paris.<|return|>")
    assert oracle_dicts(oracle, tokens)[0]["recipient"] == "final"  # openai-harmony reads a recipient
    parser, events = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MALFORMED_HEADER]
    msg = parser.messages[0]
    assert (msg.channel, msg.recipient, msg.text) == ("final", None, "Paris.")
    assert isinstance(events[-1], AnswerDone)


def test_channel_glued_to_role_without_channel_token(enc):
    tokens = toks(
        enc, "<|channel|>analysis<|message|>hmm<|end|><|start|>assistantfinal<|message|>Paris.<|return|>"
    )
    parser, _ = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MALFORMED_HEADER]
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "hmm"), ("final", "Paris.")]


def test_channel_word_and_recipient_without_channel_token(enc, oracle):
    tokens = toks(enc, "<|start|>assistant commentary to=functions.x json<|message|>{}<|call|>")
    with pytest.raises(Exception):  # noqa: B017
        oracle_dicts(oracle, tokens, None)
    parser, events = run(enc, tokens, role=None)
    msg = parser.messages[0]
    assert (msg.channel, msg.recipient, msg.content_type) == ("commentary", "functions.x", "json")
    assert isinstance(events[-1], ToolCall)


def test_text_after_header_without_message_token(enc, oracle):
    tokens = toks(enc, "<|channel|>final The answer is 4.<|return|>")
    parser, events = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MISSING_MESSAGE]
    msg = parser.messages[0]
    assert (msg.channel, msg.text) == ("final", "The answer is 4.")
    assert isinstance(events[-1], AnswerDone)
    # openai-harmony's lenient mode (strict=False) finds the same channel and text
    lenient = oracle.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT, strict=False)
    assert (lenient[0].channel, lenient[0].content[0].text) == ("final", "The answer is 4.")


def test_new_message_without_end_token(enc):
    tokens = toks(enc, "<|channel|>analysis<|message|>think<|channel|>final<|message|>Paris<|return|>")
    parser, events = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MISSING_END]
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "think"), ("final", "Paris")]
    assert [e.end for e in events if isinstance(e, MessageDone)] == ["implicit", "return"]


def test_tool_call_without_end_and_start(enc):
    tokens = toks(
        enc,
        "<|channel|>analysis<|message|>Need the weather."
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>',
    )
    parser, events = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MISSING_END]
    assert parser.messages[0].text == "Need the weather."
    call = events[-1]
    assert isinstance(call, ToolCall) and call.recipient == "functions.get_weather"
    assert (call.message.content_type, call.arguments) == ("<|constrain|>json", '{"city":"Paris"}')


def test_channel_token_inside_text_is_dropped_when_no_message_follows(enc):
    for tail in (", b c", "finally b c", "final b c", "fin"):
        tokens = toks(enc, f"<|channel|>final<|message|>a <|channel|>{tail}<|return|>")
        parser, events = run(enc, tokens)
        assert kinds(parser) == [ParseErrorKind.STRAY_SPECIAL]
        assert [m.text for m in parser.messages] == [f"a {tail}"]
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == f"a {tail}"


def test_start_inside_a_message_starts_a_new_one(enc):
    tokens = toks(
        enc, "<|channel|>analysis<|message|>x<|start|>assistant<|channel|>final<|message|>y<|return|>"
    )
    parser, _ = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MISSING_END]
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "x"), ("final", "y")]


def test_stray_specials_are_dropped(enc):
    tokens = toks(enc, "<|channel|>final<|message|>a<|endoftext|>b<|reserved_200013|>c<|return|>")
    parser, _ = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.STRAY_SPECIAL, ParseErrorKind.STRAY_SPECIAL]
    assert parser.messages[0].text == "abc"


def test_repeated_start_is_reported(enc, oracle):
    tokens = toks(
        enc,
        "<|channel|>analysis<|message|>x<|end|><|start|><|start|>assistant<|channel|>final<|message|>y<|return|>",
    )
    with pytest.raises(Exception):  # noqa: B017 - openai-harmony: unknown role '<|start|>assistant'
        oracle_dicts(oracle, tokens)
    parser, _ = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.STRAY_SPECIAL]
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "x"), ("final", "y")]


def test_missing_start_between_messages(enc):
    tokens = toks(
        enc, "<|channel|>analysis<|message|>x<|end|>assistant<|channel|>final<|message|>y<|return|>"
    )
    parser, _ = run(enc, tokens)
    assert kinds(parser) == [ParseErrorKind.MISSING_START]
    assert [(m.channel, m.text) for m in parser.messages] == [("analysis", "x"), ("final", "y")]


def test_truncated_inside_content_keeps_the_message(enc, oracle):
    tokens = toks(enc, "<|channel|>final<|message|>The answer is")
    parser, events = run(enc, tokens)
    assert [m.to_dict() for m in parser.messages] == oracle_dicts(oracle, tokens)
    assert kinds(parser) == [ParseErrorKind.TRUNCATED]
    assert parser.errors[0].recoverable
    assert isinstance(events[-2], MessageDone) and events[-2].end == "eos"


def test_truncated_inside_header_loses_nothing_it_had(enc, oracle):
    tokens = toks(enc, "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>comm")
    with pytest.raises(Exception):  # noqa: B017
        oracle_dicts(oracle, tokens)
    parser, _ = run(enc, tokens)
    assert [m.text for m in parser.messages] == ["x"]
    assert kinds(parser) == [ParseErrorKind.TRUNCATED]
    assert not parser.errors[0].recoverable


def test_empty_stream_is_truncated(enc):
    parser, events = run(enc, [])
    assert events == parser.errors and kinds(parser) == [ParseErrorKind.TRUNCATED]


def test_call_without_recipient_is_an_error_for_the_model(enc):
    parser, events = run(enc, toks(enc, "<|channel|>commentary<|message|>{}<|call|>"))
    assert kinds(parser) == [ParseErrorKind.CALL_WITHOUT_RECIPIENT]
    assert not any(isinstance(e, ToolCall) for e in events)
    assert "to=" in parser.errors[0].detail


def test_invalid_token_ids_are_reported_not_raised(enc):
    tokens = [*toks(enc, "<|channel|>final<|message|>a"), 10**9, -1, "x", 201088 + 5, 200002]
    parser, _ = run(enc, tokens)  # type: ignore[arg-type]
    assert kinds(parser) == [ParseErrorKind.INVALID_TOKEN] * 4
    assert parser.messages[0].text == "a"


def test_parse_completion_matches_oracle_on_rendered_turns(enc, oracle):
    tokens = toks(
        enc,
        "<|channel|>analysis<|message|>a<|end|><|start|>assistant to=python<|channel|>analysis code<|message|>1+1<|call|>"
        "<|start|>python to=assistant<|channel|>analysis<|message|>2<|end|><|start|>assistant<|channel|>final<|message|>2<|return|>",
    )
    messages, errors = parse_completion(tokens, enc)
    assert errors == []
    assert [m.to_dict() for m in messages] == oracle_dicts(oracle, tokens)
    assert messages[2].author.name == "python" and messages[2].author.role is Role.TOOL


# -- fuzz ---------------------------------------------------------------------------------------

SPECIAL_IDS = st.sampled_from(
    [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200013, 201088]
)
TOKEN = st.one_of(SPECIAL_IDS, st.integers(0, 199997), st.integers(0, 1000), st.integers(-5, 300_000))


def _check_events(parser: StreamParser, events: list) -> None:
    assert all(isinstance(e, EVENT_TYPES) for e in events)
    assert parser.errors == [e for e in events if isinstance(e, ParseError)]
    assert [e.message for e in events if isinstance(e, MessageDone)] == parser.messages
    # the deltas of each message add up to its text
    text: list[str] = []
    for e in events:
        if isinstance(e, MessageStarted):
            text = []
        elif isinstance(e, ContentDelta):
            text.append(e.text)
        elif isinstance(e, MessageDone):
            assert "".join(text) == e.message.text
            text = []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.lists(TOKEN, max_size=60), role=st.sampled_from([Role.ASSISTANT, None]))
def test_fuzz_random_streams_never_raise(enc, tokens, role):
    parser = StreamParser(enc, role)
    events = []
    for t in tokens:
        events += parser.process(t)
    events += parser.process_eos()
    _check_events(parser, events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), extra=st.integers(0, 3))
def test_fuzz_mutated_streams_never_raise(enc, seed, extra):
    rng = random.Random(seed)
    parts = []
    for m in cases.completion(seed):
        header = f"<|start|>assistant<|channel|>{m.get('channel', 'final')}"
        if m.get("recipient"):
            header += f" to={m['recipient']}"
        parts.append(
            header
            + "<|message|>"
            + m["content"][0]["text"]
            + rng.choice(["<|end|>", "<|call|>", "<|return|>"])
        )
    tokens = toks(enc, "".join(parts))[2:]
    for _ in range(extra + 1):
        tokens = cases.mutate(rng, tokens)
    parser = StreamParser(enc)
    events = []
    for t in tokens:
        events += parser.process(t)
    events += parser.process_eos()
    _check_events(parser, events)
