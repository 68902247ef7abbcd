"""What the OpenAI-compatible endpoints share: request errors, the client's functions as tools the
agent stops at, the per-conversation built-in tools, and building one ``Agent`` per request."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.agent.loop import Agent
from gptoss_agent.agent.messages import Author, Message, ResponseFormat, Role, TextContent
from gptoss_agent.model.engine import Engine, Sampling
from gptoss_agent.tools.base import FunctionSpec, NamespaceSpec, Tool, ToolError, ToolOutput
from gptoss_agent.tools.text import json_text

__all__ = [
    "BadRequest",
    "ClientFunctions",
    "Conversations",
    "ServerConfig",
    "call_message",
    "new_id",
    "tool_message",
]


class BadRequest(Exception):
    """A request the server cannot take: HTTP 400 with OpenAI's error JSON, naming the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``resp_…``, ``msg_…``, ``call_…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def expect(value: Any, kind: type | tuple[type, ...], param: str) -> Any:
    """``value`` when it has the type ``kind``; else a ``BadRequest`` naming ``param``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = " or ".join(k.__name__ for k in _as_tuple(kind))
        raise BadRequest(f"'{param}' must be {_JSON_NAMES.get(names, names)}", param)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_JSON_NAMES = {
    "str": "a string",
    "list": "an array",
    "dict": "an object",
    "int or float": "a number",
    "bool": "a boolean",
}


class ClientFunctions:
    """The request's function tools: rendered in the developer message as ``functions``, run by
    the client (``external``), so the agent's run stops at their call (``stop_reason=tool_call``)."""

    external = True

    def __init__(self, functions: Sequence[FunctionSpec]):
        self.functions = tuple(functions)

    @property
    def spec(self) -> NamespaceSpec:
        return NamespaceSpec(name="functions", functions=self.functions)

    def call(self, function: str, body: str) -> ToolOutput:
        raise ToolError(f"functions.{function} is run by the client")

    async def acall(self, function: str, body: str) -> ToolOutput:
        return self.call(function, body)


def function_spec(raw: Any, param: str, *, nested: bool) -> FunctionSpec:
    """A client's function tool (Chat Completions nests it under ``function``; Responses does not)."""
    expect(raw, dict, param)
    fn = raw.get("function") if nested else raw
    where = f"{param}.function" if nested else param
    expect(fn, dict, where)
    name = fn.get("name")
    if not isinstance(name, str) or not name or not name.replace("_", "a").replace("-", "a").isalnum():
        raise BadRequest(
            f"'{where}.name' must be a non-empty name of letters, digits, _ and -", f"{where}.name"
        )
    parameters = fn.get("parameters")
    if parameters is not None:
        expect(parameters, dict, f"{where}.parameters")
        _check_schema(parameters, f"{where}.parameters")
    return FunctionSpec(
        name=name, description=str(fn.get("description") or ""), parameters=parameters or None
    )


def _check_schema(schema: dict[str, Any], param: str) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.SchemaError as e:
        raise BadRequest(f"'{param}' is not a valid JSON Schema: {e.message}", param) from None


def call_message(name: str, arguments: str, call_id: str) -> Message:
    """An assistant's call of ``functions.NAME`` as gpt-oss writes it (for history sent back)."""
    message = Message(
        author=Author(Role.ASSISTANT),
        content=[TextContent(arguments)],
        channel="commentary",
        recipient=f"functions.{name}",
        content_type="<|constrain|>json",
    )
    message.metadata["call_id"] = call_id
    return message


def tool_message(name: str, output: str) -> Message:
    """A client's function result, as the loop writes tool results."""
    return Message(
        author=Author(Role.TOOL, f"functions.{name}"),
        content=[TextContent(output)],
        channel="commentary",
        recipient="assistant",
    )


@dataclass
class ServerConfig:
    """What ``create_app`` was given."""

    engine: Engine
    builtins: Mapping[str, Callable[[], Tool]] = field(default_factory=dict)
    """Built-in tools the server runs, by name (``python``, ``browser``), as factories: one
    instance per conversation (a sandbox session, a page stack)."""
    tools: Sequence[Tool] = ()
    """Server-side tools every request gets (``@tool`` functions, MCP servers), run here."""
    model: str = "gpt-oss"
    api_key: str | None = None
    max_concurrency: int = 4
    enc: Any = None
    agent_options: dict[str, Any] = field(default_factory=dict)


class Conversations:
    """Per-conversation built-in tools (one python sandbox, one browser each), least recently used
    closed beyond ``capacity``."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._tools: OrderedDict[str, dict[str, Tool]] = OrderedDict()
        self._lock = threading.Lock()

    def tools(self, conversation: str, config: ServerConfig, names: Sequence[str]) -> list[Tool]:
        with self._lock:
            have = self._tools.pop(conversation, {})
            self._tools[conversation] = have
            for name in names:
                if name not in have:
                    have[name] = config.builtins[name]()
            evicted = []
            while len(self._tools) > self.capacity:
                evicted.append(self._tools.popitem(last=False)[1])
        for tools in evicted:
            _close(tools.values())
        return [have[name] for name in names]

    def release(self, conversation: str) -> None:
        """Close a conversation's tools now (nothing will come back to it)."""
        with self._lock:
            tools = self._tools.pop(conversation, {})
        _close(tools.values())

    def close(self) -> None:
        with self._lock:
            everything, self._tools = list(self._tools.values()), OrderedDict()
        for tools in everything:
            _close(tools.values())


def _close(tools: Any) -> None:
    for t in tools:
        close = getattr(t, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def build_agent(
    config: ServerConfig,
    *,
    tools: Sequence[Tool],
    functions: Sequence[FunctionSpec],
    instructions: str | None,
    effort: str | None,
    sampling: Sampling,
    max_tokens: int | None,
    tool_choice: str,
    answer_schema: dict[str, Any] | None,
) -> Agent:
    """One request's agent: the server's tools, the conversation's built-ins, the client's functions."""
    all_tools: list[Tool] = [*config.tools, *tools]
    if functions:
        all_tools.append(ClientFunctions(functions))
    formats = [ResponseFormat("answer", answer_schema)] if answer_schema is not None else []
    options = dict(config.agent_options)
    options.setdefault("reasoning_effort", "medium")
    if effort is not None:
        options["reasoning_effort"] = effort
    try:
        agent = Agent(
            config.engine,
            all_tools,
            instructions=instructions,
            sampling=sampling,
            max_tokens=max_tokens,
            tool_choice=tool_choice,
            response_formats=formats,
            enc=config.enc,
            **options,
        )
        agent.constraints.step_choice(agent.toolbox, True)  # a named choice must name a tool
    except ValueError as e:
        raise BadRequest(str(e), "tool_choice" if "tool_choice" in str(e) else None) from None
    agent.answer_schema = answer_schema
    return agent


def sampling_from(body: Mapping[str, Any], max_key: str) -> tuple[Sampling, int | None]:
    """Temperature, top_p, seed and the output cap of a request, checked."""
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    seed = body.get("seed")
    if temperature is None:
        temperature = 1.0
    if top_p is None:
        top_p = 1.0
    expect(temperature, (int, float), "temperature")
    expect(top_p, (int, float), "top_p")
    if not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be between 0 and 2", "temperature")
    if not 0 < top_p <= 1:
        raise BadRequest("'top_p' must be greater than 0 and at most 1", "top_p")
    if seed is not None:
        expect(seed, int, "seed")
    cap = body.get(max_key)
    if cap is not None:
        expect(cap, int, max_key)
        if cap < 1:
            raise BadRequest(f"'{max_key}' must be at least 1", max_key)
    return Sampling(temperature=float(temperature), top_p=float(top_p), seed=seed), cap


def effort_from(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if value not in ("low", "medium", "high"):
        raise BadRequest(f"'{param}' must be low, medium or high", param)
    return str(value)


def now() -> int:
    return int(time.time())


def dumps(obj: Any) -> str:
    """JSON for the wire: every string valid Unicode (a model's or a page's lone surrogate cannot
    break the response)."""
    return json_text(obj)
