"""Harmony's data model: roles, authors, contents, messages and conversations.

The names and the JSON form mirror ``openai-harmony`` 0.0.8's Python API, so transcripts written
by either library load in the other: ``Message.to_dict()`` / ``Conversation.to_json()`` give the
same dictionaries and strings as openai-harmony's, and ``from_dict`` / ``from_json`` read its
output (including the shortcut of a message whose ``content`` is a plain string).

Like openai-harmony's Python classes, the ``with_*`` builders set a field and return ``self``.

Two additions, each written to JSON only when set (openai-harmony ignores the keys when it reads
such a transcript): ``DeveloperContent.response_formats`` (the ``# Response Formats`` section of
harmony's format guide, which openai-harmony does not model) and ``Message.metadata``, where the
agent keeps the token ids the model generated for a message (``Message.token_ids``) so that later
prompts render them verbatim.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "Author",
    "ChannelConfig",
    "Content",
    "Conversation",
    "DeveloperContent",
    "Message",
    "ReasoningEffort",
    "ResponseFormat",
    "Role",
    "SystemContent",
    "TextContent",
    "ToolDescription",
    "ToolNamespaceConfig",
]


class Role(StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    DEVELOPER = "developer"
    TOOL = "tool"


class ReasoningEffort(StrEnum):
    """How long the model thinks; rendered as ``Reasoning: low|medium|high``."""

    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"

    @classmethod
    def parse(cls, value: str | ReasoningEffort) -> ReasoningEffort:
        """Accept ``"Low"``, ``"low"``, ``"LOW"`` or a member."""
        if isinstance(value, ReasoningEffort):
            return value
        for member in cls:
            if member.value.lower() == str(value).lower():
                return member
        raise ValueError(f"unknown reasoning effort {value!r}: expected low, medium or high")


@dataclass
class Author:
    """A message's author: a role, and for tool messages the tool's name (``browser.search``)."""

    role: Role
    name: str | None = None

    @classmethod
    def new(cls, role: Role, name: str) -> Author:
        return cls(role=role, name=name)


@dataclass
class TextContent:
    """Plain text."""

    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text", "text": self.text}


@dataclass
class ToolDescription:
    """One function of a tool namespace; ``parameters`` is a JSON Schema (or None)."""

    name: str
    description: str
    parameters: dict[str, Any] | None = None

    @classmethod
    def new(cls, name: str, description: str, parameters: dict[str, Any] | None = None) -> ToolDescription:
        return cls(name=name, description=description, parameters=parameters)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters is not None:
            out["parameters"] = self.parameters
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ToolDescription:
        return cls(name=raw["name"], description=raw["description"], parameters=raw.get("parameters"))


@dataclass
class ToolNamespaceConfig:
    """A namespace of tools as harmony renders it (``namespace functions { ... }``)."""

    name: str
    description: str | None = None
    tools: list[ToolDescription] = field(default_factory=list)

    @staticmethod
    def browser() -> ToolNamespaceConfig:
        """The built-in browser namespace, exactly as gpt-oss was trained on it.

        The browser tool owns the text (``gptoss_agent.tools.browser``); the conformance tests hold
        it equal to openai-harmony's ``ToolNamespaceConfig.browser()``.
        """
        from gptoss_agent.tools.browser import DESCRIPTION, FUNCTIONS

        return ToolNamespaceConfig(
            name="browser",
            description=DESCRIPTION,
            tools=[ToolDescription(f.name, f.description, copy.deepcopy(f.parameters)) for f in FUNCTIONS],
        )

    @staticmethod
    def python() -> ToolNamespaceConfig:
        """The built-in python namespace (free-form code, no functions), with its 120 s timeout."""
        from gptoss_agent.tools.python import PYTHON_DESCRIPTION

        return ToolNamespaceConfig(
            name="python", description=PYTHON_DESCRIPTION.format(timeout=120.0), tools=[]
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["tools"] = [t.to_dict() for t in self.tools]
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ToolNamespaceConfig:
        return cls(
            name=raw["name"],
            description=raw.get("description"),
            tools=[
                t if isinstance(t, ToolDescription) else ToolDescription.from_dict(t) for t in raw["tools"]
            ],
        )


def _tools_to_dict(tools: dict[str, ToolNamespaceConfig]) -> dict[str, Any]:
    return {key: ns.to_dict() for key, ns in tools.items()}


def _tools_from_dict(raw: Mapping[str, Any] | None) -> dict[str, ToolNamespaceConfig] | None:
    if raw is None:
        return None
    return {
        key: ns if isinstance(ns, ToolNamespaceConfig) else ToolNamespaceConfig.from_dict(ns)
        for key, ns in raw.items()
    }


@dataclass
class ChannelConfig:
    """The channels the system message declares (``# Valid channels: ...``)."""

    valid_channels: list[str]
    channel_required: bool

    @classmethod
    def require_channels(cls, channels: Sequence[str]) -> ChannelConfig:
        return cls(valid_channels=list(channels), channel_required=True)

    def to_dict(self) -> dict[str, Any]:
        return {"valid_channels": list(self.valid_channels), "channel_required": self.channel_required}


DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_CHANNELS = ("analysis", "commentary", "final")


@dataclass
class SystemContent:
    """The system message: identity, dates, reasoning effort, built-in tools, channels."""

    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    reasoning_effort: ReasoningEffort | None = ReasoningEffort.MEDIUM
    conversation_start_date: str | None = None
    knowledge_cutoff: str | None = "2024-06"
    channel_config: ChannelConfig | None = field(
        default_factory=lambda: ChannelConfig.require_channels(DEFAULT_CHANNELS)
    )
    tools: dict[str, ToolNamespaceConfig] | None = None

    @classmethod
    def new(cls) -> SystemContent:
        return cls()

    def with_model_identity(self, model_identity: str) -> SystemContent:
        self.model_identity = model_identity
        return self

    def with_reasoning_effort(self, reasoning_effort: ReasoningEffort | str) -> SystemContent:
        self.reasoning_effort = ReasoningEffort.parse(reasoning_effort)
        return self

    def with_conversation_start_date(self, conversation_start_date: str) -> SystemContent:
        self.conversation_start_date = conversation_start_date
        return self

    def with_knowledge_cutoff(self, knowledge_cutoff: str) -> SystemContent:
        self.knowledge_cutoff = knowledge_cutoff
        return self

    def with_channel_config(self, channel_config: ChannelConfig) -> SystemContent:
        self.channel_config = channel_config
        return self

    def with_required_channels(self, channels: Sequence[str]) -> SystemContent:
        self.channel_config = ChannelConfig.require_channels(channels)
        return self

    def with_tools(self, ns_config: ToolNamespaceConfig) -> SystemContent:
        if self.tools is None:
            self.tools = {}
        self.tools[ns_config.name] = ns_config
        return self

    def with_browser_tool(self) -> SystemContent:
        return self.with_tools(ToolNamespaceConfig.browser())

    def with_python_tool(self) -> SystemContent:
        return self.with_tools(ToolNamespaceConfig.python())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.model_identity is not None:
            out["model_identity"] = self.model_identity
        if self.reasoning_effort is not None:
            out["reasoning_effort"] = ReasoningEffort.parse(self.reasoning_effort).value
        if self.conversation_start_date is not None:
            out["conversation_start_date"] = self.conversation_start_date
        if self.knowledge_cutoff is not None:
            out["knowledge_cutoff"] = self.knowledge_cutoff
        if self.channel_config is not None:
            out["channel_config"] = self.channel_config.to_dict()
        if self.tools is not None:
            out["tools"] = _tools_to_dict(self.tools)
        out["type"] = "system_content"
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SystemContent:
        """Read the JSON form; a missing key takes the default, an explicit null stays None."""
        out = cls()
        if "model_identity" in raw:
            out.model_identity = raw["model_identity"]
        if "reasoning_effort" in raw:
            effort = raw["reasoning_effort"]
            out.reasoning_effort = None if effort is None else ReasoningEffort.parse(effort)
        if "conversation_start_date" in raw:
            out.conversation_start_date = raw["conversation_start_date"]
        if "knowledge_cutoff" in raw:
            out.knowledge_cutoff = raw["knowledge_cutoff"]
        if "channel_config" in raw:
            cc = raw["channel_config"]
            out.channel_config = (
                None
                if cc is None
                else cc
                if isinstance(cc, ChannelConfig)
                else ChannelConfig(list(cc["valid_channels"]), bool(cc["channel_required"]))
            )
        if "tools" in raw:
            out.tools = _tools_from_dict(raw["tools"])
        return out


@dataclass
class ResponseFormat:
    """A structured-output format for the developer message's ``# Response Formats`` section."""

    name: str
    schema: dict[str, Any]
    """The JSON Schema the answer should follow (rendered as compact JSON)."""
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out["schema"] = self.schema
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ResponseFormat:
        return cls(name=raw["name"], schema=raw["schema"], description=raw.get("description"))


@dataclass
class DeveloperContent:
    """The developer message: instructions, function tools, response formats."""

    instructions: str | None = None
    tools: dict[str, ToolNamespaceConfig] | None = None
    response_formats: list[ResponseFormat] | None = None
    """Not in openai-harmony: rendered after ``# Tools`` as harmony's format guide shows."""

    @classmethod
    def new(cls) -> DeveloperContent:
        return cls()

    def with_instructions(self, instructions: str) -> DeveloperContent:
        self.instructions = instructions
        return self

    def with_tools(self, ns_config: ToolNamespaceConfig) -> DeveloperContent:
        if self.tools is None:
            self.tools = {}
        self.tools[ns_config.name] = ns_config
        return self

    def with_function_tools(self, tools: Sequence[ToolDescription]) -> DeveloperContent:
        return self.with_tools(ToolNamespaceConfig(name="functions", description=None, tools=list(tools)))

    def with_response_format(self, response_format: ResponseFormat) -> DeveloperContent:
        if self.response_formats is None:
            self.response_formats = []
        self.response_formats.append(response_format)
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.instructions is not None:
            out["instructions"] = self.instructions
        if self.tools is not None:
            out["tools"] = _tools_to_dict(self.tools)
        if self.response_formats is not None:
            out["response_formats"] = [f.to_dict() for f in self.response_formats]
        out["type"] = "developer_content"
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DeveloperContent:
        formats = raw.get("response_formats")
        return cls(
            instructions=raw.get("instructions"),
            tools=_tools_from_dict(raw.get("tools")),
            response_formats=None if formats is None else [ResponseFormat.from_dict(f) for f in formats],
        )


Content: TypeAlias = TextContent | SystemContent | DeveloperContent
"""What a message holds: text, or the structured system / developer contents."""


def _content_from_dict(raw: Mapping[str, Any]) -> Content:
    kind = raw.get("type")
    if kind == "text":
        return TextContent(text=raw["text"])
    if kind == "system_content":
        return SystemContent.from_dict(raw)
    if kind == "developer_content":
        return DeveloperContent.from_dict(raw)
    raise ValueError(f"unknown content type {kind!r} (expected text, system_content or developer_content)")


@dataclass
class Message:
    """One harmony message: ``<|start|>{author}[ to={recipient}][<|channel|>{channel}][ {content_type}]<|message|>...``."""

    author: Author
    content: list[Content] = field(default_factory=list)
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Not in openai-harmony: free-form data kept with the message in transcripts. The key
    ``"token_ids"`` holds what the model generated (see ``token_ids``)."""
    _generated_as: tuple[Any, ...] | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def from_author_and_content(cls, author: Author, content: str | Content) -> Message:
        if isinstance(content, str):
            content = TextContent(text=content)
        return cls(author=author, content=[content])

    @classmethod
    def from_role_and_content(cls, role: Role, content: str | Content) -> Message:
        return cls.from_author_and_content(Author(role=role), content)

    @classmethod
    def from_role_and_contents(cls, role: Role, contents: Sequence[Content]) -> Message:
        return cls(author=Author(role=role), content=list(contents))

    def adding_content(self, content: str | Content) -> Message:
        self.content.append(TextContent(text=content) if isinstance(content, str) else content)
        return self

    def with_channel(self, channel: str) -> Message:
        self.channel = channel
        return self

    def with_recipient(self, recipient: str) -> Message:
        self.recipient = recipient
        return self

    def with_content_type(self, content_type: str) -> Message:
        self.content_type = content_type
        return self

    @property
    def text(self) -> str:
        """The concatenated text of the message's ``TextContent`` parts."""
        return "".join(c.text for c in self.content if isinstance(c, TextContent))

    def with_token_ids(self, token_ids: Sequence[int]) -> Message:
        """Record the tokens the model generated for this message, ``<|start|>`` to its end token.

        The renderer emits them verbatim instead of the canonical form, so a prompt holds exactly
        what the engine's KV cache holds (gpt-oss writes ``<|channel|>commentary to=X`` where the
        canonical form is ``to=X<|channel|>commentary``). A final answer's ``<|return|>`` is
        kept as ``<|end|>``, as harmony prescribes for history. Changing the message's header or
        text afterwards makes it render canonically again.
        """
        self.metadata["token_ids"] = list(token_ids)
        self._generated_as = self._signature()
        return self

    @property
    def token_ids(self) -> list[int] | None:
        """The generated tokens to render verbatim, or None (render the fields canonically)."""
        ids = self.metadata.get("token_ids")
        if ids is None:
            return None
        if self._generated_as is None:  # metadata set directly (or loaded): trust it from now on
            self._generated_as = self._signature()
        elif self._generated_as != self._signature():
            return None
        return ids

    def _signature(self) -> tuple[Any, ...]:
        return (
            self.author.role,
            self.author.name,
            self.channel,
            self.recipient,
            self.content_type,
            self.text,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.author.role.value,
            "name": self.author.name,
            "content": [c.to_dict() for c in self.content],
        }
        if self.channel is not None:
            out["channel"] = self.channel
        if self.recipient is not None:
            out["recipient"] = self.recipient
        if self.content_type is not None:
            out["content_type"] = self.content_type
        if self.metadata:
            out["metadata"] = copy.deepcopy(self.metadata)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        raw_content = data["content"]
        if isinstance(raw_content, str):  # openai-harmony's Rust side writes one text as a string
            raw_content = [{"type": "text", "text": raw_content}]
        message = cls(
            author=Author(role=Role(data["role"]), name=data.get("name")),
            content=[_content_from_dict(c) for c in raw_content],
            channel=data.get("channel"),
            recipient=data.get("recipient"),
            content_type=data.get("content_type"),
        )
        metadata = data.get("metadata")
        if isinstance(metadata, Mapping):
            message.metadata = copy.deepcopy(dict(metadata))
            ids = message.metadata.get("token_ids")
            if ids is not None:
                if not (isinstance(ids, list) and all(type(t) is int and t >= 0 for t in ids)):
                    raise ValueError("metadata.token_ids must be a list of token ids (non-negative integers)")
                message.with_token_ids(ids)
        return message

    @classmethod
    def from_json(cls, payload: str) -> Message:
        return cls.from_dict(json.loads(payload))


@dataclass
class Conversation:
    """An ordered list of messages."""

    messages: list[Message] = field(default_factory=list)

    @classmethod
    def from_messages(cls, messages: Sequence[Message]) -> Conversation:
        return cls(messages=list(messages))

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conversation:
        return cls(messages=[Message.from_dict(m) for m in data["messages"]])

    @classmethod
    def from_json(cls, payload: str) -> Conversation:
        return cls.from_dict(json.loads(payload))
