"""User tools: ``@tool`` turns a typed function into a ``FunctionTool``; ``Toolset`` groups the
``@tool`` methods of a stateful object.

A tool is data plus one call: the name, the description and each parameter's description come
from the signature and the docstring, the JSON Schema from the type hints (see
:mod:`gptoss_agent.tools.schema`). Arguments are checked against the schema before the call, and
JSON values are turned into the annotated types (Enum members, dataclasses, pydantic models,
tuples). Results that are not strings are serialised: JSON for data, ``str()`` otherwise.

    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
        '''Current weather for a city.

        Args:
            city: The city name, e.g. "Paris".
            unit: Temperature unit.
        '''
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, overload

from gptoss_agent.tools.base import (
    FunctionSpec,
    NamespaceSpec,
    ToolError,
    ToolOutput,
    call_in_thread,
    run_coroutine,
)
from gptoss_agent.tools.schema import (
    check_arguments,
    coerce,
    compile_validator,
    parse_docstring,
    signature_schema,
    validation_schema,
)

__all__ = ["FunctionTool", "Toolset", "to_text", "tool"]

_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


class FunctionTool:
    """A Python callable exposed to the model as ``functions.NAME`` (a ``Tool``).

    Build one with ``@tool``, ``FunctionTool(fn, ...)`` or ``FunctionTool.from_schema(...)``.
    Calling the object directly (``get_weather("Paris")``) calls the plain function.

    Attributes:
        name: The function name the model calls.
        description: Rendered above the function's type (the docstring's text before its sections).
        parameters: The JSON Schema of the arguments, or None for a function without parameters
            (harmony renders that as ``() => any``).
        namespace: ``functions`` (a ``Toolset`` may choose another).
        call_timeout: Seconds one call may take before the toolbox gives up on it (None: the
            toolbox's default).
        is_async: Whether the function is a coroutine function.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.is_async = _is_async(fn)
        self.call_timeout = timeout
        self.namespace = "functions"
        self._raw = parameters is not None
        self._method = False
        self._hints: dict[str, Any] = {}
        doc = parse_docstring(inspect.getdoc(fn))
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.description = description if description is not None else doc.description
        if parameters is not None:
            schema: dict[str, Any] | None = dict(parameters)
        else:
            params = list(inspect.signature(fn).parameters)
            self._method = (
                bool(params) and params[0] in ("self", "cls") and "." in getattr(fn, "__qualname__", "")
            )
            schema = signature_schema(fn, skip_first=self._method, descriptions=doc.params)
            self._hints = typing.get_type_hints(fn, include_extras=True)
            if not schema["properties"] and schema.get("additionalProperties") is False:
                schema = None
        self.parameters = schema
        self._validator = compile_validator(
            validation_schema(schema if schema is not None else _NO_ARGUMENTS)
        )
        functools.update_wrapper(self, fn, updated=())

    @classmethod
    def from_schema(
        cls,
        name: str,
        description: str,
        parameters: Mapping[str, Any] | None,
        fn: Callable[..., Any],
        *,
        timeout: float | None = None,
    ) -> FunctionTool:
        """A tool from a raw JSON Schema (an ``object`` schema, or None for no arguments) and a
        callable that takes the validated arguments as keyword arguments, unconverted."""
        return cls(
            fn, name=name, description=description, parameters=parameters or _NO_ARGUMENTS, timeout=timeout
        )

    # -- the Tool protocol ---------------------------------------------------------------

    @property
    def function_spec(self) -> FunctionSpec:
        """This function as harmony renders it inside its namespace."""
        parameters = self.parameters
        if self._raw and parameters == _NO_ARGUMENTS:
            parameters = None
        return FunctionSpec(name=self.name, description=self.description, parameters=parameters)

    @property
    def spec(self) -> NamespaceSpec:
        return NamespaceSpec(name=self.namespace, functions=(self.function_spec,))

    @property
    def author(self) -> str:
        """The author name of this tool's messages (``functions.get_weather``)."""
        return f"{self.namespace}.{self.name}"

    def call(self, function: str, body: str) -> ToolOutput:
        """Check the model's JSON arguments, call the function, return its result as text.

        Raises ToolError for the model's mistakes; an exception from the function propagates
        (the toolbox turns it into a message for the model).
        """
        arguments = self.arguments(function, body)
        if self.is_async:
            result = run_coroutine(self.fn(**arguments), self.call_timeout)
        else:
            result = self.fn(**arguments)
        return self._output(result)

    async def acall(self, function: str, body: str) -> ToolOutput:
        """The async form of ``call``: sync functions run in a worker thread."""
        arguments = self.arguments(function, body)
        if self.is_async:
            result = await self.fn(**arguments)
        else:
            result = await call_in_thread(self.fn, **arguments)
        return self._output(result)

    # -- pieces --------------------------------------------------------------------------

    def arguments(self, function: str, body: str) -> dict[str, Any]:
        """The keyword arguments for one call: parsed, validated and converted to the annotated
        types. Raises ToolError with the message the model should read."""
        if self._method and not isinstance(self.fn, types.MethodType):
            raise TypeError(f"{self.name} is a method: call it through an instance (a Toolset)")
        if function not in (self.name, self.author):
            raise ToolError(f"Unknown function {function!r}: this tool is {self.author}.")
        arguments = check_arguments(body, self._validator, name=self.author)
        if self._raw:
            return arguments
        converted = {}
        for key, value in arguments.items():
            try:
                converted[key] = coerce(value, self._hints.get(key, Any))
            except (TypeError, ValueError) as e:
                detail = " ".join(str(e).split())
                raise ToolError(f"Invalid arguments for {self.author}:\n- $.{key}: {detail}") from None
        return converted

    def _output(self, result: Any) -> ToolOutput:
        if isinstance(result, ToolOutput):
            return result
        return ToolOutput(author=self.author, content=to_text(result))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> FunctionTool:
        if instance is None or not self._method:
            return self
        return self.bind(instance)

    def bind(self, instance: Any, namespace: str | None = None) -> FunctionTool:
        """This method tool bound to an instance (what ``Toolset`` does for each ``@tool`` method)."""
        bound = copy.copy(self)
        bound.fn = types.MethodType(self.fn, instance)
        if namespace is not None:
            bound.namespace = namespace
        return bound

    def __repr__(self) -> str:
        return f"FunctionTool({self.author})"


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout: float | None = None
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a typed function (sync or async) into a ``FunctionTool``: ``@tool`` or
    ``@tool(name=..., description=..., timeout=...)``.

    On a method of a ``Toolset`` subclass (first parameter ``self``), each instance gets the
    tool bound to itself, which is how tools keep state.
    """
    if fn is not None:
        return FunctionTool(fn, name=name, description=description, timeout=timeout)

    def decorate(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, timeout=timeout)

    return decorate


class Toolset:
    """A stateful tool: subclass it, keep state in the instance, decorate methods with ``@tool``.

    Every ``@tool`` method becomes one function of the namespace (``functions`` unless the
    class sets ``namespace``), bound to the instance::

        class Notes(Toolset):
            def __init__(self):
                self.notes: dict[str, str] = {}

            @tool
            def add_note(self, title: str, text: str) -> str:
                '''Store a note under a title.'''
                self.notes[title] = text
                return "saved"
    """

    namespace: str = "functions"

    @property
    def tools(self) -> list[FunctionTool]:
        """The bound ``@tool`` methods, in the order the class defines them."""
        seen: dict[str, FunctionTool] = {}
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, FunctionTool):
                    seen.pop(attr, None)
                    seen[attr] = value.bind(self, self.namespace) if value._method else value
        return list(seen.values())

    @property
    def spec(self) -> NamespaceSpec:
        return NamespaceSpec(name=self.namespace, functions=tuple(t.function_spec for t in self.tools))

    def _tool(self, function: str) -> FunctionTool:
        for t in self.tools:
            if function in (t.name, t.author):
                return t
        names = ", ".join(t.author for t in self.tools)
        raise ToolError(f"Unknown function {function!r}. Available: {names}.")

    def call(self, function: str, body: str) -> ToolOutput:
        tool_ = self._tool(function)
        return tool_.call(tool_.name, body)

    async def acall(self, function: str, body: str) -> ToolOutput:
        tool_ = self._tool(function)
        return await tool_.acall(tool_.name, body)

    def close(self) -> None:
        """Release what the tools hold (override when there is something to release)."""


# --------------------------------------------------------------------------------------------
# Results -> text


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Iterator):
        raise TypeError("iterator")
    return str(value)


def to_text(value: Any) -> str:
    """A tool result as the model reads it: strings as they are, data (dicts, lists, numbers,
    booleans, None, dataclasses, pydantic models, enums) as JSON, anything else as ``str()``."""
    if isinstance(value, str):
        return value
    is_data = (
        value is None
        or isinstance(value, dict | list | tuple | int | float | bool | enum.Enum | set | frozenset)
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        or callable(getattr(value, "model_dump", None))
    )
    if not is_data:
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError):
        return str(value)
