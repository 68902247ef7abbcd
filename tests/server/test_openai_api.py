"""The OpenAI-compatible server driven by the official ``openai`` SDK against a real uvicorn server
on 127.0.0.1, the model scripted in gpt-oss's own output forms where its choice must be fixed."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from gptoss_agent.agent.scripted import ScriptedEngine
from gptoss_agent.model.tokenizer import load_tokenizer
from gptoss_agent.server import create_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from websim import web_fixture  # noqa: F401  (the `web` fixture: a local site and search APIs)

ENC = load_tokenizer()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
RESPONSES_WEATHER = {"type": "function", **WEATHER_TOOL["function"]}

CALL = (
    "<|channel|>analysis<|message|>I need the weather in Paris, so I call the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city":"Paris"}<|call|>'
)


def decode(prompt) -> str:
    return ENC.decode(list(prompt))


def after_result(prompt) -> str:
    """The second step: it answers from the tool result, and says whether its reasoning survived."""
    text = decode(prompt)
    kept = "I need the weather in Paris" in text
    result = text.rsplit("<|start|>functions.get_weather to=assistant", 1)[-1]
    return (
        "<|channel|>analysis<|message|>The tool answered.<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>reasoning kept: {kept}; {result.split('<|message|>', 1)[-1].split('<|end|>')[0]}<|return|>"
    )


@contextmanager
def serving(engine, **options) -> Iterator[str]:
    app = create_app(engine, enc=ENC, **options)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[..., openai.OpenAI]]:
    """``serve(engine, **create_app options)`` -> an OpenAI client of a live server."""
    stack = []

    def start(engine, key: str = "sk-test", **options) -> openai.OpenAI:
        cm = serving(engine, **options)
        url = cm.__enter__()
        stack.append(cm)
        return openai.OpenAI(base_url=url, api_key=key, max_retries=0)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


# -- Chat Completions ------------------------------------------------------------------------------


def test_chat_answer_with_reasoning(serve):
    client = serve(
        ScriptedEngine(
            [
                "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
            ]
        )
    )
    out = client.chat.completions.create(model="gpt-oss", messages=[{"role": "user", "content": "2+2?"}])
    choice = out.choices[0]
    assert choice.message.content == "4" and choice.finish_reason == "stop"
    assert choice.message.model_extra["reasoning_content"] == "Easy."
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0


def test_chat_streams_reasoning_then_content(serve):
    client = serve(
        ScriptedEngine(
            [
                "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hello there<|return|>"
            ]
        )
    )
    stream = client.chat.completions.create(
        model="gpt-oss",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    content, reasoning, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            finish = choice.finish_reason or finish
    assert (content, reasoning, finish) == ("Hello there", "Think.", "stop")
    assert usage is not None and usage.completion_tokens > 0


def test_chat_function_call_round_trip_reinjects_reasoning(serve):
    """A stateless client sends the call back without its reasoning; the model still sees it."""
    engine = ScriptedEngine([CALL, after_result])
    client = serve(engine)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="gpt-oss", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})  # no reasoning
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'})
    second = client.chat.completions.create(model="gpt-oss", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == 'reasoning kept: True; {"temp": 21}'
    # the re-injected messages are the generated tokens verbatim: the second prompt extends the first
    assert engine.prompts[1][: len(engine.prompts[0])] == engine.prompts[0]
    assert second.usage.prompt_tokens_details.cached_tokens >= len(engine.prompts[0]) - 1


def test_chat_tool_choice_and_format_reach_the_agent(serve):
    seen = {}

    def answer(prompt):
        seen["prompt"] = decode(prompt)
        return '<|channel|>final<|message|>{"n": 3}<|return|>'

    client = serve(ScriptedEngine([answer]))
    out = client.chat.completions.create(
        model="gpt-oss",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "three"}],
        reasoning_effort="high",
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "n",
                "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        },
    )
    assert json.loads(out.choices[0].message.content) == {"n": 3}
    assert "Reasoning: high" in seen["prompt"] and "Be brief." in seen["prompt"]
    assert "# Response Formats" in seen["prompt"]


# -- Responses ---------------------------------------------------------------------------------


def test_responses_create_and_retrieve(serve):
    client = serve(
        ScriptedEngine(
            [
                "<|channel|>analysis<|message|>Sum.<|end|><|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"
            ]
        )
    )
    out = client.responses.create(model="gpt-oss", input="2+2?", reasoning={"effort": "low"})
    assert out.status == "completed" and out.output_text == "The answer is 4."
    kinds = [item.type for item in out.output]
    assert kinds == ["reasoning", "message"]
    assert out.output[0].content[0].text == "Sum."
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0
    again = client.responses.retrieve(out.id)
    assert again.output_text == "The answer is 4." and again.id == out.id
    client.responses.delete(out.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(out.id)


def test_responses_stream_events_in_order(serve):
    client = serve(
        ScriptedEngine(
            [
                "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Done here.<|return|>"
            ]
        )
    )
    types, text = [], ""
    with client.responses.stream(model="gpt-oss", input="go") as stream:
        for event in stream:
            types.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    order = [
        t
        for i, t in enumerate(types)
        if t.startswith(("response.output_", "response.reasoning_text", "response.content_part"))
        and not (t.endswith(".delta") and types[i - 1] == t)
    ]  # one delta per token: count runs
    assert order == [
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert text == "Done here." and final.output_text == "Done here."


def test_responses_function_call_with_previous_response_id(serve):
    engine = ScriptedEngine([CALL, after_result])
    client = serve(engine)
    first = client.responses.create(model="gpt-oss", input="Weather in Paris?", tools=[RESPONSES_WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model="gpt-oss",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}],
        tools=[RESPONSES_WEATHER],
    )
    assert second.output_text == 'reasoning kept: True; {"temp": 21}'
    assert second.usage.input_tokens_details.cached_tokens >= len(engine.prompts[0]) - 1


def test_responses_stateless_round_trip(serve):
    """``store: false`` clients send the whole input back, the call as a function_call item."""
    client = serve(ScriptedEngine([CALL, after_result]))
    first = client.responses.create(
        model="gpt-oss", input="Weather in Paris?", tools=[RESPONSES_WEATHER], store=False
    )
    call = first.output[-1]
    assert call.type == "function_call"
    second = client.responses.create(
        model="gpt-oss",
        store=False,
        tools=[RESPONSES_WEATHER],
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "reasoning kept: True; sunny"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_code_interpreter_runs_on_the_server(serve):
    engine = ScriptedEngine(
        [
            "<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant<|channel|>analysis to=python code<|message|>x = 6 * 7\nprint(x)<|call|>",
            after_python,
            "<|channel|>analysis to=python code<|message|>x + 1<|call|>",
            after_python,
        ]
    )
    client = serve(engine, tools=["python"])
    first = client.responses.create(
        model="gpt-oss", input="6*7?", tools=[{"type": "code_interpreter", "container": {"type": "auto"}}]
    )
    ci = next(item for item in first.output if item.type == "code_interpreter_call")
    assert ci.code.startswith("x = 6 * 7") and "42" in ci.outputs[0].logs
    assert first.output_text == "python said 42"
    # the same conversation keeps its sandbox: x is still defined
    second = client.responses.create(
        model="gpt-oss",
        input="and plus one?",
        previous_response_id=first.id,
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
    )
    assert second.output_text == "python said 43"


def test_web_search_runs_on_the_server_and_cites(serve, web):
    """The browser searches and opens a page of a local site; the answer's citation becomes a
    ``url_citation`` annotation pointing at that page."""
    engine = ScriptedEngine(
        [
            "<|channel|>analysis<|message|>Search it.<|end|><|start|>assistant<|channel|>analysis to=browser.search code"
            '<|message|>{"query": "tidal turbines"}<|call|>',
            '<|channel|>analysis to=browser.open code<|message|>{"id": 0}<|call|>',
            "<|channel|>final<|message|>Record output 【1†L1-L2】.<|return|>",
        ]
    )
    client = serve(engine, tools=["browser"], builtins={"browser": lambda: web.browser("searxng", enc=ENC)})
    out = client.responses.create(model="gpt-oss", input="Any tidal news?", tools=[{"type": "web_search"}])
    calls = [item for item in out.output if item.type == "web_search_call"]
    assert [c.action.type for c in calls] == ["search", "open_page"] and calls[
        0
    ].action.query == "tidal turbines"
    message = out.output[-1]
    [annotation] = message.content[0].annotations
    assert annotation.type == "url_citation" and annotation.url == "http://news.test/articles/tide-energy"
    assert message.content[0].text[annotation.start_index : annotation.end_index] == "【1†L1-L2】"


def after_python(prompt) -> str:
    result = (
        decode(prompt)
        .rsplit("<|start|>python to=assistant", 1)[-1]
        .split("<|message|>", 1)[-1]
        .split("<|end|>")[0]
    )
    return f"<|channel|>final<|message|>python said {result.strip()}<|return|>"


# -- errors --------------------------------------------------------------------------------------


def test_bad_requests_name_the_field(serve):
    client = serve(ScriptedEngine([]))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-oss", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gpt-oss", input="x", tools=[{"type": "code_interpreter"}])
    assert "not enabled" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-oss",
            messages=[{"role": "user", "content": "x"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-oss", input="x", previous_response_id="resp_missing")


def test_api_key_is_enforced(serve):
    good = serve(ScriptedEngine([]), key="sk-right", api_key="sk-right")
    bad = openai.OpenAI(base_url=str(good.base_url), api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert [m.id for m in good.models.list()] == ["gpt-oss"]
    assert httpx.get(str(good.base_url).replace("/v1/", "/health")).json() == {"status": "ok"}


def test_malformed_model_output_is_not_a_500(serve):
    """Harmony the model broke goes back to it; it then answers; the client never sees the markup."""
    client = serve(
        ScriptedEngine(["<|channel|>final to=<|message|>oops", "<|channel|>final<|message|>fixed<|return|>"])
    )
    out = client.chat.completions.create(model="gpt-oss", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "fixed"
    broken = serve(ScriptedEngine(["not harmony at all"], repeat_last=True), max_steps=2)
    result = broken.responses.create(model="gpt-oss", input="x")
    assert result.status == "incomplete" and "<|" not in (result.output_text or "")


def test_the_agents_sdk_runs_its_own_function_tool_through_the_server(serve):
    """The OpenAI Agents SDK, pointed at the server through ``OpenAIResponsesModel``: the model
    calls the SDK agent's tool, the SDK runs it and sends the result back, the model answers."""
    import agents

    agents.set_tracing_disabled(True)
    client = serve(ScriptedEngine([CALL, after_result]))

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"sunny in {city}"

    model = agents.OpenAIResponsesModel(
        model="gpt-oss", openai_client=openai.AsyncOpenAI(base_url=str(client.base_url), api_key="sk-test")
    )
    agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model)
    result = agents.Runner.run_sync(agent, "Weather in Paris?")
    assert result.final_output == "reasoning kept: True; sunny in Paris"
