"""``POST /v1/chat/completions``: OpenAI's Chat Completions over the agent.

The client's ``tools`` are functions the client runs: the agent stops at their call and the
response carries it as ``tool_calls``. The server's own tools (``serve --tools python,browser``)
run here, inside the same request. The reasoning comes in ``reasoning_content`` (as vLLM sends it,
so existing clients show it).

Reasoning re-injection: a stateless client sends the assistant's tool call back without the
reasoning that led to it. The server remembers, by the call's id, the messages the model generated
up to the call (with their token ids) and puts them back in place of the bare call, so the model
keeps its chain of thought across the call, as it was trained, and the engine reuses its cache.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.agent.events import AnswerDelta, ReasoningDelta, RunDone, RunResult, StopReason
from gptoss_agent.agent.messages import Author, Message, Role, TextContent
from gptoss_agent.server.common import (
    BadRequest,
    ServerConfig,
    build_agent,
    call_message,
    dumps,
    effort_from,
    expect,
    function_spec,
    new_id,
    now,
    sampling_from,
    tool_message,
)
from gptoss_agent.server.store import ReasoningMemory

__all__ = ["ChatRequest", "parse_chat_request"]

_FINISH = {
    StopReason.ANSWER: "stop",
    StopReason.TOOL_CALL: "tool_calls",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTEXT: "length",
    StopReason.MAX_STEPS: "length",
}


@dataclass
class ChatRequest:
    """A checked Chat Completions request."""

    body: Mapping[str, Any]
    history: list[Message]
    instructions: str | None
    conversation: str | None
    """The conversation a recalled tool call belongs to (its built-in tools' sessions), if any."""
    functions: list[Any] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def _text(content: Any, param: str) -> str:
    """A message's content: a string, or text parts (``[{"type": "text", "text": ...}]``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    expect(content, list, param)
    parts = []
    for i, part in enumerate(content):
        expect(part, dict, f"{param}[{i}]")
        if part.get("type") not in ("text", "input_text", "output_text") or not isinstance(
            part.get("text"), str
        ):
            raise BadRequest(
                f"'{param}[{i}]' must be a text part (this server reads text only)", f"{param}[{i}]"
            )
        parts.append(part["text"])
    return "".join(parts)


def parse_chat_request(body: Any, memory: ReasoningMemory) -> ChatRequest:
    expect(body, dict, "body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    if body.get("n", 1) not in (1, None):
        raise BadRequest("'n' must be 1 (one choice per request)", "n")
    tools = body.get("tools") or []
    expect(tools, list, "tools")
    functions = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "function") != "function":
            raise BadRequest(f"'tools[{i}].type' must be function", f"tools[{i}].type")
        functions.append(function_spec(t, f"tools[{i}]", nested=True))
    instructions: list[str] = []
    history: list[Message] = []
    names: dict[str, str] = {}
    conversation = None
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        expect(m, dict, where)
        role = m.get("role")
        text = _text(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            instructions.append(text)
        elif role == "user":
            history.append(Message.from_role_and_content(Role.USER, text))
        elif role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            calls = m.get("tool_calls") or []
            expect(calls, list, f"{where}.tool_calls")
            recalled = [memory.recall(str(c.get("id"))) if isinstance(c, dict) else None for c in calls]
            if reasoning and not any(recalled):
                history.append(_analysis(str(reasoning)))
            if text and calls and not any(recalled):  # words before a call: a preamble
                history.append(_assistant(text, "commentary"))
            for j, call in enumerate(calls):
                call_id, name, arguments = _call(call, f"{where}.tool_calls[{j}]")
                names[call_id] = name
                earlier = recalled[j]
                if earlier is not None:
                    conversation = earlier[0].metadata.get("conversation", conversation)
                    history += earlier
                else:
                    history.append(call_message(name, arguments, call_id))
            if not calls:
                history.append(_assistant(text, "final"))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in names:
                raise BadRequest(
                    f"'{where}.tool_call_id' names no tool call of an earlier assistant message",
                    f"{where}.tool_call_id",
                )
            history.append(tool_message(names[call_id], text))
        else:
            raise BadRequest(
                f"'{where}.role' must be system, developer, user, assistant or tool", f"{where}.role"
            )
    if not any(m.author.role is Role.USER for m in history):
        raise BadRequest("'messages' must hold at least one user message", "messages")
    options = body.get("stream_options") or {}
    return ChatRequest(
        body=body,
        history=history,
        instructions="\n\n".join(t for t in instructions if t) or None,
        conversation=conversation,
        functions=functions,
        stream=bool(body.get("stream")),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


def _assistant(text: str, channel: str) -> Message:
    return Message(author=Author(Role.ASSISTANT), content=[TextContent(text)], channel=channel)


def _analysis(text: str) -> Message:
    return _assistant(text, "analysis")


def _call(call: Any, param: str) -> tuple[str, str, str]:
    expect(call, dict, param)
    fn = call.get("function")
    expect(fn, dict, f"{param}.function")
    call_id, name, arguments = call.get("id"), fn.get("name"), fn.get("arguments", "{}")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"'{param}.id' must be a string", f"{param}.id")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"'{param}.function.name' must be a string", f"{param}.function.name")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return call_id, name, arguments


def tool_choice_of(value: Any) -> str:
    """OpenAI's ``tool_choice`` as the agent's: auto, none, required or ``functions.NAME``."""
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict):
        fn = value["function"] if isinstance(value.get("function"), dict) else value
        name = fn.get("name")
        if isinstance(name, str) and name:
            return f"functions.{name}"
    raise BadRequest(
        "'tool_choice' must be auto, none, required or {type: function, function: {name}}", "tool_choice"
    )


def answer_schema_of(response_format: Any) -> dict[str, Any] | None:
    """Chat Completions' ``response_format`` as a JSON Schema for the answer (None: free text)."""
    if response_format is None:
        return None
    expect(response_format, dict, "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        expect(spec, dict, "response_format.json_schema")
        schema = spec.get("schema")
        expect(schema, dict, "response_format.json_schema.schema")
        return dict(schema)
    raise BadRequest(
        "'response_format.type' must be text, json_object or json_schema", "response_format.type"
    )


class ChatRun:
    """One Chat Completions request against the agent."""

    def __init__(
        self, config: ServerConfig, request: ChatRequest, memory: ReasoningMemory, conversations: Any
    ):
        body = request.body
        sampling, cap = sampling_from(
            body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        )
        self.config, self.request, self.memory = config, request, memory
        self.conversation = request.conversation or new_id("conv")
        self.id = new_id("chatcmpl")
        self.created = now()
        builtins = list(config.builtins)
        self.tools = conversations.tools(self.conversation, config, builtins)
        self.conversations = conversations
        self.agent = build_agent(
            config,
            tools=self.tools,
            functions=request.functions,
            instructions=request.instructions,
            effort=effort_from(body.get("reasoning_effort"), "reasoning_effort"),
            sampling=sampling,
            max_tokens=cap,
            tool_choice=tool_choice_of(body.get("tool_choice")),
            answer_schema=answer_schema_of(body.get("response_format")),
        )
        self.agent.load(request.history)
        self.first_new = len(self.agent.messages)

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        """One ``chat.completion.chunk`` event (``delta`` None: no choice, e.g. the usage chunk)."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.config.model,
        }
        return "data: " + dumps({**body, "choices": choices, **extra}) + "\n\n"

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: role, reasoning and content deltas, the call, the finish, usage."""
        yield self._chunk({"role": "assistant", "content": ""})
        result = None
        async for event in self.agent.astream(None):
            if isinstance(event, ReasoningDelta):
                yield self._chunk({"reasoning_content": event.text})
            elif isinstance(event, AnswerDelta):
                yield self._chunk({"content": event.text})
            elif isinstance(event, RunDone):
                result = event.result
        assert result is not None
        message = self._finish(result)
        calls = message.get("tool_calls")
        if calls:
            yield self._chunk({"tool_calls": [{"index": 0, **calls[0]}]})
        yield self._chunk({}, self._finish_reason(result))
        if self.request.include_usage:
            yield self._chunk(None, usage=self._usage(result))
        yield "data: [DONE]\n\n"

    async def complete(self) -> dict[str, Any]:
        result = await self.agent.arun(None)
        message = self._finish(result)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.config.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish_reason(result)}],
            "usage": self._usage(result),
        }

    def _finish(self, result: RunResult) -> dict[str, Any]:
        """The assistant message of the response; a pending call is remembered for re-injection."""
        new = self.agent.messages[self.first_new :]
        reasoning = "\n".join(
            m.text for m in new if m.author.role is Role.ASSISTANT and m.channel == "analysis"
        )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "reasoning_content": reasoning or None,
        }
        if result.stop_reason is StopReason.TOOL_CALL:
            call = new[-1]
            call_id = new_id("call")
            name = (call.recipient or "").removeprefix("functions.")
            generated = [m for m in new if m.author.role is not Role.USER]
            if generated:
                generated[0].metadata["conversation"] = self.conversation
            self.memory.remember(call_id, generated)
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": call.text}}
            ]
        else:
            message["content"] = result.answer
            if self.request.conversation is None:
                self.conversations.release(self.conversation)  # no call to come back to it
        return message

    @staticmethod
    def _finish_reason(result: RunResult) -> str:
        return _FINISH.get(result.stop_reason, "stop")

    @staticmethod
    def _usage(result: RunResult) -> dict[str, Any]:
        u = result.usage
        return {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.generated_tokens,
            "total_tokens": u.prompt_tokens + u.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": u.reused_tokens},
        }
