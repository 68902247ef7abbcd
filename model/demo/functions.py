"""Function tools with schemas made up at random, and conversations that call them.

A function is a topic (``hotel price``) with a verb (``get_hotel_price``, ``lookup_hotel_price``),
a description, and one to three parameters drawn from a pool (names, JSON types, descriptions,
sometimes an enum or an optional flag). The user asks about the topic with the parameter values
in the question; the model calls the declared function with those values as JSON, reads the
result, and answers with it. The ``heldout`` split holds the function names the ``train`` split
never calls, and question phrasings it never reads.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gptoss_agent.model.demo.data import Conversation, Setting, _pick, noisy
from gptoss_agent.model.demo.render import Step, assistant, tool_message

__all__ = ["RandomFunction", "arguments_conversation", "function_conversation", "random_functions"]

CITIES = [
    "Paris", "Lyon", "Berlin", "Madrid", "Rome", "Tokyo", "Osaka", "Lima", "Cairo", "Oslo", "Dublin",
    "Prague", "Vienna", "Lisbon", "Seoul", "Toronto", "Chicago", "Denver", "Boston", "Austin", "Nairobi",
    "Mumbai", "Sydney", "Perth", "Quito", "Hanoi", "Zurich", "Geneva", "Warsaw", "Athens",
]  # fmt: skip
COUNTRIES = ["France", "Japan", "Peru", "Egypt", "Norway", "Kenya", "Chile", "Spain", "Italy", "Canada", "Brazil", "India"]
PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Maria Lopez", "John Smith", "Li Wei", "Amara Okafor", "Sven Berg"]
LANGUAGES = ["French", "German", "Spanish", "Japanese", "Italian", "Dutch", "Korean"]
WORDS = ["solar panels", "jazz history", "bread recipes", "rust crates", "mountain bikes", "chess openings", "tea"]


@dataclass(frozen=True)
class _Param:
    names: tuple[str, ...]
    type: str
    describe: str
    value: Callable[[random.Random], Any]
    phrase: tuple[str, ...]  # how a question mentions the value
    enum: tuple[str, ...] = ()


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2024, 2027)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _letters(n: int) -> Callable[[random.Random], str]:
    return lambda rng: "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n))


_PARAMS = [
    _Param(("city", "location", "city_name", "place"), "string", "The city, e.g. Paris.", lambda r: r.choice(CITIES), ("in {v}", "for {v}")),
    _Param(("country", "country_name", "nation"), "string", "The country name.", lambda r: r.choice(COUNTRIES), ("in {v}", "for {v}")),
    _Param(("date", "day", "on_date"), "string", "The date as YYYY-MM-DD.", _date, ("on {v}", "for {v}")),
    _Param(("year",), "integer", "The year.", lambda r: r.randint(1950, 2030), ("in {v}", "for the year {v}")),
    _Param(("limit", "count", "max_results", "n"), "integer", "How many results to return.", lambda r: r.randint(1, 50), ("with a limit of {v}", "(top {v})")),
    _Param(("amount", "value", "quantity"), "number", "The amount.", lambda r: round(r.uniform(1, 5000), r.choice([0, 2])), ("of {v}", "for an amount of {v}")),
    _Param(("currency", "currency_code"), "string", "Currency code.", lambda r: r.choice(["USD", "EUR", "GBP", "JPY", "CHF"]), ("in {v}",), ("USD", "EUR", "GBP", "JPY", "CHF")),
    _Param(("ticker", "symbol", "stock_symbol"), "string", "Ticker symbol.", _letters(4), ("for {v}", "for ticker {v}")),
    _Param(("name", "person", "full_name"), "string", "The person's full name.", lambda r: r.choice(PEOPLE), ("for {v}", "of {v}")),
    _Param(("order_id", "id", "reference"), "integer", "The identifier.", lambda r: r.randint(10000, 9999999), ("for order {v}", "for number {v}", "with id {v}")),
    _Param(("airport", "airport_code", "code"), "string", "IATA airport code.", _letters(3), ("at {v}", "for airport {v}")),
    _Param(("language", "lang"), "string", "The language.", lambda r: r.choice(LANGUAGES), ("in {v}",)),
    _Param(("query", "keyword", "topic"), "string", "What to look for.", lambda r: r.choice(WORDS), ("about {v}", "on {v}")),
    _Param(("unit", "units"), "string", "Unit system.", lambda r: r.choice(["metric", "imperial"]), ("in {v} units",), ("metric", "imperial")),
]  # fmt: skip
_CONFLICTS = {("city", "country"), ("country", "city")}

_TOPICS = [
    "weather", "forecast", "population", "stock price", "exchange rate", "flight status", "order status",
    "shipping cost", "hotel price", "train schedule", "air quality", "time zone", "tax rate",
    "account balance", "delivery date", "book rating", "movie rating", "restaurant rating", "parking fee",
    "humidity", "sunrise time", "elevation", "traffic level", "fuel price", "rent price", "salary estimate",
    "uv index", "tide level", "ticket price", "museum hours", "calorie count", "sleep score", "exam score",
    "bus delay", "package weight", "wind speed", "rainfall", "store hours", "insurance quote", "credit score",
]  # fmt: skip
_VERBS = ["get", "fetch", "lookup", "find", "query", "check", "read", "load"]
_SUFFIXES = ["lookup", "info", "data", "report", "api", "service", "tool", "search"]
_DESCRIBE = [
    "Get the {topic} for the given inputs.", "Returns the current {topic}.", "Look up the {topic}.",
    "Fetches the {topic} from the database.", "Find the {topic}.", "Checks the {topic} and returns it.",
]  # fmt: skip

_FRAMES = [
    "What is the {topic} {p}?", "Get me the {topic} {p}.", "Can you check the {topic} {p}?",
    "I need the {topic} {p}.", "Look up the {topic} {p}, please.", "{topic} {p}?", "Tell me the {topic} {p}.",
    "Find the {topic} {p}.", "Please fetch the {topic} {p}.", "What's the current {topic} {p}?",
    "Could you find out the {topic} {p}?", "Check the {topic} {p}.", "Quick question: what is the {topic} {p}?",
    "Do you know the {topic} {p}?", "Show me the {topic} {p}.", "Report the {topic} {p}.",
    "Need the {topic} {p} asap.", "Use the tool to get the {topic} {p}.", "Give me the {topic} {p}.",
    "Retrieve the {topic} {p}.", "hey whats the {topic} {p}", "I'm curious about the {topic} {p}.",
    "Let me know the {topic} {p}.", "Any idea what the {topic} is {p}?", "Please tell me the {topic} {p}.",
    "Lookup: {topic} {p}", "How about the {topic} {p}?", "Fetch the {topic} {p}.",
    "What does the tool say the {topic} is {p}?", "Can I get the {topic} {p}?",
]  # fmt: skip
_LOW = ["Call {name}.", "Use {name}."]
_MEDIUM = ["The user wants the {topic} {p}. Use {name}.", "Need the {topic} {p}. The tool {name} gives it."]
_HIGH = [
    "The user asks for the {topic} {p}. The developer declared {name}, which returns the {topic}. "
    "I should call it with the values from the question, then report what it returns.",
    "We need the {topic} {p}. There is a function for this: {name}. I will pass the arguments exactly "
    "as the user gave them and answer with the result of the call.",
]
_AFTER = ["The tool answered. Report it.", "Got the result from the function."]


def _split_of_name(name: str) -> str:
    return "heldout" if zlib.crc32(name.encode()) % 5 == 4 else "train"


def _names(topic: str) -> list[str]:
    """Every name a function on ``topic`` may get (``get_hotel_price``, ``hotel_price_lookup``, ...)."""
    snake = topic.replace(" ", "_")
    return [f"{v}_{snake}" for v in _VERBS] + [f"{snake}_{s}" for s in _SUFFIXES]


class _Declared:
    """A function as the toolbox lists it, without the cost of compiling its schema (``lazy_spec``:
    the toolbox takes the spec as it is). The data generator only renders; evaluation and tests
    use the real ``FunctionTool`` (``RandomFunction.function_tool``)."""

    lazy_spec = True
    name = "functions"

    def __init__(self, name: str, description: str, schema: dict[str, Any]):
        from gptoss_agent.tools.base import FunctionSpec, NamespaceSpec

        self.spec = NamespaceSpec(name="functions", functions=(FunctionSpec(name=name, description=description, parameters=schema),))

    def call(self, function: str, body: str) -> Any:
        raise RuntimeError("the data generator never calls a function")

    def close(self) -> None: ...


@dataclass
class RandomFunction:
    """A made-up function: its name, topic, parameters and JSON Schema."""

    name: str
    topic: str
    description: str
    params: list[tuple[str, _Param, bool]]  # (name, kind, required)
    schema: dict[str, Any]

    @property
    def tool(self) -> Any:
        """The function as the generator declares it (renders like the real tool)."""
        return _Declared(self.name, self.description, self.schema)

    def function_tool(self, fn: Callable[..., Any]) -> Any:
        """The real ``FunctionTool`` over ``fn`` (for evaluation and tests)."""
        from gptoss_agent.tools.function import FunctionTool

        return FunctionTool.from_schema(self.name, self.description, self.schema, fn)


def _make_function(rng: random.Random, split: str, topic: str) -> RandomFunction:
    names = [n for n in _names(topic) if _split_of_name(n) == split or split == "any"]
    if not names:
        raise ValueError(f"no {split} name for topic {topic!r}")
    name = rng.choice(names)
    chosen: list[_Param] = []
    for kind in rng.sample(_PARAMS, rng.randint(1, 3)):
        if all((kind.names[0], c.names[0]) not in _CONFLICTS for c in chosen):
            chosen.append(kind)
    params = []
    for kind in chosen:
        required = not kind.enum or rng.random() < 0.5
        params.append((rng.choice(kind.names), kind, required))
    props: dict[str, Any] = {}
    for pname, kind, _required in params:
        spec: dict[str, Any] = {"type": kind.type, "description": kind.describe}
        if kind.enum:
            spec["enum"] = list(kind.enum)
        props[pname] = spec
    schema = {"type": "object", "properties": props, "required": [p for p, _, r in params if r]}
    description = rng.choice(_DESCRIBE).format(topic=topic)
    return RandomFunction(name, topic, description, params, schema)


def random_functions(rng: random.Random, split: str, n: int, topics: list[str] | None = None) -> list[RandomFunction]:
    """``n`` functions on different topics (the first on ``topics[0]`` when given)."""
    pool = [t for t in _topics(split) if not topics or t not in topics]
    chosen = list(topics or []) + rng.sample(pool, n - len(topics or []))
    return [_make_function(rng, split, t) for t in chosen[:n]]


def _result(rng: random.Random, topic: str) -> Any:
    kind = zlib.crc32(topic.encode()) % 4
    if kind == 0:
        return rng.randint(1, 99999)
    if kind == 1:
        return round(rng.uniform(0, 999), 2)
    if kind == 2:
        return rng.choice(["on time", "delayed", "sunny", "cloudy", "open", "closed", "high", "low", "moderate"])
    return f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}"


def _topics(split: str) -> list[str]:
    """The topics with at least one function name in ``split``."""
    return [t for t in _TOPICS if any(_split_of_name(n) == split or split == "any" for n in _names(t))]


_NAMED = {"city", "country", "name", "language", "query"}  # kinds whose values come from a short list


def _made_up(rng: random.Random, kind: _Param, split: str) -> Any:
    """A value of ``kind`` no list holds (``Velmira``, ``Tra Duvel``): only copying it gets it right."""
    from gptoss_agent.model.demo.browse import _word, split_of_name

    if kind.names[0] not in _NAMED:
        return kind.value(rng)
    while split_of_name(word := _word(rng)) != split:
        pass
    if kind.names[0] == "name":
        return f"{word} {_word(rng)}"
    if kind.names[0] == "query":
        return f"{word.lower()} {_word(rng).lower()}"
    return word


def function_conversation(rng: random.Random, setting: Setting, enc: Any, split: str) -> Conversation:
    """Declared functions (the target and up to two others); the model calls the target with the
    question's values, reads the result and answers with it."""
    return _function_conversation(rng, setting, enc, split, made_up=False)


def arguments_conversation(rng: random.Random, setting: Setting, enc: Any, split: str) -> Conversation:
    """A training aid: the first step of a function conversation alone (pick the function, fill
    its arguments), with made-up names and places half of the time."""
    conv = _function_conversation(rng, setting, enc, split, made_up=rng.random() < 0.5)
    return Conversation("args", conv.head, conv.steps[:1], conv.answer, conv.meta)


def _function_conversation(rng: random.Random, setting: Setting, enc: Any, split: str, *, made_up: bool) -> Conversation:
    topic = rng.choice(_topics(split))
    target = _make_function(rng, split, topic)
    others = random_functions(rng, split, rng.randint(0, 2), None)
    others = [f for f in others if f.topic != topic]
    functions = [*others, target]
    rng.shuffle(functions)
    args: dict[str, Any] = {}
    phrases = []
    for pname, kind, required in target.params:
        if not required and rng.random() < 0.5:
            continue
        value = _made_up(rng, kind, split) if made_up else kind.value(rng)
        args[pname] = value
        phrases.append(rng.choice(kind.phrase).format(v=value))
    rng.shuffle(phrases)
    p = " ".join(phrases)
    frame = _pick(rng, _FRAMES, split)
    user = noisy(rng, frame.format(topic=topic, p=p).replace("  ", " ").replace(" ?", "?").replace(" .", "."),
                 protect=[str(v) for v in args.values()] + p.split())  # fmt: skip
    # arguments in the schema's order, as JSON the way json.dumps writes it
    ordered = {pname: args[pname] for pname, _, _ in target.params if pname in args}
    body = json.dumps(ordered)
    result = _result(rng, topic)
    key = topic.replace(" ", "_")
    output = json.dumps({key: result})
    fill = {"topic": topic, "p": p, "name": f"functions.{target.name}"}
    effort = setting.effort
    thought = rng.choice({"low": _LOW, "medium": _MEDIUM, "high": _HIGH}[effort]).format(**fill)
    call = assistant("commentary", body, recipient=f"functions.{target.name}", content_type="<|constrain|>json")
    reply = tool_message(f"functions.{target.name}", "commentary", output)
    answer = f"The {topic} {p} is {result}.".replace("  ", " ").replace(" is", " is", 1)
    after = [assistant("analysis", rng.choice(_AFTER))] if effort == "high" else []
    head = setting.head(enc, user, [f.tool for f in functions])
    steps = [Step([assistant("analysis", thought), call], reply), Step([*after, assistant("final", answer)])]
    return Conversation(
        "functions", head, steps, str(result),
        {"function": target.name, "arguments": ordered, "output": output, "functions": functions, "result": {key: result}},
    )  # fmt: skip
