"""Toolbox: routing, validation before the call, and every mistake rendered to the model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Literal

import jsonschema
import openai_harmony as h
import pytest
from gptoss_agent.sandbox.base import SandboxError
from gptoss_agent.tools import (
    FunctionSpec,
    FunctionTool,
    NamespaceSpec,
    Tool,
    Toolbox,
    ToolError,
    ToolOutput,
    Toolset,
    tool,
)


@tool
def get_weather(city: str, days: int = 1, unit: Literal["c", "f"] = "c") -> dict[str, Any]:
    """Weather for a city.

    Args:
        city: The city.
        days: Forecast length.
    """
    return {"city": city, "days": days, "unit": unit}


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


@tool
def refuse(reason: str) -> str:
    """Always refuses."""
    raise ToolError(f"Refused: {reason}")


class FakeBrowser:
    """A builtin namespace with harmony's own browser schemas (the real Browser lives elsewhere)."""

    def __init__(self) -> None:
        config = h.ToolNamespaceConfig.browser()
        self.calls: list[tuple[str, str]] = []
        self.closed = False
        self._spec = NamespaceSpec(
            name="browser",
            description=config.description,
            functions=tuple(
                FunctionSpec(name=t.name, description=t.description, parameters=t.parameters)
                for t in config.tools
            ),
            builtin=True,
        )

    @property
    def spec(self) -> NamespaceSpec:
        return self._spec

    def call(self, function: str, body: str) -> ToolOutput:
        self.calls.append((function, body))
        return ToolOutput(author=f"browser.{function}", content=f"{function}: {json.loads(body or '{}')}")

    async def acall(self, function: str, body: str) -> ToolOutput:
        return self.call(function, body)

    def close(self) -> None:
        self.closed = True


class FakePython:
    """A free-form builtin (the body is code, not JSON)."""

    spec = NamespaceSpec(name="python", description="Runs code.", builtin=True)

    def call(self, function: str, body: str) -> ToolOutput:
        return ToolOutput(author="python", content=f"ran {body!r} as {function}")

    async def acall(self, function: str, body: str) -> ToolOutput:
        return self.call(function, body)


@pytest.fixture
def box() -> Toolbox:
    return Toolbox([FakeBrowser(), FakePython(), get_weather, divide, refuse], timeout=5)


# --- routing --------------------------------------------------------------------------------


def test_fakes_are_tools() -> None:
    assert (
        isinstance(FakeBrowser(), Tool) and isinstance(FakePython(), Tool) and isinstance(get_weather, Tool)
    )


@pytest.mark.parametrize(
    ("recipient", "name", "function"),
    [
        ("functions.get_weather", "functions.get_weather", "get_weather"),
        ("get_weather", "functions.get_weather", "get_weather"),
        (" functions.get_weather ", "functions.get_weather", "get_weather"),
        ("functions.get_weather <|constrain|>json", "functions.get_weather", "get_weather"),
        ("functions.get_weather<|constrain|>json", "functions.get_weather", "get_weather"),
        ("browser.search", "browser.search", "search"),
        ("functions.browser.search", "browser.search", "search"),
        ("search", "browser.search", "search"),
        ("functions.search", "browser.search", "search"),
        ("to=browser.find", "browser.find", "find"),
        ("python", "python", "python"),
        ("python.exec", "python", "python"),
        ("python.run", "python", "python"),
        ("functions.python", "python", "python"),
        ("functions.python.exec", "python", "python"),
    ],
)
def test_route_normalises_recipients(box: Toolbox, recipient: str, name: str, function: str) -> None:
    route = box.route(recipient)
    assert route is not None
    assert (route.name, route.function) == (name, function)


def test_names_and_namespaces(box: Toolbox) -> None:
    assert box.names == [
        "browser.search",
        "browser.open",
        "browser.find",
        "python",
        "functions.get_weather",
        "functions.divide",
        "functions.refuse",
    ]
    assert [ns.name for ns in box.builtin_namespaces] == ["browser", "python"]
    functions = box.functions
    assert functions is not None and functions.name == "functions" and not functions.builtin
    assert [f.name for f in functions.functions] == ["get_weather", "divide", "refuse"]
    assert box.developer_namespaces == [functions]
    assert Toolbox([FakePython()]).functions is None


def test_plain_callables_are_wrapped_and_toolsets_merge_into_functions() -> None:
    def shout(text: str) -> str:
        """Upper-case text."""
        return text.upper()

    class Counter(Toolset):
        def __init__(self) -> None:
            self.n = 0

        @tool
        def bump(self) -> int:
            """Add one."""
            self.n += 1
            return self.n

    box = Toolbox([shout, Counter()])
    assert box.names == ["functions.shout", "functions.bump"]
    assert box.dispatch("functions.shout", '{"text": "hi"}').content == "HI"
    assert box.dispatch("functions.bump", "").content == "1"
    assert box.dispatch("bump", "{}").content == "2"


def test_duplicate_names_and_bad_schemas_are_the_callers_bug() -> None:
    with pytest.raises(ValueError, match=r"tool names already registered: functions.get_weather"):
        Toolbox([get_weather, FunctionTool.from_schema("get_weather", "x", None, lambda: 1)])
    bad = FunctionTool.from_schema.__func__  # type: ignore[attr-defined]
    with pytest.raises(jsonschema.SchemaError):
        bad(
            FunctionTool,
            "f",
            "x",
            {"type": "object", "properties": {"a": {"type": "nonsense"}}},
            lambda **kw: 1,
        )


# --- the model's mistakes, as the model reads them -----------------------------------------------


def test_unknown_tool_lists_the_tools(box: Toolbox) -> None:
    out = box.dispatch("functions.get_wether", "{}")
    assert out.is_error and out.metadata == {"error": "unknown_tool"}
    assert out.author == "functions.get_wether"
    assert out.content == (
        "Unknown tool 'functions.get_wether'. Did you mean functions.get_weather? Available tools: browser.search, "
        "browser.open, browser.find, python, functions.get_weather, functions.divide, functions.refuse."
    )
    out = box.dispatch("container.exec", '{"cmd": ["ls"]}')
    assert out.content == (
        "Unknown tool 'container.exec'. Available tools: browser.search, browser.open, browser.find, python, "
        "functions.get_weather, functions.divide, functions.refuse."
    )
    assert Toolbox().dispatch("x", "").content == "Unknown tool 'x'. No tools are available."


def test_invalid_json_says_where(box: Toolbox) -> None:
    out = box.dispatch("functions.get_weather", '{"city": "Paris",, "days": 2}')
    assert out.is_error and out.metadata == {"error": "invalid_json"}
    assert out.content == (
        "Invalid JSON in the arguments for functions.get_weather: Expecting property name enclosed in double quotes "
        "at line 1 column 18 (char 17). Send the arguments as one JSON object."
    )
    out = box.dispatch("functions.get_weather", '{"city": "Paris"')
    assert out.content == (
        "Invalid JSON in the arguments for functions.get_weather: Expecting ',' delimiter at line 1 column 17 "
        "(char 16). Send the arguments as one JSON object."
    )
    out = box.dispatch("functions.get_weather", '["Paris"]')
    assert out.content == "Invalid arguments for functions.get_weather: expected a JSON object, got an array."


def test_schema_violations_list_each_path(box: Toolbox) -> None:
    out = box.dispatch("functions.get_weather", '{"days": "three", "unit": "k", "extra": 1}')
    assert out.is_error and out.metadata == {"error": "invalid_arguments"}
    assert out.content == (
        "Invalid arguments for functions.get_weather:\n"
        "- $.days: 'three' is not of type 'integer'\n"
        "- $.unit: 'k' is not one of ['c', 'f']\n"
        "- $: 'city' is a required property\n"
        "- $: Additional properties are not allowed ('extra' was unexpected)"
    )


def test_builtin_arguments_are_validated_before_the_call(box: Toolbox) -> None:
    browser = box.tools[0]
    assert isinstance(browser, FakeBrowser)
    out = box.dispatch("browser.search", '{"query": 42}')
    assert out.content == "Invalid arguments for browser.search:\n- $.query: 42 is not of type 'string'"
    assert browser.calls == []  # never reached the tool
    out = box.dispatch("browser.open", '{"id": "https://example.com", "loc": 10}')
    assert not out.is_error and browser.calls == [("open", '{"id": "https://example.com", "loc": 10}')]


def test_nested_paths_and_nullable() -> None:
    @tool
    def order(items: list[dict[str, int]], note: str | None = None) -> str:
        return "ok"

    box = Toolbox([order])
    assert box.dispatch("functions.order", '{"items": [{"a": 1}], "note": null}').content == "ok"
    out = box.dispatch("functions.order", '{"items": [{"a": 1}, {"b": "x"}], "note": 3}')
    assert out.content == (
        "Invalid arguments for functions.order:\n"
        "- $.items[1].b: 'x' is not of type 'integer'\n"
        "- $.note: 3 is not valid under any of the given schemas"
    )


def test_exception_inside_a_tool_gives_type_message_and_traceback_tail(box: Toolbox) -> None:
    out = box.dispatch("functions.divide", '{"a": 1, "b": 0}')
    assert out.is_error and out.metadata == {"error": "exception"}
    lines = out.content.splitlines()
    assert lines[0] == "functions.divide raised ZeroDivisionError: float division by zero"
    assert lines[1] == "Traceback (most recent call last):"
    assert (
        lines[2].startswith('  File "') and lines[2].endswith(", in divide") and "test_toolbox.py" in lines[2]
    )
    assert lines[3] == "    return a / b"
    assert len(lines) == 4  # the toolbox's own frames are left out


def test_tool_error_message_goes_back_as_is(box: Toolbox) -> None:
    out = box.dispatch("functions.refuse", '{"reason": "no"}')
    assert (out.content, out.is_error, out.metadata) == ("Refused: no", True, {"error": "tool_error"})


def test_sandbox_failures_propagate() -> None:
    @tool
    def broken() -> str:
        raise SandboxError("docker engine not reachable")

    with pytest.raises(SandboxError, match="docker engine not reachable"):
        Toolbox([broken]).dispatch("functions.broken", "")


# --- results --------------------------------------------------------------------------------


def test_results_are_serialised(box: Toolbox) -> None:
    out = box.dispatch("functions.get_weather", '{"city": "Zürich", "days": 2}')
    assert out == ToolOutput(
        author="functions.get_weather",
        content='{"city": "Zürich", "days": 2, "unit": "c"}',
        duration=out.duration,
    )
    assert out.duration > 0
    assert box.dispatch("functions.divide", '{"a": 1, "b": 4}').content == "0.25"


def test_long_results_are_truncated_with_a_note() -> None:
    @tool
    def dump(n: int) -> str:
        return "".join(chr(ord("a") + i % 26) for i in range(n))

    box = Toolbox([dump], max_chars=30)
    out = box.dispatch("functions.dump", '{"n": 100}')
    assert out.content == (
        "abcdefghijklmnopqrst\n\n[... 70 of 100 characters cut here; the output was too long ...]\n\nmnopqrstuv"
    )
    assert out.metadata == {"truncated_chars": 70}
    assert box.dispatch("functions.dump", '{"n": 30}').content == "abcdefghijklmnopqrstuvwxyzabcd"
    assert len(Toolbox([dump], max_chars=None).dispatch("functions.dump", '{"n": 50000}').content) == 50000


def test_free_form_tools_get_the_raw_body(box: Toolbox) -> None:
    assert box.dispatch("python.exec", "print(1)\n").content == "ran 'print(1)\\n' as python"


# --- timeouts -------------------------------------------------------------------------------


def test_hung_sync_tool_times_out() -> None:
    release = threading.Event()

    @tool(timeout=0.5)
    def hang() -> str:
        release.wait(30)
        return "late"

    box = Toolbox([hang])
    try:
        start = time.perf_counter()
        out = box.dispatch("functions.hang", "")
        assert time.perf_counter() - start < 2.0
        assert (out.content, out.is_error, out.metadata) == (
            "functions.hang did not finish within 0.5 seconds and was abandoned "
            "(it may still be running; its result will not be seen).",
            True,
            {"error": "timeout"},
        )
        # the abandoned call still runs: the tool is not entered again (it waits, then says so)
        start = time.perf_counter()
        out = asyncio.run(box.adispatch("functions.hang", ""))
        assert time.perf_counter() - start < 2.0
        assert out.metadata == {"error": "busy"} and "still busy with an earlier call" in out.content
    finally:
        release.set()


def test_hung_async_tool_is_cancelled() -> None:
    cancelled = threading.Event()

    @tool
    async def sleepy(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "woke"

    box = Toolbox([sleepy], timeouts={"functions.sleepy": 0.3})
    start = time.perf_counter()
    out = box.dispatch("functions.sleepy", '{"seconds": 30}')
    assert time.perf_counter() - start < 2.0
    assert out.content == "functions.sleepy did not finish within 0.3 seconds and was stopped."
    assert cancelled.wait(2)
    assert box.dispatch("functions.sleepy", '{"seconds": 0}').content == "woke"


def test_tool_that_ignores_cancellation_is_abandoned_by_sync_dispatch() -> None:
    release = threading.Event()

    class Stubborn:
        spec = NamespaceSpec(name="stubborn", description="Never yields.", builtin=True)
        call_timeout = 0.2

        def call(self, function: str, body: str) -> ToolOutput:
            raise AssertionError("the toolbox uses acall")

        async def acall(self, function: str, body: str) -> ToolOutput:
            release.wait(30)  # blocks the event loop: cancellation cannot reach it
            return ToolOutput(author="stubborn", content="late")

    try:
        start = time.perf_counter()
        out = Toolbox([Stubborn()]).dispatch("stubborn", "")
        assert time.perf_counter() - start < 5.0
        assert out.content == (
            "stubborn did not finish within 0.2 seconds and was abandoned "
            "(it may still be running; its result will not be seen)."
        )
    finally:
        release.set()


def test_a_timeout_raised_by_the_tool_itself_is_an_exception() -> None:
    @tool
    def flaky() -> str:
        raise TimeoutError("upstream took too long")

    out = Toolbox([flaky]).dispatch("functions.flaky", "")
    assert out.content.startswith("functions.flaky raised TimeoutError: upstream took too long\n")


# --- async ----------------------------------------------------------------------------------


def test_adispatch_runs_calls_concurrently() -> None:
    spans: list[tuple[float, float]] = []

    @tool
    async def wait(seconds: float) -> str:
        t = time.perf_counter()
        await asyncio.sleep(seconds)
        spans.append((t, time.perf_counter()))
        return "done"

    @tool
    def block(seconds: float) -> str:
        t = time.perf_counter()
        time.sleep(seconds)
        spans.append((t, time.perf_counter()))
        return "done"

    box = Toolbox([wait, block])

    async def main() -> list[ToolOutput]:
        calls = [box.adispatch("functions.wait", '{"seconds": 0.3}') for _ in range(5)]
        calls += [box.adispatch("functions.block", '{"seconds": 0.3}') for _ in range(3)]
        return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    assert [o.content for o in outs] == ["done"] * 8
    # concurrent means all eight were running at once (no bound on how long a loaded machine took)
    assert len(spans) == 8 and max(a for a, _ in spans) < min(b for _, b in spans), spans


def test_dispatch_inside_a_running_loop() -> None:
    box = Toolbox([get_weather])

    async def main() -> str:
        return box.dispatch("functions.get_weather", '{"city": "Oslo"}').content

    assert asyncio.run(main()) == '{"city": "Oslo", "days": 1, "unit": "c"}'


def test_sync_and_async_dispatch_agree(box: Toolbox) -> None:
    cases = [
        ("functions.get_weather", '{"city": "Rome"}'),
        ("functions.get_weather", "{"),
        ("functions.nope", "{}"),
        ("functions.refuse", '{"reason": "x"}'),
        ("browser.find", '{"pattern": "x"}'),
    ]
    for recipient, body in cases:
        a, b = box.dispatch(recipient, body), asyncio.run(box.adispatch(recipient, body))
        assert (a.author, a.content, a.is_error, a.metadata) == (b.author, b.content, b.is_error, b.metadata)


def test_close_closes_tools() -> None:
    browser = FakeBrowser()
    with Toolbox([browser, get_weather]):
        pass
    assert browser.closed
