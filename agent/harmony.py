"""The harmony codec: render conversations to token ids, parse token streams back into messages.

Rendering is token-identical to ``openai-harmony`` 0.0.8 (``HarmonyEncodingName.HARMONY_GPT_OSS``),
quirks included; text is encoded with tiktoken's ``encode_ordinary`` piece by piece exactly where
openai-harmony splits it, and encoded pieces are cached, so re-rendering a growing conversation
costs little more than list concatenation.

``StreamParser`` takes completion tokens one at a time and returns small event objects. On every
stream that openai-harmony parses, it reports no error and gives the same messages. Where
openai-harmony fails (or accepts garbage) on what gpt-oss emits in the wild, it recovers when the
intent is clear and reports a ``ParseError`` the loop can feed back to the model. It never raises
on model output.

A message that carries the token ids the model generated (``Message.token_ids``, recorded by
``StreamParser(record_tokens=True)``) renders as those ids, verbatim; every other message renders
canonically, as openai-harmony renders it.

Debugging entry point::

    python -m gptoss_agent.agent.harmony render CONVERSATION.json...   # one JSON token list per file
    python -m gptoss_agent.agent.harmony parse TOKENS.json...          # one JSON message list per file
"""

from __future__ import annotations

import contextlib
import json
import operator
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeAlias

import tiktoken
from gptoss_agent.agent.messages import (
    DEFAULT_CHANNELS,
    Author,
    Conversation,
    DeveloperContent,
    Message,
    Role,
    SystemContent,
    TextContent,
)
from gptoss_agent.agent.schema_ts import response_formats_section, tools_section

__all__ = [
    "BUILTIN_NAMESPACES",
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "END",
    "MESSAGE",
    "RETURN",
    "START",
    "AnswerDone",
    "ContentDelta",
    "Event",
    "MessageDone",
    "MessageStarted",
    "ParseError",
    "ParseErrorKind",
    "RenderError",
    "StreamParser",
    "ToolCall",
    "main",
    "normalize_recipient",
    "parse_completion",
    "render_conversation",
    "render_conversation_for_completion",
    "render_conversation_for_training",
    "render_message",
    "stop_tokens",
    "stop_tokens_for_assistant_actions",
]

# Harmony's special tokens (o200k_harmony ids).
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
FIRST_SPECIAL = 199998
LAST_SPECIAL = 201088  # openai-harmony names 200014..201088 <|reserved_N|>

_SPECIAL_NAMES: dict[int, str] = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    RETURN: "<|return|>",
    CONSTRAIN: "<|constrain|>",
    CHANNEL: "<|channel|>",
    START: "<|start|>",
    END: "<|end|>",
    MESSAGE: "<|message|>",
    CALL: "<|call|>",
}
_EndName: TypeAlias = Literal["end", "call", "return"]
_STOP_END: dict[int, _EndName] = {END: "end", CALL: "call", RETURN: "return"}

BUILTIN_NAMESPACES = ("browser", "python")
"""Namespaces rendered in the system message; ``functions.browser.search`` is read as ``browser.search``."""


def stop_tokens() -> frozenset[int]:
    """Tokens that end a message: ``<|end|>``, ``<|call|>``, ``<|return|>``."""
    return frozenset(_STOP_END)


def stop_tokens_for_assistant_actions() -> frozenset[int]:
    """Tokens at which to stop sampling: ``<|call|>`` and ``<|return|>``."""
    return frozenset((CALL, RETURN))


class RenderError(ValueError):
    """The conversation cannot be rendered (a caller's bug: a tool message without a name, ...)."""


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

_CACHE_MAX_TOKENS = 1 << 20  # cached encodings hold at most ~1M token ids (~40 MB), then reset


class _Codec:
    """Per-encoding state: the text-encoding cache and the token-to-bytes table of the parser."""

    def __init__(self, enc: tiktoken.Encoding) -> None:
        self.enc = enc
        self._encode = enc.encode_ordinary
        self._cache: dict[str, list[int]] = {}
        self._cached_tokens = 0
        self._table: list[bytes | None] | None = None
        self.texts: dict[int, str] = {}
        """Decoded text of ordinary tokens whose bytes are whole UTF-8 characters (filled as met)."""
        self.role_tokens = {role: self._encode(role.value) for role in Role}
        self.space = self._encode(" ")

    def text(self, text: str) -> list[int]:
        """``encode_ordinary(text)``, cached (callers must not mutate the list)."""
        ids = self._cache.get(text)
        if ids is None:
            ids = self._encode(text)
            if self._cached_tokens + len(ids) > _CACHE_MAX_TOKENS:
                self._cache.clear()
                self._cached_tokens = 0
            self._cache[text] = ids
            self._cached_tokens += len(ids)
        return ids

    @property
    def table(self) -> list[bytes | None]:
        """Bytes of every token id 0..201088 as openai-harmony decodes them (None: no such token)."""
        if self._table is None:
            table: list[bytes | None] = [None] * (LAST_SPECIAL + 1)
            ranks = getattr(self.enc, "_mergeable_ranks", None)
            if isinstance(ranks, dict):
                for token_bytes, rank in ranks.items():
                    if rank < FIRST_SPECIAL:
                        table[rank] = token_bytes
            else:
                for rank in range(FIRST_SPECIAL):
                    with contextlib.suppress(KeyError):
                        table[rank] = self.enc.decode_single_token_bytes(rank)
            for rank in range(FIRST_SPECIAL, LAST_SPECIAL + 1):
                table[rank] = _SPECIAL_NAMES.get(rank, f"<|reserved_{rank}|>").encode()
            self._table = table
        return self._table


_codecs: dict[int, tuple[tiktoken.Encoding, _Codec]] = {}


def _codec(enc: tiktoken.Encoding | None) -> _Codec:
    if enc is None:
        # imported here: the model package imports torch, which a caller with an encoding never needs
        from gptoss_agent.model.tokenizer import load_tokenizer

        enc = load_tokenizer()
    entry = _codecs.get(id(enc))
    if entry is None or entry[0] is not enc:
        entry = (enc, _Codec(enc))
        _codecs[id(enc)] = entry
    return entry[1]


def _system_text(sys_content: SystemContent, has_function_tools: bool) -> str:
    sections = []
    top = []
    if sys_content.model_identity is not None:
        top.append(sys_content.model_identity)
    if sys_content.knowledge_cutoff is not None:
        top.append(f"Knowledge cutoff: {sys_content.knowledge_cutoff}")
    if sys_content.conversation_start_date is not None:
        top.append(f"Current date: {sys_content.conversation_start_date}")
    if top:
        sections.append("\n".join(top))
    if sys_content.reasoning_effort is not None:
        sections.append(f"Reasoning: {sys_content.reasoning_effort.value.lower()}")
    if sys_content.tools:
        sections.append(tools_section(sys_content.tools))
    config = sys_content.channel_config
    if config is not None and config.valid_channels:
        header = f"# Valid channels: {', '.join(config.valid_channels)}."
        if config.channel_required:
            header += " Channel must be included for every message."
        if has_function_tools:
            header += "\nCalls to these tools must go to the commentary channel: 'functions'."
        sections.append(header)
    return "\n\n".join(sections)


def _developer_text(dev: DeveloperContent) -> str:
    sections = []
    if dev.instructions is not None:
        sections += ["# Instructions", dev.instructions]
    if dev.tools:
        sections.append(tools_section(dev.tools))
    if dev.response_formats:
        sections.append(response_formats_section(dev.response_formats))
    return "\n\n".join(sections)


def _render_into(out: list[int], codec: _Codec, message: Message, has_function_tools: bool) -> None:
    if message.metadata:
        generated = message.token_ids
        if generated is not None:
            out += generated  # what the model generated, verbatim (see Message.with_token_ids)
            return
    text = codec.text
    role = message.author.role
    out.append(START)
    if role is Role.TOOL:
        if message.author.name is None:
            raise RenderError("a tool message needs an author name (the tool that answered, e.g. 'python')")
        out += text(message.author.name)
    else:
        out += codec.role_tokens[role]
        if message.author.name is not None:
            out += text(f":{message.author.name}")
    if message.recipient is not None and message.recipient != "all":
        out += text(f" to={message.recipient}")
    if message.channel is not None:
        out.append(CHANNEL)
        out += text(message.channel)
    content_type = message.content_type
    if content_type is not None:
        if content_type.startswith("<|constrain|>"):
            out += codec.space
            out.append(CONSTRAIN)
            if len(content_type) > len("<|constrain|>"):
                out += text(content_type[len("<|constrain|>") :])
        else:
            out += text(f" {content_type}")
    out.append(MESSAGE)
    for content in message.content:
        if isinstance(content, TextContent):
            out += text(content.text)
        elif isinstance(content, SystemContent):
            if role is not Role.SYSTEM:
                raise RenderError(f"SystemContent may only appear in system messages, found in {role.value}")
            out += text(_system_text(content, has_function_tools))
        elif isinstance(content, DeveloperContent):
            if role is not Role.DEVELOPER:
                raise RenderError(
                    f"DeveloperContent may only appear in developer messages, found in {role.value}"
                )
            out += text(_developer_text(content))
        else:
            raise RenderError(f"cannot render content of type {type(content).__name__}")
    out.append(CALL if role is Role.ASSISTANT and message.recipient is not None else END)


def _messages_of(conversation: Conversation | Sequence[Message]) -> Sequence[Message]:
    return conversation.messages if isinstance(conversation, Conversation) else conversation


def _has_function_tools(messages: Sequence[Message]) -> bool:
    for message in messages:
        for content in message.content:
            if isinstance(content, DeveloperContent) and content.tools:
                functions = content.tools.get("functions")
                if functions is not None and functions.tools:
                    return True
    return False


def _render_conversation_into(
    out: list[int], codec: _Codec, messages: Sequence[Message], auto_drop_analysis: bool
) -> None:
    has_function_tools = _has_function_tools(messages)
    last_assistant_is_final = False
    for message in reversed(messages):
        if message.author.role is Role.ASSISTANT:
            last_assistant_is_final = message.channel == "final"
            break
    first_final = -1
    if auto_drop_analysis and last_assistant_is_final:
        first_final = next((i for i, m in enumerate(messages) if m.channel == "final"), -1)
    for i, message in enumerate(messages):
        if i < first_final and message.channel == "analysis":
            continue  # openai-harmony drops the analysis that precedes the first final message
        _render_into(out, codec, message, has_function_tools)


def render_message(
    message: Message,
    enc: tiktoken.Encoding | None = None,
    *,
    conversation_has_function_tools: bool = False,
) -> list[int]:
    """Token ids of one message (openai-harmony's ``HarmonyEncoding.render``).

    Raises:
        RenderError: the message breaks harmony's rules (a tool message without a name, ...).
    """
    out: list[int] = []
    _render_into(out, _codec(enc), message, conversation_has_function_tools)
    return out


def render_conversation(
    conversation: Conversation | Sequence[Message],
    enc: tiktoken.Encoding | None = None,
    *,
    auto_drop_analysis: bool = True,
) -> list[int]:
    """Token ids of a conversation, without the next turn's header."""
    out: list[int] = []
    _render_conversation_into(out, _codec(enc), _messages_of(conversation), auto_drop_analysis)
    return out


def render_conversation_for_completion(
    conversation: Conversation | Sequence[Message],
    next_turn_role: Role = Role.ASSISTANT,
    enc: tiktoken.Encoding | None = None,
    *,
    auto_drop_analysis: bool = True,
) -> list[int]:
    """The prompt for the next turn: the conversation then ``<|start|>{next_turn_role}``.

    Token-identical to openai-harmony's ``render_conversation_for_completion``. Its only
    conversation policy is ``auto_drop_analysis``: when the last assistant message is on the
    ``final`` channel, analysis messages before the first ``final`` message are left out.
    """
    codec = _codec(enc)
    out: list[int] = []
    _render_conversation_into(out, codec, _messages_of(conversation), auto_drop_analysis)
    out.append(START)
    out += codec.role_tokens[Role(next_turn_role)]
    return out


def render_conversation_for_training(
    conversation: Conversation | Sequence[Message],
    enc: tiktoken.Encoding | None = None,
    *,
    auto_drop_analysis: bool = True,
) -> list[int]:
    """As ``render_conversation``, ending a trailing final answer with ``<|return|>``."""
    messages = _messages_of(conversation)
    out = render_conversation(messages, enc, auto_drop_analysis=auto_drop_analysis)
    if messages and out:
        last = messages[-1]
        if last.author.role is Role.ASSISTANT and last.channel == "final":
            out[-1] = RETURN
    return out


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageStarted:
    """A header was read (at ``<|message|>``): content deltas of this message follow."""

    role: Role
    name: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None


@dataclass(slots=True)  # not frozen: one is made per token, and frozen dataclasses build slowly
class ContentDelta:
    """New text of the current message (multi-byte characters are never split). Read-only by convention."""

    text: str
    channel: str | None
    recipient: str | None


@dataclass(frozen=True, slots=True)
class MessageDone:
    """A message is complete. ``end`` names what ended it.

    ``"end"``, ``"call"`` and ``"return"`` are the tokens; ``"eos"`` means the stream stopped
    first; ``"implicit"`` means a new message began without ``<|end|>`` (a ParseError says so).
    """

    message: Message
    end: Literal["end", "call", "return", "eos", "implicit"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An assistant message ended with ``<|call|>``: dispatch it.

    ``recipient`` is normalised for routing (``functions.browser.search`` -> ``browser.search``);
    ``message.recipient`` keeps what the model wrote.
    """

    message: Message
    recipient: str

    @property
    def namespace(self) -> str:
        """``browser`` for ``browser.search``, ``functions`` for ``functions.get_weather``."""
        return self.recipient.split(".", 1)[0]

    @property
    def function(self) -> str:
        """``search`` for ``browser.search``; the namespace itself for ``python``."""
        _, _, name = self.recipient.partition(".")
        return name or self.recipient

    @property
    def arguments(self) -> str:
        """The message body: JSON arguments, or code for ``python``."""
        return self.message.text


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """An assistant message ended with ``<|return|>``: the turn is over."""

    message: Message


class ParseErrorKind(StrEnum):
    """What went wrong in the model's output."""

    UNEXPECTED_TOKEN = "unexpected_token"
    """A token outside any message (text before ``<|start|>``, a stray stop token)."""
    MISSING_START = "missing_start"
    """A message header began without ``<|start|>``."""
    MISSING_MESSAGE = "missing_message"
    """A header ended with a stop token instead of ``<|message|>``."""
    MISSING_END = "missing_end"
    """A new message began before the previous one ended."""
    MALFORMED_HEADER = "malformed_header"
    """The header was not in harmony's form; ``detail`` says how it was read."""
    STRAY_SPECIAL = "stray_special"
    """A special token where none belongs (dropped)."""
    INVALID_TOKEN = "invalid_token"
    """A token id outside the vocabulary (dropped)."""
    INVALID_UTF8 = "invalid_utf8"
    """A header's bytes were not UTF-8 (decoded with replacement characters)."""
    CALL_WITHOUT_RECIPIENT = "call_without_recipient"
    """``<|call|>`` ended a message addressed to no tool."""
    TRUNCATED = "truncated"
    """The stream ended inside a message."""


@dataclass(frozen=True, slots=True)
class ParseError:
    """A structured error in the model's output (never raised)."""

    kind: ParseErrorKind
    detail: str
    recoverable: bool
    """True when the parser recovered the intended message; False when something was lost."""
    position: int
    """Index of the token (in the stream fed to this parser) where it was noticed."""

    def __str__(self) -> str:
        return f"{self.kind.value} at token {self.position}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "detail": self.detail,
            "recoverable": self.recoverable,
            "position": self.position,
        }


Event: TypeAlias = MessageStarted | ContentDelta | MessageDone | ToolCall | AnswerDone | ParseError


def normalize_recipient(recipient: str, builtin_namespaces: Sequence[str] = BUILTIN_NAMESPACES) -> str:
    """The tool a recipient addresses: ``to=functions.browser.search<|constrain|>json`` -> ``browser.search``."""
    name = recipient.strip()
    if name.startswith("to="):
        name = name[3:]
    name = name.split("<|", 1)[0].strip()
    if name.startswith("functions."):
        rest = name[len("functions.") :]
        if rest.split(".", 1)[0] in builtin_namespaces:
            name = rest
    return name


# ---------------------------------------------------------------------------------------------
# Header parsing
# ---------------------------------------------------------------------------------------------

# Rust's char::is_whitespace (Unicode White_Space), used by openai-harmony's trim and channel end.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_SET = frozenset(_WS)
_ASCII_WORDS = re.compile(r"[^ \t\n\x0c\r]+")
_ROLES = {role.value: role for role in Role}
_CONTENT_TYPES = frozenset({"json", "text", "code", "markdown", "html", "plain"})
_SPECIAL_TEXT = re.compile(r"<\|[a-z_0-9]+\|>")


class _HeaderError(Exception):
    pass


@dataclass(slots=True)
class _Header:
    author: Author
    recipient: str | None
    channel: str | None
    content_type: str | None


def _strict_header(text: str, role: Role | None) -> _Header:
    """openai-harmony's header parser, rule for rule; raises _HeaderError where it fails."""
    channel = None
    idx = text.find("<|channel|>")
    if idx >= 0:
        after = text[idx + len("<|channel|>") :]
        end = next((i for i, c in enumerate(after) if c in _WS_SET or c == "<"), len(after))
        if end == 0:
            raise _HeaderError("<|channel|> is not followed by a channel name")
        channel = after[:end]
        text = text[:idx] + after[end:]
    text = text.strip(_WS)
    if "<|constrain|>" in text:
        text = text.replace("<|constrain|>", " <|constrain|>").strip(_WS)
    parts = _ASCII_WORDS.findall(text)
    role_text = None
    if role is None:
        if not parts:
            raise _HeaderError("the header names no role")
        role_text = parts[0]
        known = _ROLES.get(role_text)
        if known is not None:
            role = known
        elif len(parts) > 1 or parts[0].startswith("to="):
            parts.pop(0)
            role = Role.TOOL
        else:
            raise _HeaderError(f"unknown role {role_text!r}")
    if parts and parts[0] == role.value:
        parts.pop(0)
    recipient = content_type = None
    if parts:
        count = len(parts)
        last = parts.pop()
        if last.startswith("to="):
            recipient = last[3:]
        elif count == 1:
            recipient = last
        else:
            content_type = last
            raw = parts.pop()
            recipient = raw[3:] if raw.startswith("to=") else raw
        if parts:
            raise _HeaderError(f"unexpected words in the header: {' '.join(parts)!r}")
    name = role_text if role is Role.TOOL else None
    return _Header(Author(role, name), recipient, channel, content_type)


def _suspicious(header: _Header, channels: frozenset[str]) -> str | None:
    """Why a header openai-harmony accepts is still not what the model meant (or None)."""
    if header.author.name is not None and "<|" in header.author.name:
        return f"author {header.author.name!r} holds a special token"
    if header.recipient is not None:
        if "<|" in header.recipient:
            return f"recipient {header.recipient!r} holds a special token"
        if header.channel is None and header.recipient in channels:
            return f"channel {header.recipient!r} written without <|channel|>"
    if header.content_type is not None:
        rest = header.content_type.removeprefix("<|constrain|>")
        if "<|" in rest:
            return f"content type {header.content_type!r} holds a special token"
        if header.channel is None and header.content_type in channels:
            return f"channel {header.content_type!r} written without <|channel|>"
    if header.channel is not None and header.channel not in channels and header.author.role is Role.ASSISTANT:
        for name in channels:
            if header.channel.startswith(name) and header.channel[len(name) :].startswith("to="):
                return f"channel {header.channel!r} runs into its recipient"
    return None


_LENIENT_PIECES = re.compile(r"<\|[a-z_0-9]+\|>|[^\s<]+|<")


def _lenient_header(text: str, role: Role | None, channels: frozenset[str]) -> tuple[_Header, list[str]]:
    """Read what the model meant from a malformed header; also return what was ignored."""
    pieces = _LENIENT_PIECES.findall(text)
    ignored: list[str] = []
    channel = recipient = content_type = None
    name = None
    i = 0
    first_word = True
    while i < len(pieces):
        piece = pieces[i]
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        i += 1
        if piece == "<|channel|>":
            if nxt is not None and not nxt.startswith("<|"):
                i += 1
                value = nxt
                for ch in channels:  # "commentaryto=functions.x"
                    if value.startswith(ch) and value[len(ch) :].startswith("to="):
                        value, recipient = ch, value[len(ch) + 3 :] or recipient
                if channel is None:
                    channel = value
                else:
                    ignored.append(f"<|channel|>{value}")
            continue
        if piece == "<|constrain|>":
            if nxt is not None and not nxt.startswith("<|"):
                i += 1
                content_type = f"<|constrain|>{nxt}"
            else:
                content_type = content_type or "<|constrain|>"
            continue
        if piece.startswith("<|"):
            ignored.append(piece)
            continue
        if piece.startswith("to="):
            target, _, constrained = piece[3:].partition("<|constrain|>")
            if target:
                recipient = target
            if constrained:
                content_type = f"<|constrain|>{constrained}"
            continue
        if role is None and first_word:
            first_word = False
            if piece in _ROLES:
                role = _ROLES[piece]
                continue
            glued = next((r for r in _ROLES if piece.startswith(r) and piece[len(r) :] in channels), None)
            if glued is not None:  # "assistantfinal"
                role, channel = _ROLES[glued], channel or piece[len(glued) :]
                continue
            if i < len(pieces):  # more follows: an unknown author is a tool, as openai-harmony reads it
                role, name = Role.TOOL, piece
                continue
            ignored.append(piece)
            continue
        first_word = False
        if role is not None and piece == role.value:
            continue
        if channel is None and piece in channels:
            channel = piece
        elif content_type is None and piece.lower() in _CONTENT_TYPES:
            content_type = piece
        elif recipient is None:
            recipient = piece
        elif content_type is None:
            content_type = piece
        else:
            ignored.append(piece)
    if role is None:
        role = Role.ASSISTANT
    return _Header(
        Author(role, name if role is Role.TOOL else None), recipient, channel, content_type
    ), ignored


def _describe(header: _Header) -> str:
    who = header.author.name or header.author.role.value
    parts = [who]
    if header.recipient is not None:
        parts.append(f"to={header.recipient}")
    if header.channel is not None:
        parts.append(f"channel {header.channel}")
    if header.content_type is not None:
        parts.append(f"type {header.content_type}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The streaming parser
# ---------------------------------------------------------------------------------------------

_EXPECT_START, _HEADER, _CONTENT = 0, 1, 2
_STATE_NAMES = {_EXPECT_START: "ExpectStart", _HEADER: "Header", _CONTENT: "Content"}
_REPLACEMENT = "\ufffd"


class StreamParser:
    """Parse completion tokens one at a time into events.

    ``role`` is the role whose header the prompt already opened (``<|start|>assistant``), as in
    openai-harmony's ``StreamableParser(encoding, Role.ASSISTANT)``; pass None when the stream
    begins with ``<|start|>``.

    ``process(token)`` returns the events that token completes; ``process_eos()`` ends the
    stream. Complete messages collect in ``messages`` and errors in ``errors``.

    ``record_tokens=True`` attaches to each message read without any error the tokens it was
    read from (``Message.with_token_ids``), from its ``<|start|>`` (the prompt's
    ``<|start|>{role}`` for the first one) to its ``<|end|>`` or ``<|call|>`` (``<|return|>``
    kept as ``<|end|>``), so that rendering the messages back gives exactly the prompt plus
    the completion. Messages cut off, ended implicitly or read after a recovery get none.
    """

    def __init__(
        self,
        enc: tiktoken.Encoding | None = None,
        role: Role | None = Role.ASSISTANT,
        *,
        channels: Iterable[str] = DEFAULT_CHANNELS,
        builtin_namespaces: Sequence[str] = BUILTIN_NAMESPACES,
        record_tokens: bool = False,
    ) -> None:
        codec = _codec(enc)
        self._table = codec.table
        self._texts = codec.texts
        self._channels = frozenset(channels)
        self._builtins = tuple(builtin_namespaces)
        self.messages: list[Message] = []
        """Messages completed so far."""
        self.errors: list[ParseError] = []
        """Errors reported so far (also returned as events)."""
        self.position = 0
        """Number of tokens processed."""
        self.last_content_delta: str | None = None
        self._next_role: Role | None = role
        self._state = _HEADER if role is not None else _EXPECT_START
        self._header_tokens: list[int] = []
        self._implicit = False  # the current header began without <|start|>
        self._header: _Header | None = None
        self._parts: list[str] = []
        self._pending = b""
        self._channel: str | None = None  # of the current message, for ContentDelta
        self._recipient: str | None = None
        self._held: list[int] | None = None  # <|channel|> seen inside content, and what followed
        self._record = record_tokens
        # the tokens of the message being read (from its <|start|>) and the error count at its start
        self._span: list[int] | None = None
        self._span_errors = 0
        if record_tokens and role is not None:
            self._span = [START, *codec.role_tokens[role]]

    # -- state, for callers that poll ------------------------------------------------------

    @property
    def state(self) -> str:
        """``ExpectStart``, ``Header`` or ``Content`` (openai-harmony's names)."""
        return _STATE_NAMES[self._state]

    @property
    def current_role(self) -> Role | None:
        return self._header.author.role if self._header is not None else self._next_role

    @property
    def current_channel(self) -> str | None:
        return self._header.channel if self._header is not None else None

    @property
    def current_recipient(self) -> str | None:
        return self._header.recipient if self._header is not None else None

    @property
    def current_content_type(self) -> str | None:
        return self._header.content_type if self._header is not None else None

    @property
    def current_content(self) -> str:
        return "".join(self._parts)

    # -- feeding ------------------------------------------------------------------------------

    def process(self, token: int) -> list[Event]:
        """Consume one token; return the events it completes (often one ``ContentDelta``)."""
        pos = self.position
        self.position = pos + 1
        if self._span is not None:
            self._span.append(token)
        if type(token) is not int:
            try:
                token = operator.index(token)
            except TypeError:
                return [self._error(ParseErrorKind.INVALID_TOKEN, f"{token!r} is not a token id", True, pos)]
        if self._state == _CONTENT:
            if not self._pending and self._held is None:
                text = self._texts.get(token)  # ordinary tokens whose bytes are whole characters
                if text is not None:
                    self._parts.append(text)
                    self.last_content_delta = text
                    return [ContentDelta(text, self._channel, self._recipient)]
            return self._content_token(token, pos)
        if self._state == _HEADER:
            return self._header_token(token, pos)
        return self._expect_start(token, pos)

    def process_eos(self) -> list[Event]:
        """End of stream: finish a message cut short (openai-harmony keeps it) and report it."""
        pos = self.position
        events: list[Event] = []
        if self._state == _CONTENT:
            if self._held is not None:
                events += self._release_held(pos)
            events += self._finish("eos")
            events.append(
                self._error(ParseErrorKind.TRUNCATED, "the stream ended inside a message", True, pos)
            )
        elif self._state == _HEADER:
            events += self._headerless_message("eos", pos)
        self._state = _EXPECT_START
        self._next_role = None
        return events

    def feed(self, tokens: Iterable[int]) -> list[Event]:
        """``process`` each token in turn; return all their events."""
        events: list[Event] = []
        for token in tokens:
            events += self.process(token)
        return events

    # -- internals ---------------------------------------------------------------------------

    def _error(self, kind: ParseErrorKind, detail: str, recoverable: bool, pos: int) -> ParseError:
        err = ParseError(kind, detail, recoverable, pos)
        self.errors.append(err)
        return err

    def _valid(self, token: Any) -> bool:
        return type(token) is int and 0 <= token <= LAST_SPECIAL and self._table[token] is not None

    def _name(self, token: int) -> str:
        data = self._table[token]
        return data.decode() if data is not None else str(token)

    def _undecodable(self, data: bytes, exc: UnicodeDecodeError) -> list[Event]:
        # As openai-harmony: emit the valid prefix; one invalid sequence becomes U+FFFD and the
        # bytes after it wait for the next token; an incomplete sequence at the end waits too.
        text = data[: exc.start].decode()
        if exc.reason == "unexpected end of data" and exc.end == len(data):
            self._pending = data[exc.start :]
        else:
            text += _REPLACEMENT
            self._pending = data[exc.end :]
        if not text:
            self.last_content_delta = None
            return []
        self._parts.append(text)
        self.last_content_delta = text
        header = self._header
        assert header is not None
        return [ContentDelta(text, header.channel, header.recipient)]

    def _finish(self, end: Literal["end", "call", "return", "eos", "implicit"]) -> list[Event]:
        header = self._header
        assert header is not None
        events: list[Event] = []
        if self._pending:  # bytes of an unfinished character: flushed as replacement characters
            tail = self._pending.decode("utf-8", "replace")
            self._parts.append(tail)
            events.append(ContentDelta(tail, header.channel, header.recipient))
        text = "".join(self._parts)
        message = Message(
            author=header.author,
            content=[TextContent(text)],
            channel=header.channel,
            recipient=header.recipient,
            content_type=header.content_type,
        )
        if self._record:
            span = self._span
            ended = end in ("end", "return") or (end == "call" and header.recipient is not None)
            if ended and span and span[0] == START and len(self.errors) == self._span_errors:
                if end == "return":
                    span[-1] = END
                message.with_token_ids(span)
            self._span = []  # tokens between messages; a message starts a span at <|start|>
            self._span_errors = len(self.errors)
        self.messages.append(message)
        self._header = None
        self._parts = []
        self._pending = b""
        self.last_content_delta = None
        self._state = _EXPECT_START
        events.append(MessageDone(message, end))
        if end == "call":
            if header.recipient is None:
                events.append(
                    self._error(
                        ParseErrorKind.CALL_WITHOUT_RECIPIENT,
                        "<|call|> ended a message with no recipient; address a tool with "
                        "<|start|>assistant to=NAME<|channel|>commentary<|message|>",
                        False,
                        self.position - 1,
                    )
                )
            else:
                events.append(ToolCall(message, normalize_recipient(header.recipient, self._builtins)))
        elif end == "return":
            events.append(AnswerDone(message))
        return events

    def _content_token(self, token: int, pos: int) -> list[Event]:
        """A content token off the fast path: special, undecodable, or held after <|channel|>."""
        if self._held is not None:
            return self._hold(token, pos)
        end = _STOP_END.get(token)
        if end is not None:
            return self._finish(end)
        if not self._valid(token):
            return [
                self._error(
                    ParseErrorKind.INVALID_TOKEN, f"token {token!r} is not in the vocabulary", True, pos
                )
            ]
        if token < FIRST_SPECIAL:  # an ordinary token not yet in the text cache, or after pending bytes
            return self._content_text(token)
        if token == START:
            return self._split_message([], None, pos, "<|start|>")
        if token == CHANNEL:
            # Maybe "...<|channel|>final<|message|>": a new message without <|end|><|start|>assistant.
            # Hold the tokens until <|message|> decides (or give up after a few).
            self._held = []
            return []
        return [
            self._error(
                ParseErrorKind.STRAY_SPECIAL, f"{self._name(token)} inside a message was dropped", True, pos
            )
        ]

    def _content_text(self, token: int) -> list[Event]:
        data = self._table[token] or b""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        else:
            text = self._texts.get(token)
            if text is None:
                try:
                    text = data.decode()
                except UnicodeDecodeError as exc:
                    return self._undecodable(data, exc)
                self._texts[token] = text
            self._parts.append(text)
            self.last_content_delta = text
            return [ContentDelta(text, self._channel, self._recipient)]
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            return self._undecodable(data, exc)
        self._parts.append(text)
        self.last_content_delta = text
        return [ContentDelta(text, self._channel, self._recipient)]

    def _hold(self, token: int, pos: int) -> list[Event]:
        held = self._held
        assert held is not None
        if token == MESSAGE:
            if self._held_channel(held) == "yes":
                assert self._header is not None
                events = self._split_message([CHANNEL, *held], self._header.author.role, pos, "<|channel|>")
                return events + self._header_token(MESSAGE, pos)
        elif (
            token not in _STOP_END
            and token != START
            and len(held) < 32
            and self._valid(token)
            and self._held_channel([*held, token]) != "no"
        ):
            held.append(token)
            return []
        events = self._release_held(pos)
        return events + self._content_token(token, pos)

    def _held_channel(self, held: list[int]) -> Literal["yes", "no", "maybe"]:
        """Do the tokens after a <|channel|> inside content name a channel (a new message)?"""
        text = b"".join(self._table[t] or b"" for t in held).decode("utf-8", "replace")
        end = re.search(r"[\s<]", text)
        if end is not None:
            return "yes" if text[: end.start()] in self._channels else "no"
        if any(name.startswith(text) for name in self._channels):
            return "yes" if text in self._channels else "maybe"
        return "no"

    def _release_held(self, pos: int) -> list[Event]:
        """The held <|channel|> began no message: drop it and read what followed as content."""
        held = self._held or []
        self._held = None
        events: list[Event] = [
            self._error(ParseErrorKind.STRAY_SPECIAL, "<|channel|> inside a message was dropped", True, pos)
        ]
        for t in held:
            events += self._content_token(t, pos)
        return events

    def _split_message(self, header_tokens: list[int], role: Role | None, pos: int, what: str) -> list[Event]:
        """A new message began inside this one: end this one there, start reading its header."""
        self._held = None
        events = self._finish("implicit")
        events.append(
            self._error(
                ParseErrorKind.MISSING_END, f"{what} inside a message: the message was ended there", True, pos
            )
        )
        self._state = _HEADER
        self._implicit = False
        self._header_tokens = header_tokens
        self._next_role = role
        return events

    def _expect_start(self, token: int, pos: int) -> list[Event]:
        if token == START:
            if self._record:
                self._span = [START]
                self._span_errors = len(self.errors)
            self._state = _HEADER
            self._header_tokens = []
            self._implicit = False
            self._next_role = None
            return []
        if not self._valid(token):
            return [
                self._error(
                    ParseErrorKind.INVALID_TOKEN, f"token {token!r} is not in the vocabulary", True, pos
                )
            ]
        if token >= FIRST_SPECIAL and token not in (CHANNEL, CONSTRAIN, MESSAGE):
            return [
                self._error(
                    ParseErrorKind.UNEXPECTED_TOKEN,
                    f"{self._name(token)} outside a message was dropped (messages begin with <|start|>)",
                    True,
                    pos,
                )
            ]
        self._state = _HEADER
        self._header_tokens = []
        self._implicit = True
        self._next_role = None
        event = self._error(
            ParseErrorKind.MISSING_START, "a message began without <|start|>; it was read as one", True, pos
        )
        return [event, *self._header_token(token, pos)]

    def _header_token(self, token: int, pos: int) -> list[Event]:
        if token == MESSAGE:
            return self._open_message(pos)
        if token in _STOP_END:
            return self._headerless_message(_STOP_END[token], pos)
        if not self._valid(token):
            return [
                self._error(
                    ParseErrorKind.INVALID_TOKEN, f"token {token!r} is not in the vocabulary", True, pos
                )
            ]
        if token == START:
            events: list[Event] = []
            if self._header_tokens and not self._implicit:
                events.append(
                    self._error(
                        ParseErrorKind.MALFORMED_HEADER,
                        f"header {self._decode_header()[0]!r} was cut off by <|start|> and dropped",
                        False,
                        pos,
                    )
                )
            elif not self._header_tokens:
                events.append(
                    self._error(ParseErrorKind.STRAY_SPECIAL, "a repeated <|start|> was dropped", True, pos)
                )
            self._header_tokens = []
            self._implicit = False
            self._next_role = None
            return events
        if token >= FIRST_SPECIAL and token not in (CHANNEL, CONSTRAIN):
            return [
                self._error(
                    ParseErrorKind.STRAY_SPECIAL,
                    f"{self._name(token)} inside a header was dropped",
                    True,
                    pos,
                )
            ]
        self._header_tokens.append(token)
        return []

    def _decode_header(self) -> tuple[str, bool]:
        table = self._table
        data = b"".join(table[t] or b"" for t in self._header_tokens)
        try:
            return data.decode(), True
        except UnicodeDecodeError:
            return data.decode("utf-8", "replace"), False

    def _read_header(self, text: str, pos: int) -> tuple[_Header, list[Event]]:
        events: list[Event] = []
        try:
            header = _strict_header(text, self._next_role)
            why = _suspicious(header, self._channels)
        except _HeaderError as exc:
            why = str(exc)
        if why is None:
            return header, events
        header, ignored = _lenient_header(text, self._next_role, self._channels)
        detail = f"header {text!r}: {why}; read as {_describe(header)}"
        if ignored:
            detail += f", ignoring {' '.join(ignored)!r}"
        events.append(self._error(ParseErrorKind.MALFORMED_HEADER, detail, True, pos))
        return header, events

    def _open_message(self, pos: int) -> list[Event]:
        text, ok = self._decode_header()
        events: list[Event] = []
        if not ok:
            events.append(
                self._error(ParseErrorKind.INVALID_UTF8, f"header {text!r} is not valid UTF-8", True, pos)
            )
        header, header_events = self._read_header(text, pos)
        events += header_events
        self._start_content(header)
        events.append(
            MessageStarted(
                header.author.role, header.author.name, header.channel, header.recipient, header.content_type
            )
        )
        return events

    def _start_content(self, header: _Header) -> None:
        self._header = header
        self._channel = header.channel
        self._recipient = header.recipient
        self._held = None
        self._header_tokens = []
        self._implicit = False
        self._next_role = None
        self._parts = []
        self._pending = b""
        self._state = _CONTENT

    def _headerless_message(self, end: Literal["end", "call", "return", "eos"], pos: int) -> list[Event]:
        """A stop token (or the end) came before ``<|message|>``: split header from content."""
        text, _ = self._decode_header()
        events: list[Event] = []
        if not text.strip(_WS):
            if end == "eos":
                events.append(
                    self._error(
                        ParseErrorKind.TRUNCATED, "the stream ended before a message began", False, pos
                    )
                )
            else:
                events.append(
                    self._error(
                        ParseErrorKind.UNEXPECTED_TOKEN, f"<|{end}|> outside a message was dropped", True, pos
                    )
                )
            self._state = _EXPECT_START
            self._header_tokens = []
            self._next_role = None
            return events
        head, body = _split_header_text(text, self._channels)
        header, _ = _lenient_header(head, self._next_role, self._channels)
        if end == "eos" and not body:
            detail = f"the stream ended inside the header {text!r}"
            events.append(self._error(ParseErrorKind.TRUNCATED, detail, False, pos))
            self._state = _EXPECT_START
            self._header_tokens = []
            self._next_role = None
            return events
        if end == "eos":
            detail = f"the stream ended inside the header {text!r}; read as {_describe(header)}"
            events.append(self._error(ParseErrorKind.TRUNCATED, detail, True, pos))
        else:
            detail = f"<|message|> missing after header {head!r}; read as {_describe(header)} with the text after it as content"
            events.append(self._error(ParseErrorKind.MISSING_MESSAGE, detail, True, pos))
        self._start_content(header)
        events.append(
            MessageStarted(
                header.author.role, header.author.name, header.channel, header.recipient, header.content_type
            )
        )
        if body:
            self._parts.append(body)
            events.append(ContentDelta(body, header.channel, header.recipient))
        events += self._finish(end)
        return events


_HEAD_PIECE = re.compile(
    r"[\s]*(?:<\|channel\|>[^\s<]*|<\|constrain\|>\s*[^\s<]*|<\|start\|>|to=[^\s<]+|(?:"
    + "|".join(r.value for r in Role)
    + r")(?=[\s<]|$))"
)


def _split_header_text(text: str, channels: frozenset[str]) -> tuple[str, str]:
    """Split ``<|channel|>final The answer...`` into its header and the content after it."""
    pos = 0
    while True:
        match = _HEAD_PIECE.match(text, pos)
        if match is None:
            break
        pos = match.end()
    # a bare channel word right after the role ("assistant final ...")
    rest = text[pos:]
    stripped = rest.lstrip()
    word = stripped.split(None, 1)[0] if stripped else ""
    if word in channels and "<|channel|>" not in text[:pos]:
        pos += len(rest) - len(stripped) + len(word)
    return text[:pos], text[pos:].lstrip(_WS)


def parse_completion(
    tokens: Iterable[int],
    enc: tiktoken.Encoding | None = None,
    role: Role | None = Role.ASSISTANT,
) -> tuple[list[Message], list[ParseError]]:
    """Parse a whole completion: the messages (as openai-harmony's
    ``parse_messages_from_completion_tokens(tokens, role)`` gives them) and any errors."""
    parser = StreamParser(enc, role)
    for token in tokens:
        parser.process(token)
    parser.process_eos()
    return parser.messages, parser.errors


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_USAGE = """usage: python -m gptoss_agent.agent.harmony render FILE...
       python -m gptoss_agent.agent.harmony parse FILE...

render: each FILE holds a conversation in openai-harmony's JSON form; prints one line per file,
        the JSON list of token ids of render_conversation_for_completion(conversation, assistant).
parse:  each FILE holds a JSON list of completion token ids (after <|start|>assistant); prints one
        line per file, the JSON list of parsed messages, or for malformed input
        {"messages": [...], "errors": [...]} with the recovered messages and the errors."""


def _render_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        conversation = Conversation.from_json(f.read())
    return json.dumps(render_conversation_for_completion(conversation, Role.ASSISTANT))


def _parse_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        tokens = json.load(f)
    if not isinstance(tokens, list):
        raise ValueError("expected a JSON list of token ids")
    messages, errors = parse_completion(tokens)
    dicts = [m.to_dict() for m in messages]
    if not errors:
        return json.dumps(dicts)
    return json.dumps({"messages": dicts, "errors": [e.to_dict() for e in errors]})


def main(argv: Sequence[str] | None = None) -> int:
    """The ``render`` / ``parse`` debugging commands; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("render", "parse"):
        print(_USAGE, file=sys.stderr)
        return 2
    command = _render_file if args[0] == "render" else _parse_file
    status = 0
    for path in args[1:]:
        try:
            line = command(path)
        except (OSError, ValueError, KeyError, TypeError, RenderError) as exc:
            line = json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"})
            status = 1
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
