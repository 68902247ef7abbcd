"""Seeded generators of harmony conversations (openai-harmony's JSON form) and token mutations.

Shared by the conformance tests and benchmarks/harmony.py. Every conversation is a plain dict in
openai-harmony's ``Conversation.to_dict()`` form, so both libraries load the same input.
"""

from __future__ import annotations

import copy
import random
from typing import Any

BROWSER = {
    "name": "browser",
    "description": (
        "Tool for browsing.\nThe `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
        "Cite information from the tool using the following format:\n"
        "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
        "Do not quote more than 10 words directly from the tool output.\nsources=web (default: web)"
    ),
    "tools": [
        {
            "name": "search",
            "description": "Searches for information related to `query` and displays `topn` results.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "topn": {"type": "number", "default": 10},
                    "source": {"type": "string"},
                },
                "required": ["query"],
            },
        }
    ],
}

WORDS = [
    "the", "weather", "in", "Paris", "is", "sunny", "def", "f(x):", "return", "x", "+", "1", "42",
    "naïve", "café", "日本語", "テキスト", "😀", "🚀", "👩‍💻", "Ünïcödé", "\t", "\n", "\r\n", "  ",
    "<|end|>", "<|start|>", "to=functions.x", "{", "}", '"', "\\", "ß", "ǅ", "e\u0301", "Ω", "→",
    "```python", "```", "print('hi')", "—", "…", "ﬁ", "\u200b", "ℕ", "½", "١٢٣", "שלום", "Привет",
]  # fmt: skip
FLOATS = [0.5, 1e-7, 1e21, 123456789.125, -0.0, 2.5e-5, 1e16, 1e15, 3.0, -1.25, 0.0001, 1e-5]
ROLES_SPEAKING = ["user", "assistant", "tool"]
CHANNELS = ["analysis", "commentary", "final"]
NAMES = ["get_weather", "lookup", "run_sql", "send_email", "calc", "x", "fetch_page", "λ_tool"]


def text(rng: random.Random, max_words: int = 30, allow_empty: bool = True) -> str:
    if allow_empty and rng.random() < 0.06:
        return ""
    n = rng.randint(1, max_words)
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        out.append(w)
        out.append(rng.choice([" ", " ", " ", "", "\n", ", "]))
    return "".join(out)


def description(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return ""
    if kind < 0.3:
        return "first line\nsecond line\n"
    if kind < 0.4:
        return "line one\r\nline two\r"
    if kind < 0.5:
        return "with a trailing blank\n\n"
    return text(rng, 12, allow_empty=False).replace("\r", "")


def default_value(rng: random.Random, kind: str) -> Any:
    if kind == "string":
        return rng.choice(["auto", 'say "hi"', "back\\slash", "ünï", "", "multi\nline"])
    if kind in ("number", "integer"):
        return rng.choice([0, 10, -1, 2**40, *FLOATS])
    if kind == "boolean":
        return rng.choice([True, False])
    return rng.choice([None, [1, "a", None], {"k": "v", "n": 1.5}, "x", 3])


def schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    r = rng.random()
    s: dict[str, Any]
    if depth < 3 and r < 0.25:
        s = object_schema(rng, depth + 1)
    elif r < 0.4:
        s = {"type": "string"}
        if rng.random() < 0.4:
            s["enum"] = rng.sample(
                ["celsius", "fahrenheit", "kelvin", "auto", "naïve", 'q"uote'], rng.randint(1, 3)
            )
            if rng.random() < 0.2:
                s["enum"].append(7)
    elif r < 0.5:
        s = {"type": rng.choice(["number", "integer"])}
        if rng.random() < 0.2:
            s["enum"] = [1, 2, 3]
    elif r < 0.56:
        s = {"type": "boolean"}
    elif depth < 3 and r < 0.68:
        s = {"type": "array"}
        if rng.random() < 0.85:
            s["items"] = schema(rng, depth + 1)
    elif r < 0.74:
        s = {
            "type": rng.choice(
                [["number", "string"], ["string", "null"], ["integer", "boolean"], [1, "string"]]
            )
        }
    elif depth < 3 and r < 0.84:
        s = {"oneOf": [schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
        for v in s["oneOf"]:
            if rng.random() < 0.4:
                v["description"] = description(rng)
            if rng.random() < 0.2:
                v["nullable"] = True
            if rng.random() < 0.2:
                v["default"] = default_value(rng, str(v.get("type")))
    elif depth < 3 and r < 0.9:
        s = {"anyOf": [schema(rng, depth + 1), {"type": "null"}]}
    elif r < 0.94:
        s = {"type": rng.choice(["null", "whatever"])}
    else:
        s = {}
    if rng.random() < 0.35:
        s["description"] = description(rng)
    if rng.random() < 0.1:
        s["title"] = rng.choice(["Title", "Ünï title"])
    if rng.random() < 0.1:
        s["examples"] = rng.choice([["a", "b"], [], [1, "x"]])
    if rng.random() < 0.25:
        s["default"] = default_value(rng, str(s.get("type")))
    if rng.random() < 0.1:
        s["nullable"] = rng.choice([True, False, "yes"])
    if rng.random() < 0.03:
        s["oneOf"] = None
    return s


def object_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    props = {}
    for i in range(rng.randint(0, 5)):
        props[rng.choice(["location", "unit", "query", "n", "options", "filters", "名前", "id"]) + str(i)] = (
            schema(rng, depth)
        )
    s: dict[str, Any] = {"type": "object", "properties": props}
    if props and rng.random() < 0.7:
        s["required"] = rng.sample(list(props), rng.randint(0, len(props)))
    if rng.random() < 0.2:
        s["description"] = description(rng)
    if rng.random() < 0.1:
        s["additionalProperties"] = False
    return s


def tool(rng: random.Random, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "description": description(rng)}
    r = rng.random()
    if r < 0.75:
        out["parameters"] = object_schema(rng)
    elif r < 0.85:
        out["parameters"] = schema(rng)
    return out


def namespace(rng: random.Random, name: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"name": name}
    if rng.random() < 0.5:
        ns["description"] = description(rng)
    ns["tools"] = [tool(rng, n) for n in rng.sample(NAMES, rng.randint(0, 4))]
    return ns


def system_content(rng: random.Random) -> dict[str, Any]:
    c: dict[str, Any] = {"type": "system_content"}
    for key, values in [
        (
            "model_identity",
            [
                "You are ChatGPT, a large language model trained by OpenAI.",
                "Tu es un assistant. 🤖",
                "",
                None,
            ],
        ),
        ("reasoning_effort", ["Low", "Medium", "High", None]),
        ("conversation_start_date", ["2025-06-28", "2026-11-27", None]),
        ("knowledge_cutoff", ["2024-06", None]),
    ]:
        if rng.random() < 0.7:
            c[key] = rng.choice(values)
    r = rng.random()
    if r < 0.15:
        c["channel_config"] = None
    elif r < 0.3:
        c["channel_config"] = {
            "valid_channels": rng.choice([[], ["analysis", "final"], ["analysis", "commentary", "final"]]),
            "channel_required": rng.random() < 0.5,
        }
    tools: dict[str, Any] = {}
    if rng.random() < 0.5:
        tools["browser"] = copy.deepcopy(BROWSER)
    if rng.random() < 0.4:
        tools["python"] = {"name": "python", "description": "Run Python code.\n\nStateful.", "tools": []}
    if rng.random() < 0.15:
        tools["zeta"] = namespace(rng, "zeta")
    if tools or rng.random() < 0.2:
        c["tools"] = tools
    return c


def developer_content(rng: random.Random) -> dict[str, Any]:
    c: dict[str, Any] = {"type": "developer_content"}
    if rng.random() < 0.8:
        c["instructions"] = text(rng, 40)
    tools: dict[str, Any] = {}
    if rng.random() < 0.75:
        tools["functions"] = namespace(rng, "functions")
    if rng.random() < 0.2:
        tools["alpha"] = namespace(rng, "alpha")
    if rng.random() < 0.1:
        tools["Ünï"] = namespace(rng, "Ünï")
    if tools or rng.random() < 0.2:
        c["tools"] = tools
    return c


def message(rng: random.Random, tool_names: list[str]) -> dict[str, Any]:
    role = rng.choice([*ROLES_SPEAKING, "assistant", "assistant"])
    m: dict[str, Any] = {"role": role, "name": None}
    if role == "tool":
        m["name"] = rng.choice([*tool_names, "python", "browser.search", "functions.lookup"])
        m["channel"] = "commentary"
        if rng.random() < 0.9:
            m["recipient"] = "assistant"
    elif role == "assistant":
        m["channel"] = rng.choice(CHANNELS)
        r = rng.random()
        if r < 0.3:
            m["channel"] = "commentary" if rng.random() < 0.8 else "analysis"
            m["recipient"] = rng.choice([*tool_names, "python", "browser.search", "functions.browser.open"])
            m["content_type"] = rng.choice(["<|constrain|>json", "json", "<|constrain|>", "code"])
        elif r < 0.33:
            m["recipient"] = "all"
        if rng.random() < 0.05:
            del m["channel"]
    elif role == "user" and rng.random() < 0.05:
        m["name"] = "alice"
    n_parts = 1 if rng.random() < 0.9 else rng.randint(0, 3)
    m["content"] = [{"type": "text", "text": text(rng, 60)} for _ in range(n_parts)]
    return m


def conversation(seed: int) -> dict[str, Any]:
    """One conversation in openai-harmony's JSON form, drawn from ``seed``."""
    rng = random.Random(seed)
    messages = []
    if rng.random() < 0.85:
        messages.append({"role": "system", "name": None, "content": [system_content(rng)]})
    tool_names = ["functions.get_weather"]
    if rng.random() < 0.7:
        dev = developer_content(rng)
        messages.append({"role": "developer", "name": None, "content": [dev]})
        for ns in dev.get("tools", {}).values():
            tool_names += [f"{ns['name']}.{t['name']}" for t in ns["tools"]]
    messages.append({"role": "user", "name": None, "content": [{"type": "text", "text": text(rng, 40)}]})
    for _ in range(rng.randint(0, 10)):
        messages.append(message(rng, tool_names))
    return {"messages": messages}


def completion(seed: int) -> list[dict[str, Any]]:
    """A model-side message sequence (assistant and tool messages) for parse tests."""
    rng = random.Random(seed + 10_000)
    out = []
    for _ in range(rng.randint(1, 5)):
        m = message(rng, ["functions.get_weather", "functions.lookup"])
        if m["role"] != "assistant":
            m = {"role": "assistant", "name": None, "channel": "analysis", "content": m["content"]}
        if m.get("recipient") == "all":
            del m["recipient"]
        m["content"] = [{"type": "text", "text": "".join(c["text"] for c in m["content"])}]
        out.append(m)
    return out


SPECIALS = [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200013, 200018, 201000]


def mutate(rng: random.Random, tokens: list[int]) -> list[int]:
    """Damage a token stream the ways real model output is damaged."""
    tokens = list(tokens)
    for _ in range(rng.randint(1, 3)):
        if not tokens:
            break
        i = rng.randrange(len(tokens))
        op = rng.random()
        if op < 0.25:
            del tokens[i]
        elif op < 0.5:
            tokens.insert(i, rng.choice(SPECIALS))
        elif op < 0.6:
            tokens.insert(i, rng.randrange(0, 199998))
        elif op < 0.7:
            tokens = tokens[:i]
        elif op < 0.8:
            tokens[i] = rng.choice(SPECIALS)
        elif op < 0.9:
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i:i] = tokens[max(0, i - 5) : i]
    return tokens
