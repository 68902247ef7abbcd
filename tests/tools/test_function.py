"""@tool: schemas from type hints (golden JSON), docstrings, argument conversion, results, and
rendering through openai-harmony."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
from typing import Annotated, Any, Literal, NotRequired, Optional, TypedDict, Union

import openai_harmony as h
import pydantic
import pytest
from gptoss_agent.tools import FunctionTool, NamespaceSpec, ToolError, ToolOutput, Toolset, to_text, tool
from gptoss_agent.tools.schema import parse_docstring, type_schema


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    """A point on the plane.

    Attributes:
        x: Horizontal position.
        y: Vertical position.
    """

    x: float
    y: float = 0.0


class Address(TypedDict):
    """A postal address.

    Attributes:
        street: Street and number.
    """

    street: str
    zip: NotRequired[str]


class Item(pydantic.BaseModel):
    name: str = pydantic.Field(description="What it is called.")
    qty: int = 1
    tags: list[str] = pydantic.Field(default_factory=list)


class Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    a: int


@dataclasses.dataclass
class Tree:
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


# --- schema derivation: one golden per supported type -------------------------------------

GOLDEN_TYPES: list[tuple[Any, dict[str, Any]]] = [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (Any, {}),
    (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
    (Literal[1, 2, 3], {"type": "integer", "enum": [1, 2, 3]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Color, {"type": "string", "enum": ["red", "green"]}),
    (Level, {"type": "integer", "enum": [1, 2]}),
    (Optional[str], {"type": "string", "nullable": True}),  # noqa: UP045
    (int | None, {"type": "integer", "nullable": True}),
    (Literal["x", "y"] | None, {"type": "string", "enum": ["x", "y"], "nullable": True}),
    (int | str, {"type": ["integer", "string"]}),
    (Union[int, str, None], {"type": ["integer", "string", "null"]}),  # noqa: UP007
    (list[str], {"type": "array", "items": {"type": "string"}}),
    (list[list[int]], {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
    (list, {"type": "array"}),
    (set[int], {"type": "array", "items": {"type": "integer"}}),
    (list[str] | None, {"type": "array", "items": {"type": "string"}, "nullable": True}),
    (
        str | list[str],
        {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    ),
    (
        Point | list[Point] | None,
        {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "x": {"type": "number", "description": "Horizontal position."},
                        "y": {"type": "number", "description": "Vertical position.", "default": 0.0},
                    },
                    "required": ["x"],
                    "additionalProperties": False,
                },
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "x": {"type": "number", "description": "Horizontal position."},
                            "y": {"type": "number", "description": "Vertical position.", "default": 0.0},
                        },
                        "required": ["x"],
                        "additionalProperties": False,
                    },
                    "nullable": True,
                },
            ]
        },
    ),
    (
        int | float | list[int],
        {"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "array", "items": {"type": "integer"}}]},
    ),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (dict, {"type": "object"}),
    (dict[str, Any], {"type": "object"}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (
        tuple[float, float],
        {
            "type": "array",
            "prefixItems": [{"type": "number"}] * 2,
            "items": {"type": "number"},
            "minItems": 2,
            "maxItems": 2,
        },
    ),
    (
        tuple[str, int],
        {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": False,
            "minItems": 2,
            "maxItems": 2,
        },
    ),
    (dt.date, {"type": "string", "format": "date"}),
    (dt.datetime, {"type": "string", "format": "date-time"}),
    (Annotated[str, "The query."], {"type": "string", "description": "The query."}),
    (
        Address,
        {
            "type": "object",
            "properties": {
                "street": {"type": "string", "description": "Street and number."},
                "zip": {"type": "string"},
            },
            "required": ["street"],
            "additionalProperties": False,
        },
    ),
    (
        Item,
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "What it is called."},
                "qty": {"type": "integer", "default": 1},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name"],
        },
    ),
    (
        Strict,
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "required": ["a"],
            "additionalProperties": False,
        },
    ),
    (
        Tree,
        {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["label"],
            "additionalProperties": False,
        },
    ),
]


@pytest.mark.parametrize(("hint", "golden"), GOLDEN_TYPES, ids=[repr(t) for t, _ in GOLDEN_TYPES])
def test_type_schema_golden(hint: Any, golden: dict[str, Any]) -> None:
    assert type_schema(hint) == golden


def test_unsupported_types_fail_at_decoration_with_the_parameter_named() -> None:
    with pytest.raises(
        TypeError, match=r"parameter 'x': cannot derive a JSON schema from the type <class 'complex'>"
    ):

        @tool
        def f(x: complex) -> None: ...

    with pytest.raises(TypeError, match=r"dict keys must be str"):
        type_schema(dict[int, str])
    with pytest.raises(TypeError, match=r"\*args cannot be given as JSON"):

        @tool
        def g(*args: int) -> None: ...


def test_function_schema_golden() -> None:
    @tool
    def get_weather(
        city: str,
        unit: Literal["celsius", "fahrenheit"] = "celsius",
        days: int | None = None,
        when: dt.date | None = None,
        color: Color = Color.RED,
        **extra: Any,
    ) -> dict[str, Any]:
        """Get the current weather.

        Uses the national weather service.

        Args:
            city: The city name,
                for example "Paris".
            unit (str): The temperature unit.
            days: How many days to forecast.

        Returns:
            The weather report.
        """
        return {}

    assert get_weather.name == "get_weather"
    assert get_weather.description == "Get the current weather.\n\nUses the national weather service."
    assert get_weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"description": 'The city name, for example "Paris".', "type": "string"},
            "unit": {
                "description": "The temperature unit.",
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "default": "celsius",
            },
            "days": {
                "description": "How many days to forecast.",
                "type": "integer",
                "nullable": True,
                "default": None,
            },
            "when": {"type": "string", "format": "date", "nullable": True, "default": None},
            "color": {"type": "string", "enum": ["red", "green"], "default": "red"},
        },
        "required": ["city"],
    }
    assert get_weather.spec == NamespaceSpec(name="functions", functions=(get_weather.function_spec,))


def test_function_without_parameters_renders_as_no_arguments() -> None:
    @tool
    def now() -> str:
        """The current time."""
        return "12:00"

    assert now.parameters is None
    assert now.function_spec.parameters is None
    assert now.call("now", "").content == "12:00"
    assert now.call("now", "{}").content == "12:00"
    with pytest.raises(ToolError, match=r"Additional properties are not allowed \('x' was unexpected\)"):
        now.call("now", '{"x": 1}')


# --- docstrings ------------------------------------------------------------------------------


def test_google_docstring() -> None:
    doc = parse_docstring(
        """Search the index.

        Longer text
        over two lines.

        Args:
            query (str): What to look for.
            limit: At most this many
                results, newest first.
            *tags: Ignored.

        Raises:
            ValueError: never.
        """
    )
    assert doc.description == "Search the index.\n\nLonger text\nover two lines."
    assert doc.params == {
        "query": "What to look for.",
        "limit": "At most this many results, newest first.",
        "tags": "Ignored.",
    }


def test_numpy_docstring() -> None:
    doc = parse_docstring(
        """Search the index.

        Parameters
        ----------
        query : str
            What to look for.
        limit, offset : int, optional
            Paging.

        Returns
        -------
        list
            Results.
        """
    )
    assert doc.description == "Search the index."
    assert doc.params == {"query": "What to look for.", "limit": "Paging.", "offset": "Paging."}


def test_rest_docstring() -> None:
    doc = parse_docstring(
        """Search the index.

        :param query: What to look for.
        :param int limit: At most this many
            results.
        :returns: Results.
        """
    )
    assert doc.description == "Search the index."
    assert doc.params == {"query": "What to look for.", "limit": "At most this many results."}


def test_no_docstring() -> None:
    @tool
    def f(a: int) -> int:
        return a

    assert f.description == ""
    assert f.parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }


def test_decorator_options_override_docstring() -> None:
    @tool(name="lookup", description="Look a word up.", timeout=3)
    def f(word: str) -> str:
        """Ignored."""
        return word.upper()

    assert (f.name, f.description, f.call_timeout) == ("lookup", "Look a word up.", 3)
    assert f.call("lookup", '{"word": "hi"}') == ToolOutput(author="functions.lookup", content="HI")
    assert f("plain") == "PLAIN"  # still callable as the function


# --- calls: conversion of arguments, results as text --------------------------------------


def test_arguments_are_converted_to_the_annotated_types() -> None:
    seen: dict[str, Any] = {}

    @tool
    def f(
        color: Color,
        level: Level,
        point: Point,
        points: list[Point],
        item: Item,
        pair: tuple[int, str],
        when: dt.date,
        ratio: float,
        maybe: Point | None = None,
        tags: set[str] | None = None,
    ) -> str:
        seen.update(locals())
        return "ok"

    body = json.dumps(
        {
            "color": "green",
            "level": 2,
            "point": {"x": 1, "y": 2},
            "points": [{"x": 3}],
            "item": {"name": "pen", "qty": 2},
            "pair": [1, "a"],
            "when": "2025-01-02",
            "ratio": 1,
            "maybe": {"x": 5.5},
            "tags": ["a", "a"],
        }
    )
    assert f.call("f", body).content == "ok"
    assert seen["color"] is Color.GREEN
    assert seen["level"] is Level.HIGH
    assert seen["point"] == Point(1, 2)
    assert seen["points"] == [Point(3)]
    assert seen["item"] == Item(name="pen", qty=2)
    assert seen["pair"] == (1, "a")
    assert seen["when"] == dt.date(2025, 1, 2)
    assert seen["ratio"] == 1.0 and isinstance(seen["ratio"], float)
    assert seen["maybe"] == Point(5.5)
    assert seen["tags"] == {"a"}


def test_conversion_failures_are_the_models_mistake() -> None:
    @tool
    def f(when: dt.date, item: Item | None = None) -> str:
        return "ok"

    with pytest.raises(ToolError) as e:
        f.call("f", '{"when": "tomorrow"}')
    assert (
        str(e.value) == "Invalid arguments for functions.f:\n- $.when: Invalid isoformat string: 'tomorrow'"
    )


def test_from_schema_passes_arguments_unconverted() -> None:
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
        "required": ["q"],
    }
    t = FunctionTool.from_schema("search", "Search things.", schema, lambda **kw: kw)
    assert t.function_spec.parameters == schema
    assert t.call("search", '{"q": "x", "n": 2}').content == '{"q": "x", "n": 2}'
    with pytest.raises(ToolError) as e:
        t.call("search", '{"n": 0}')
    assert str(e.value) == (
        "Invalid arguments for functions.search:\n- $.n: 0 is less than the minimum of 1\n- $: 'q' is a required property"
    )
    none = FunctionTool.from_schema("ping", "Ping.", None, lambda: "pong")
    assert none.function_spec.parameters is None
    assert none.call("ping", "").content == "pong"


def test_results_become_text() -> None:
    assert to_text("plain") == "plain"
    assert to_text({"a": [1, 2.5, True, None], "é": "ü"}) == '{"a": [1, 2.5, true, null], "é": "ü"}'
    assert to_text([Point(1, 2), Color.RED, dt.date(2025, 1, 2)]) == '[{"x": 1, "y": 2}, "red", "2025-01-02"]'
    assert to_text(Item(name="pen")) == '{"name": "pen", "qty": 1, "tags": []}'
    assert to_text(Point(1.5, 0)) == '{"x": 1.5, "y": 0}'
    assert to_text(None) == "null"
    assert to_text(42) == "42"
    assert to_text((1, "a")) == '[1, "a"]'

    class Custom:
        def __str__(self) -> str:
            return "custom!"

    assert to_text(Custom()) == "custom!"
    assert to_text({"obj": Custom()}) == '{"obj": "custom!"}'


def test_async_tool_call_and_acall() -> None:
    @tool
    async def add(a: int, b: int = 1) -> int:
        """Add two numbers."""
        await asyncio.sleep(0)
        return a + b

    assert add.is_async
    assert add.call("add", '{"a": 2}').content == "3"
    assert asyncio.run(add.acall("add", '{"a": 2, "b": 5}')).content == "7"

    @tool
    def sync_add(a: int) -> int:
        return a + 1

    assert asyncio.run(sync_add.acall("sync_add", '{"a": 1}')).content == "2"


def test_sync_call_of_an_async_tool_inside_a_running_loop() -> None:
    @tool
    async def double(a: int) -> int:
        return 2 * a

    async def main() -> str:
        return double.call("double", '{"a": 21}').content  # blocking call from inside a loop

    assert asyncio.run(main()) == "42"


# --- class-based, stateful tools ---------------------------------------------------------------


class Notes(Toolset):
    """A notebook the model can write to."""

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}

    @tool
    def add_note(self, title: str, text: str) -> str:
        """Store a note.

        Args:
            title: A short title.
            text: The note.
        """
        self.notes[title] = text
        return f"saved {title}"

    @tool
    async def list_notes(self) -> list[str]:
        """The titles of all notes."""
        return sorted(self.notes)


def test_toolset_keeps_state_per_instance() -> None:
    a, b = Notes(), Notes()
    assert [t.name for t in a.tools] == ["add_note", "list_notes"]
    assert a.spec.functions[0].parameters == {
        "type": "object",
        "properties": {
            "title": {"description": "A short title.", "type": "string"},
            "text": {"description": "The note.", "type": "string"},
        },
        "required": ["title", "text"],
        "additionalProperties": False,
    }
    assert a.spec.functions[1].parameters is None
    assert a.call("add_note", '{"title": "t1", "text": "hello"}').content == "saved t1"
    assert a.call("list_notes", "").content == '["t1"]'
    assert asyncio.run(b.acall("list_notes", "{}")).content == "[]"
    assert a.add_note("t2", "direct") == "saved t2"  # bound, callable as a method
    assert a.notes == {"t1": "hello", "t2": "direct"}
    with pytest.raises(
        ToolError, match=r"Unknown function 'nope'. Available: functions.add_note, functions.list_notes."
    ):
        a.call("nope", "{}")


def test_toolset_namespace() -> None:
    class Kv(Toolset):
        namespace = "kv"

        def __init__(self) -> None:
            self.data: dict[str, int] = {}

        @tool
        def put(self, key: str, value: int) -> None:
            self.data[key] = value

    kv = Kv()
    assert kv.spec.name == "kv" and not kv.spec.builtin
    assert kv.call("put", '{"key": "a", "value": 1}').author == "kv.put"
    assert kv.data == {"a": 1}


# --- rendering through openai-harmony --------------------------------------------------------


def to_harmony(ns: NamespaceSpec) -> h.ToolNamespaceConfig:
    return h.ToolNamespaceConfig(
        name=ns.name,
        description=ns.description,
        tools=[h.ToolDescription.new(f.name, f.description, parameters=f.parameters) for f in ns.functions],
    )


@pytest.fixture(scope="module")
def harmony() -> h.HarmonyEncoding:
    return h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)


def render_developer(harmony: h.HarmonyEncoding, dev: h.DeveloperContent) -> list[int]:
    conv = h.Conversation.from_messages([h.Message.from_role_and_content(h.Role.DEVELOPER, dev)])
    return harmony.render_conversation(conv)


@tool
def get_weather(
    location: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int | None = None
) -> str:
    """Gets the current weather in the provided location.

    Args:
        location: The city and state, e.g. San Francisco, CA
        unit: The temperature unit.
    """
    return "sunny"


@tool
def get_location() -> str:
    """Gets the location of the user."""
    return "Paris"


@tool
def plot(points: list[Point], style: str | list[str] = "line") -> str:
    """Plot points."""
    return "done"


RENDERED = """<|start|>developer<|message|># Instructions

Use the tools.

# Tools

## functions

namespace functions {

// Gets the current weather in the provided location.
type get_weather = (_: {
// The city and state, e.g. San Francisco, CA
location: string,
// The temperature unit.
unit?: "celsius" | "fahrenheit", // default: celsius
days?: number | null, // default: null
}) => any;

// Gets the location of the user.
type get_location = () => any;

// Plot points.
type plot = (_: {
points: {
    // Horizontal position.
    x: number,
    // Vertical position.
    y?: number, // default: 0.0
    }[],
// default: "line"
style?:
 | string
 | string[]
,
}) => any;

} // namespace functions<|end|>"""


def test_functions_namespace_renders_like_openai_harmony(harmony: h.HarmonyEncoding) -> None:
    from gptoss_agent.tools import Toolbox

    box = Toolbox([get_weather, get_location, plot])
    ns = box.functions
    assert ns is not None
    ours = render_developer(
        harmony, h.DeveloperContent.new().with_instructions("Use the tools.").with_tools(to_harmony(ns))
    )
    # The same tools written by hand as harmony's own ToolDescriptions.
    reference = (
        h.DeveloperContent.new()
        .with_instructions("Use the tools.")
        .with_function_tools(
            [
                h.ToolDescription.new(
                    "get_weather",
                    "Gets the current weather in the provided location.",
                    parameters={
                        "type": "object",
                        "properties": {
                            "location": {
                                "type": "string",
                                "description": "The city and state, e.g. San Francisco, CA",
                            },
                            "unit": {
                                "type": "string",
                                "enum": ["celsius", "fahrenheit"],
                                "description": "The temperature unit.",
                                "default": "celsius",
                            },
                            "days": {"type": "integer", "nullable": True, "default": None},
                        },
                        "required": ["location"],
                    },
                ),
                h.ToolDescription.new("get_location", "Gets the location of the user."),
                h.ToolDescription.new(
                    "plot",
                    "Plot points.",
                    parameters={
                        "type": "object",
                        "properties": {
                            "points": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "x": {"type": "number", "description": "Horizontal position."},
                                        "y": {
                                            "type": "number",
                                            "description": "Vertical position.",
                                            "default": 0.0,
                                        },
                                    },
                                    "required": ["x"],
                                },
                            },
                            "style": {
                                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                "default": "line",
                            },
                        },
                        "required": ["points"],
                    },
                ),
            ]
        )
    )
    assert ours == render_developer(harmony, reference)
    assert harmony.decode(ours) == RENDERED


def test_rendered_tokens_match_our_tokenizer(harmony: h.HarmonyEncoding, enc: Any) -> None:
    """The rendered text tokenises the same with our o200k_harmony encoding."""
    from gptoss_agent.tools import Toolbox

    ns = Toolbox([get_weather, get_location, plot]).functions
    assert ns is not None
    ours = render_developer(
        harmony, h.DeveloperContent.new().with_instructions("Use the tools.").with_tools(to_harmony(ns))
    )
    assert enc.encode(RENDERED, allowed_special="all") == ours


def test_methods_of_a_plain_class_bind_too() -> None:
    class Greeter:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        @tool
        def greet(self, name: str) -> str:
            """Greet someone."""
            return f"{self.greeting}, {name}!"

    hello, hi = Greeter("Hello"), Greeter("Hi")
    assert hello.greet.call("greet", '{"name": "Ada"}').content == "Hello, Ada!"
    assert hi.greet.call("greet", '{"name": "Ada"}').content == "Hi, Ada!"
    assert Greeter.greet.parameters == hello.greet.parameters  # self is not a parameter
    with pytest.raises(TypeError, match="is a method: call it through an instance"):
        Greeter.greet.call("greet", '{"name": "Ada"}')


def test_pydantic_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pydantic", None)  # as if it were not installed

    @tool
    def f(p: Point, tags: list[str] | None = None) -> Point:
        return p

    assert f.call("f", '{"p": {"x": 1}}').content == '{"x": 1.0, "y": 0.0}'


def test_union_branches_are_converted() -> None:
    @tool
    def f(target: Point | list[Point] | Color | None = None) -> str:
        return repr(target)

    assert f.call("f", '{"target": {"x": 1}}').content == "Point(x=1.0, y=0.0)"
    assert f.call("f", '{"target": [{"x": 2, "y": 3}]}').content == "[Point(x=2.0, y=3.0)]"
    assert f.call("f", '{"target": "red"}').content == "<Color.RED: 'red'>"
    assert f.call("f", '{"target": null}').content == "None"
