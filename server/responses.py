"""``POST /v1/responses``: OpenAI's Responses API over the agent, streaming and not.

Input items become harmony messages (``message``, ``function_call``, ``function_call_output``,
``reasoning``); ``tools`` are the client's functions (the run stops at their call, returned as a
``function_call`` item) and the built-ins the server runs itself: ``code_interpreter`` is the
stateful python sandbox (one session per conversation), ``web_search`` / ``web_search_preview``
the browser. Each appears as its output item with its result. A stored response (``store``, the
default) keeps the conversation behind it, reasoning and pending call included, so
``previous_response_id`` continues where the model stopped.

Streaming sends the Responses event types in their order: ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added``, its deltas
(``response.reasoning_text.delta``, ``response.content_part.added`` and
``response.output_text.delta``, ``response.function_call_arguments.delta``), their ``.done``
events and ``response.output_item.done``; last ``response.completed`` (or ``response.incomplete``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.agent.events import (
    AgentEvent,
    AnswerDelta,
    ReasoningDelta,
    RunDone,
    RunResult,
    StopReason,
    ToolCallFinished,
    ToolCallStarted,
)
from gptoss_agent.agent.messages import Author, Message, Role, TextContent
from gptoss_agent.server.chat import _text, answer_schema_of
from gptoss_agent.server.common import (
    BadRequest,
    Conversations,
    ServerConfig,
    build_agent,
    call_message,
    effort_from,
    expect,
    function_spec,
    new_id,
    now,
    sampling_from,
    tool_message,
)
from gptoss_agent.server.store import ReasoningMemory, ResponseStore

__all__ = ["ResponsesRequest", "ResponsesRun", "parse_responses_request"]

_BUILTIN = {"code_interpreter": "python", "web_search": "browser", "web_search_preview": "browser"}
_INCOMPLETE = {
    StopReason.MAX_TOKENS: "max_output_tokens",
    StopReason.CONTEXT: "max_output_tokens",
    StopReason.MAX_STEPS: "max_output_tokens",
}


@dataclass
class ResponsesRequest:
    """A checked Responses request."""

    body: Mapping[str, Any]
    history: list[Message]
    conversation: str | None
    builtins: list[str]
    functions: list[Any] = field(default_factory=list)
    instructions: str | None = None
    stream: bool = False
    store: bool = True
    tool_choice: str = "auto"
    answer_schema: dict[str, Any] | None = None


def parse_responses_request(
    body: Any, store: ResponseStore, memory: ReasoningMemory, config: ServerConfig
) -> ResponsesRequest:
    expect(body, dict, "body")
    history: list[Message] = []
    conversation = None
    previous_id = body.get("previous_response_id")
    if previous_id is not None:
        expect(previous_id, str, "previous_response_id")
        stored = store.get(previous_id)
        if stored is None:
            raise BadRequest(
                f"Previous response with id '{previous_id}' not found.", "previous_response_id", 404
            )
        history, conversation = list(stored.messages), stored.conversation
    tools = body.get("tools") or []
    expect(tools, list, "tools")
    functions, builtins = [], []
    for i, t in enumerate(tools):
        expect(t, dict, f"tools[{i}]")
        kind = t.get("type")
        if kind == "function":
            functions.append(function_spec(t, f"tools[{i}]", nested=False))
        elif kind in _BUILTIN:
            name = _BUILTIN[kind]
            if name not in config.builtins:
                raise BadRequest(
                    f"'tools[{i}]': {kind} is not enabled on this server (start it with --tools {name})",
                    f"tools[{i}].type",
                )
            if name not in builtins:
                builtins.append(name)
        else:
            raise BadRequest(
                f"'tools[{i}].type' must be function, code_interpreter, web_search or web_search_preview",
                f"tools[{i}].type",
            )
    instructions = body.get("instructions")
    if instructions is not None:
        expect(instructions, str, "instructions")
    extra = _items(body.get("input"), history, memory)
    text = body.get("text") or {}
    expect(text, dict, "text")
    return ResponsesRequest(
        body=body,
        history=history,
        conversation=conversation,
        builtins=builtins,
        functions=functions,
        instructions="\n\n".join(t for t in [instructions, *extra] if t) or None,
        stream=bool(body.get("stream")),
        store=body.get("store", True) is not False,
        tool_choice=_tool_choice(body.get("tool_choice")),
        answer_schema=answer_schema_of(_chat_format(text.get("format"))),
    )


def _items(raw: Any, history: list[Message], memory: ReasoningMemory) -> list[str]:
    """Append the input's items to ``history``; returns the text of system/developer messages."""
    if raw is None:
        raise BadRequest("'input' is required", "input")
    if isinstance(raw, str):
        history.append(Message.from_role_and_content(Role.USER, raw))
        return []
    expect(raw, list, "input")
    names = {
        m.metadata["call_id"]: (m.recipient or "").removeprefix("functions.")
        for m in history
        if "call_id" in m.metadata
    }
    instructions: list[str] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        expect(item, dict, where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            content = _text(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                instructions.append(content)
            elif role == "user":
                history.append(Message.from_role_and_content(Role.USER, content))
            elif role == "assistant":
                history.append(
                    Message(author=Author(Role.ASSISTANT), content=[TextContent(content)], channel="final")
                )
            else:
                raise BadRequest(
                    f"'{where}.role' must be user, assistant, system or developer", f"{where}.role"
                )
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            expect(parts, list, f"{where}.content")
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
            message = Message(author=Author(Role.ASSISTANT), content=[TextContent(text)], channel="analysis")
            message.metadata["from_input"] = True
            history.append(message)
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
                raise BadRequest(f"'{where}' needs call_id, name and arguments as strings", where)
            names[call_id] = name
            if any(m.metadata.get("call_id") == call_id for m in history):
                continue  # already in the stored conversation
            recalled = memory.recall(call_id)
            if recalled is not None:
                while history and history[-1].metadata.get("from_input"):
                    history.pop()  # the stored reasoning replaces what the client echoed
                history += recalled
            else:
                history.append(call_message(name, arguments, call_id))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if call_id not in names:
                raise BadRequest(
                    f"'{where}.call_id' names no function call of this conversation", f"{where}.call_id"
                )
            if not isinstance(output, str):
                output = json.dumps(output)
            history.append(tool_message(names[call_id], output))
        elif kind in ("code_interpreter_call", "web_search_call", "item_reference"):
            continue  # server-side calls echoed back: the stored or recalled messages hold them
        else:
            raise BadRequest(f"'{where}.type' {kind!r} is not supported", f"{where}.type")
    return instructions


def _tool_choice(value: Any) -> str:
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind == "function" and isinstance(value.get("name"), str):
            return f"functions.{value['name']}"
        if kind in _BUILTIN:
            return "python" if kind == "code_interpreter" else "browser.search"
    raise BadRequest("'tool_choice' must be auto, none, required or {type: function, name}", "tool_choice")


def _chat_format(fmt: Any) -> Any:
    """Responses' ``text.format`` in Chat Completions' ``response_format`` shape."""
    if fmt is None:
        return None
    expect(fmt, dict, "text.format")
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema")}}
    return fmt


class ResponsesRun:
    """One Responses request: the agent's events turned into output items and stream events."""

    def __init__(
        self,
        config: ServerConfig,
        request: ResponsesRequest,
        store: ResponseStore,
        memory: ReasoningMemory,
        conversations: Conversations,
    ):
        body = request.body
        sampling, cap = sampling_from(body, "max_output_tokens")
        self.config, self.request, self.store, self.memory = config, request, store, memory
        self.id = new_id("resp")
        self.conversation = request.conversation or self.id
        self.created = now()
        self.effort = effort_from((body.get("reasoning") or {}).get("effort"), "reasoning.effort")
        tools = conversations.tools(self.conversation, config, request.builtins)
        self.browser = next((t for t in tools if hasattr(t, "citations")), None)
        self.agent = build_agent(
            config,
            tools=tools,
            functions=request.functions,
            instructions=request.instructions,
            effort=self.effort,
            sampling=sampling,
            max_tokens=cap,
            tool_choice=request.tool_choice,
            answer_schema=request.answer_schema,
        )
        self.agent.load(request.history)
        self.first_new = len(self.agent.messages)
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item receiving deltas, at output[_open_index]
        self._open_index = -1
        self._open_step = -1
        self._tool_item: dict[str, Any] | None = None
        self._seq = 0

    # -- the response object --------------------------------------------------------------------

    def response(self, status: str, result: RunResult | None = None) -> dict[str, Any]:
        body = self.request.body
        usage = None
        incomplete = None
        if result is not None:
            u = result.usage
            reasoning = sum(
                len(m.token_ids or [])
                for m in self.agent.messages[self.first_new :]
                if m.author.role is Role.ASSISTANT and m.channel == "analysis"
            )
            usage = {
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": u.reused_tokens},
                "output_tokens": u.generated_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": u.prompt_tokens + u.generated_tokens,
            }
            if status == "incomplete":
                incomplete = {"reason": _INCOMPLETE.get(result.stop_reason, str(result.stop_reason))}
        fmt = (body.get("text") or {}).get("format") or {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.config.model,
            "output": [dict(item) for item in self.output],
            "usage": usage,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"),
            "parallel_tool_calls": False,
            "reasoning": {"effort": self.effort, "summary": None},
            "store": self.request.store,
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "text": {"format": fmt},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "truncation": "disabled",
            "metadata": body.get("metadata") or {},
        }

    # -- events -----------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        return {"type": kind, "sequence_number": self._seq - 1, **fields}

    def _part(self, kind: str, item: dict[str, Any], index: int, **fields: Any) -> dict[str, Any]:
        """An event about the first content part of output item ``index``."""
        return self._event(kind, item_id=item["id"], output_index=index, content_index=0, **fields)

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def _close(self) -> list[dict[str, Any]]:
        item, index, self._open = self._open, self._open_index, None
        if item is None:
            return []
        events = []
        part = item["content"][0]
        if item["type"] == "reasoning":
            events.append(self._part("response.reasoning_text.done", item, index, text=part["text"]))
        else:
            part["annotations"] = self._annotations(part["text"])
            events.append(
                self._part("response.output_text.done", item, index, text=part["text"], logprobs=[])
            )
            events.append(self._part("response.content_part.done", item, index, part=dict(part)))
        item["status"] = "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def _annotations(self, text: str) -> list[dict[str, Any]]:
        """The browser's citations (``【3†L10-L15】``) in an answer, as ``url_citation``s."""
        if self.browser is None:
            return []
        return [
            {
                "type": "url_citation",
                "start_index": c.start,
                "end_index": c.end,
                "url": c.url,
                "title": c.title or "",
            }
            for c in self.browser.citations(text)
            if c.url
        ]

    def _delta(self, kind: str, text: str, step: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open
        if item is None or item["type"] != kind or self._open_step != step:
            events += self._close()
            if kind == "reasoning":
                item = {
                    "id": new_id("rs"),
                    "type": "reasoning",
                    "summary": [],
                    "content": [],
                    "status": "in_progress",
                }
            else:
                item = {
                    "id": new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
            events += self._add(item)
            self._open, self._open_index, self._open_step = item, len(self.output) - 1, step
            if kind == "reasoning":
                item["content"].append({"type": "reasoning_text", "text": ""})
            else:
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                events.append(
                    self._part("response.content_part.added", item, self._open_index, part=dict(part))
                )
                item["content"].append(part)
        item["content"][0]["text"] += text
        if kind == "reasoning":
            events.append(self._part("response.reasoning_text.delta", item, self._open_index, delta=text))
        else:
            events.append(
                self._part("response.output_text.delta", item, self._open_index, delta=text, logprobs=[])
            )
        return events

    def _tool_started(self, event: ToolCallStarted) -> list[dict[str, Any]]:
        events = self._close()
        if event.recipient == "python":
            item: dict[str, Any] = {
                "id": new_id("ci"),
                "type": "code_interpreter_call",
                "status": "in_progress",
                "code": event.arguments,
                "container_id": self.conversation,
                "outputs": None,
            }
        elif event.recipient.startswith("browser."):
            item = {
                "id": new_id("ws"),
                "type": "web_search_call",
                "status": "in_progress",
                "action": _search_action(event.recipient, event.arguments),
            }
        else:
            return events  # a server-side function: inside the run, not an item of the API
        self._tool_item = item
        return events + self._add(item)

    def _tool_finished(self, event: ToolCallFinished) -> list[dict[str, Any]]:
        item, self._tool_item = self._tool_item, None
        if item is None:
            return []
        item["status"] = "completed" if not event.call.is_error else "failed"
        if item["type"] == "code_interpreter_call":
            item["outputs"] = [{"type": "logs", "logs": event.call.output}]
        return [
            self._event("response.output_item.done", output_index=self.output.index(item), item=dict(item))
        ]

    def _finished(self, result: RunResult) -> list[dict[str, Any]]:
        events = self._close()
        if result.stop_reason is StopReason.TOOL_CALL:
            call = self.agent.messages[-1]
            call_id = new_id("call")
            call.metadata["call_id"] = call_id
            self.memory.remember(call_id, [m for m in self.agent.messages[self.first_new :]])
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": (call.recipient or "").removeprefix("functions."),
                "arguments": "",
            }
            events += self._add(item)
            index = len(self.output) - 1
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=call.text,
                )
            )
            item["arguments"] = call.text
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=call.text,
                    name=item["name"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        status = (
            "completed" if result.stop_reason in (StopReason.ANSWER, StopReason.TOOL_CALL) else "incomplete"
        )
        response = self.response(status, result)
        if self.request.store:
            self.store.put(response, self.agent.messages, self.conversation)
        events.append(self._event(f"response.{status}", response=response))
        return events

    def on(self, event: AgentEvent) -> list[dict[str, Any]]:
        """The stream events one agent event makes."""
        if isinstance(event, ReasoningDelta):
            return self._delta("reasoning", event.text, event.step)
        if isinstance(event, AnswerDelta):
            return self._delta("message", event.text, event.step)
        if isinstance(event, ToolCallStarted):
            return self._tool_started(event)
        if isinstance(event, ToolCallFinished):
            return self._tool_finished(event)
        if isinstance(event, RunDone):
            return self._finished(event.result)
        return []

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every stream event of this response, in order."""
        start = self.response("in_progress")
        yield self._event("response.created", response=start)
        yield self._event("response.in_progress", response=start)
        async for event in self.agent.astream(None):
            for out in self.on(event):
                yield out

    async def complete(self) -> dict[str, Any]:
        last: dict[str, Any] = {}
        async for event in self.events():
            last = event
        return dict(last["response"])


def _search_action(recipient: str, arguments: str) -> dict[str, Any]:
    try:
        args = json.loads(arguments)
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    function = recipient.removeprefix("browser.")
    if function == "search":
        return {"type": "search", "query": str(args.get("query", ""))}
    if function == "open":
        return {"type": "open_page", "url": str(args.get("id", "")) or None}
    return {"type": "find", "pattern": str(args.get("pattern", "")), "url": None}
