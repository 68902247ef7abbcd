"""Synthetic harmony conversations for the demo model, one generator per skill.

Each skill writes whole conversations as the ``Agent`` would hold them after a good run: the
system and developer messages come from a real ``Agent`` over the real tools (``Setting.head``),
the user's question from one of many templates (casing and small typos varied), then the steps
the model should take and the tools' real answers. Sentence templates, function schemas and
entity names are split into a ``train`` and a ``heldout`` part, so evaluation asks in phrasings
never trained on. The operator words ("take away", "the product of") are the skill's vocabulary
rather than a phrasing: every one is trained (a model this small cannot guess that an unseen
"take away" means ``-``), and the held-out questions put them in held-out frames.

    gen = Generator(enc, seed=0, split="train")
    setting = gen.setting(rng)                # tools, date, reasoning effort: one system prefix
    conv = gen.conversation(rng, setting, "python")
    items = conv.items(enc)                   # one training item per generation step
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from gptoss_agent.agent.messages import Message, Role
from gptoss_agent.model.demo.render import Item, Step, assistant, items_of, tool_message

__all__ = ["SKILLS", "Conversation", "Generator", "Setting", "python_value", "split_of"]

SKILLS = ("python", "functions", "browser")


def split_of(index: int, n: int) -> str:
    """Templates with index ``i`` go to ``heldout`` when ``i % 5 == 4`` (a fifth), else ``train``."""
    return "heldout" if n >= 5 and index % 5 == 4 else "train"


def _pick(rng: random.Random, options: Sequence[str], split: str) -> str:
    chosen = [o for i, o in enumerate(options) if split_of(i, len(options)) == split] or list(options)
    return rng.choice(chosen)


# ---- surface noise ------------------------------------------------------------------------------


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # swap two letters
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # drop one
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double one


def noisy(rng: random.Random, text: str, protect: Sequence[str] = ()) -> str:
    """Vary casing and add a small typo now and then; words in ``protect`` stay as they are."""
    r = rng.random()
    if r < 0.15:
        text = text.lower()
    elif r < 0.2:
        text = text[:1].upper() + text[1:]
    elif r < 0.23:
        text = text.upper()
    if rng.random() < 0.2:
        words = text.split(" ")
        candidates = [i for i, w in enumerate(words) if w.isalpha() and w.lower() not in {p.lower() for p in protect}]
        if candidates:
            i = rng.choice(candidates)
            words[i] = _typo(rng, words[i])
        text = " ".join(words)
    return text


# ---- the setting: one system prefix ---------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What the system message depends on: the built-in tools, the date, the effort, and whether a
    developer message declares functions (its system message then names the functions channel)."""

    builtins: tuple[str, ...]
    date: str
    effort: str
    functions: bool

    def agent(self, enc: Any, function_tools: Sequence[Any] = ()) -> Any:
        """A real ``Agent`` over the real tools of this setting (never run: no engine, no sandbox)."""
        from gptoss_agent.agent.loop import Agent
        from gptoss_agent.tools import Browser, Python

        tools: list[Any] = []
        if "browser" in self.builtins:
            tools.append(Browser(_NoSearch()))
        if "python" in self.builtins:
            tools.append(Python(sandbox=cast(Any, _NoSandbox())))
        tools += list(function_tools)
        return Agent(cast(Any, _NoEngine()), tools=tools, reasoning_effort=self.effort, date=self.date, enc=enc)

    def head(self, enc: Any, user: str, function_tools: Sequence[Any] = ()) -> list[Message]:
        """System, developer (when there are function tools) and user messages, as the Agent builds them."""
        agent = self.agent(enc, function_tools)
        messages = [agent._system_message()]
        developer = agent._developer_message()
        if developer is not None:
            messages.append(developer)
        messages.append(Message.from_role_and_content(Role.USER, user))
        return messages


class _NoEngine:
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the data generator's agent never generates")


class _NoSandbox:
    timeout = 120.0

    def run(self, code: str, timeout: float | None = None) -> Any:
        raise RuntimeError("the data generator computes tool outputs itself")

    def reset(self) -> None: ...
    def close(self) -> None: ...


class _NoSearch:
    name = "none"

    def search(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the data generator renders pages itself")


@dataclass
class Conversation:
    """One synthetic run: the head messages and the steps; ``answer`` is what a check looks for."""

    skill: str
    head: list[Message]
    steps: list[Step]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return self.head[-1].text

    def items(self, enc: Any) -> list[Item]:
        return items_of(self.head, self.steps, enc, self.skill)


# ---- python: arithmetic, sums and means -----------------------------------------------------

_OPS: dict[str, list[str]] = {
    "+": ["{a} + {b}", "{a} plus {b}", "{a}+{b}", "the sum of {a} and {b}", "{a} added to {b}", "add {a} and {b}"],
    "-": ["{a} - {b}", "{a} minus {b}", "{a}-{b}", "the difference {a} minus {b}", "{a} take away {b}", "subtract {b} from {a}"],
    "*": ["{a} * {b}", "{a} times {b}", "{a} x {b}", "{a} multiplied by {b}", "the product of {a} and {b}", "{a}*{b}", "multiply {a} by {b}"],
    "//": ["{a} // {b}", "{a} floor-divided by {b}", "the integer quotient of {a} and {b}", "{a} integer-divided by {b}", "{a}//{b}", "the floor of {a} divided by {b}"],
    "%": ["{a} % {b}", "{a} mod {b}", "{a} modulo {b}", "the remainder of {a} divided by {b}", "{a}%{b}", "{a} mod {b} (remainder)"],
    "**": ["{a} ** {b}", "{a} to the power of {b}", "{a}^{b}", "{a} raised to the {b}", "{a}**{b}", "{a} to the {b}th power"],
}  # fmt: skip

_LIST_OPS: dict[str, list[str]] = {
    "sum": ["the sum of {items}", "the total of {items}", "{items} added up", "the sum of the numbers {items}", "the total of these numbers: {items}", "sum({items})"],
    "mean": ["the mean of {items}", "the average of {items}", "the arithmetic mean of {items}", "the average of these numbers: {items}", "the mean value of {items}", "mean({items})"],
}  # fmt: skip

_FRAMES = [
    "What is {e}? Use python.", "What is {e}?", "Compute {e}.", "Calculate {e} using python.",
    "Use python to compute {e}.", "what's {e}", "Can you work out {e}?", "Please calculate {e}.",
    "I need {e}, exactly.", "Tell me {e}.", "{e} = ?", "How much is {e}?", "Find {e}.",
    "Evaluate {e} with python.", "Quick one: {e}?", "Could you compute {e} for me?",
    "Work out {e} in python and tell me the result.", "What do you get for {e}?", "Give me {e}.",
    "Run python to get {e}.", "Help me with {e}.", "Solve {e}.", "whats {e}? use python",
    "Determine {e}.", "Result of {e}?", "I'd like to know {e}.", "Please use the python tool: {e}",
    "Compute the exact value of {e}.", "Hey, what is {e}?", "Need the answer to {e}.",
    "Using python, what is {e}?", "What's the value of {e}?", "Calculate: {e}", "{e}?",
    "can u compute {e}", "Figure out {e}, please.", "Answer this: {e}", "Do the math: {e}.",
    "What would {e} be?", "Exactly how much is {e}?",
]  # fmt: skip

_LOW = ["Compute with python.", "Use python.", "Let me run this in python.", "Calculate it with python."]
_MEDIUM = [
    "The user wants {w}. I'll compute it exactly with python.",
    "Need {w}. Use python to get the exact value.",
    "We need to compute {w}. Let's run it in python.",
]
_HIGH = [
    "The user asks for {w}. Doing this by hand is error-prone, so I should use the python tool. "
    "The expression is {code}. I will run it and then report the exact number from the output.",
    "We need {w}. This is arithmetic that python can do exactly. I'll send the expression {code} to "
    "python, read the output, and give the result without rounding. No other tools are needed.",
    "Task: compute {w}. I should not guess the digits; python gives the exact value. The code is "
    "{code}. After it runs, I will copy the number from the output into the answer.",
]
_AFTER_HIGH = ["The output is the exact result. Report it.", "Python returned the value. Now answer."]


def python_value(code: str) -> str:
    """What the sandbox shows for ``code`` whose last line is an expression (its ``repr``)."""
    *body, last = code.split("\n")
    scope: dict[str, Any] = {}
    exec("\n".join(body), {}, scope)  # the generator's own arithmetic, never model output
    return repr(eval(last, {}, scope))


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _arithmetic(rng: random.Random) -> tuple[str, dict[str, int]]:
    op = rng.choices(list(_OPS), weights=[3, 2, 5, 1.5, 1.5, 1.5])[0]
    if op == "**":
        a = rng.randint(2, 99)
        top = max(2, int(12 / max(0.3, __import__("math").log10(a))))
        b = rng.randint(2, min(top, 40))
    elif op == "*":
        da = rng.randint(1, 6)
        db = rng.randint(1, 6)
        if rng.random() < 0.6:  # long products (7-12 digits) are what is hard to copy
            da, db = rng.randint(3, 6), rng.randint(3, 6)
        a, b = _number(rng, da), _number(rng, db)
    else:
        a, b = _number(rng, rng.randint(1, 6)), _number(rng, rng.randint(1, 6))
        if op in ("//", "%"):
            b = max(b, 2)
    return op, {"a": a, "b": b}


def python_conversation(rng: random.Random, setting: Setting, enc: Any, split: str) -> Conversation:
    if rng.random() < 0.8:
        op, nums = _arithmetic(rng)
        phrase = rng.choice(_OPS[op]).format(**nums)
        code = f"{nums['a']} {op} {nums['b']}"
        words = phrase
        lead = "The answer is"
    else:
        kind = rng.choice(["sum", "mean"])
        n = rng.randint(3, 7)
        while True:
            values = [_number(rng, rng.randint(1, 4)) for _ in range(n)]
            if kind == "sum" or (sum(values) * 10000) % n == 0:
                break
        sep = rng.choice([", ", " ", ", "])
        listed = sep.join(map(str, values))
        if rng.random() < 0.3 and sep == ", ":
            listed = ", ".join(map(str, values[:-1])) + f" and {values[-1]}"
        phrase = rng.choice(_LIST_OPS[kind]).format(items=listed)
        vals = "[" + ", ".join(map(str, values)) + "]"
        code = f"sum({vals})" if kind == "sum" else f"x = {vals}\nsum(x) / len(x)"
        words = phrase
        lead = "The sum is" if kind == "sum" else "The mean is"
    frame = _pick(rng, _FRAMES, split)
    user = noisy(rng, frame.format(e=phrase), protect=phrase.split(" "))
    value = python_value(code)
    effort = setting.effort
    if effort == "low":
        thought = rng.choice(_LOW)
    elif effort == "medium":
        thought = rng.choice(_MEDIUM).format(w=words, code=code)
    else:
        thought = rng.choice(_HIGH).format(w=words, code=code.replace("\n", "; "))
    call = assistant("analysis", code, recipient="python", content_type="code")
    reply = tool_message("python", "analysis", value)
    final = assistant("final", f"{lead} {value}.")
    after = [assistant("analysis", rng.choice(_AFTER_HIGH))] if effort == "high" else []
    head = setting.head(enc, user, _distractor_functions(rng, setting, split))
    steps = [Step([assistant("analysis", thought), call], reply), Step([*after, final])]
    return Conversation("python", head, steps, value, {"code": code, "digits": len(value.lstrip("-"))})


# ---- copy: repeat numbers and names back (a training aid, not an evaluated skill) -----------
#
# Every other skill needs the model to copy numbers (question -> code, tool output -> answer), and
# copying needs induction heads (find the earlier occurrence of this token, emit the one after it).
# Those form slowly when the only copies are a few digits among long templates; conversations that
# are nothing but copies of random digit runs train them directly.

_COPY_FRAMES = [
    "Repeat this exactly: {x}", "Please repeat {x}.", "Say back {x}", "Echo {x}", "Copy this number: {x}",
    "Write {x} back to me.", "Can you repeat {x}?", "Repeat after me: {x}", "Type out {x} exactly.",
    "Read this back: {x}", "Say {x}.", "Just repeat: {x}", "Return {x} unchanged.", "Echo back {x}.",
    "Write down {x}.", "Please copy {x} exactly.", "Repeat the digits {x}.", "Mirror this: {x}",
    "Reply with {x} and nothing else.", "Could you say {x} back?", "Repeat {x}, exactly as written.",
    "Give me back {x}.", "Transcribe {x}.", "Copy: {x}", "repeat {x}",
]  # fmt: skip
_COPY_THOUGHT = {
    "low": ["Repeat it.", "Copy it back."],
    "medium": ["The user wants {x} repeated.", "Repeat {x} exactly."],
    "high": ["The user asks me to repeat {x}. No tool is needed; I copy it exactly, digit by digit.",
             "I must say {x} back. I will copy every digit in order and add nothing."],
}  # fmt: skip


def _copy_value(rng: random.Random, split: str) -> str:
    """A number of 1-12 digits, or a made-up name as the browser and function skills must copy
    into a query or an argument (``Velmira``, ``lan_tradu``), from ``split``'s names only."""
    from gptoss_agent.model.demo.browse import _word, split_of_name

    r = rng.random()
    if r < 0.55:
        return str(_number(rng, rng.randint(1, 12)))
    while split_of_name(word := _word(rng)) != split:
        pass
    if r < 0.8:
        return word if rng.random() < 0.7 else word.lower()
    return f"{word.lower()}_{_word(rng).lower()}"


def copy_conversation(rng: random.Random, setting: Setting, enc: Any, split: str) -> Conversation:
    """The user gives one to five numbers or names; the model repeats them exactly."""
    values = [_copy_value(rng, split) for _ in range(rng.randint(1, 5))]
    x = rng.choice([" ", ", "]).join(values)
    user = noisy(rng, _pick(rng, _COPY_FRAMES, split).format(x="\0")).replace("\0", x)  # names keep their case
    thought = rng.choice(_COPY_THOUGHT[setting.effort]).format(x=x)
    head = setting.head(enc, user, _distractor_functions(rng, setting, split))
    steps = [Step([assistant("analysis", thought), assistant("final", x)])]
    return Conversation("copy", head, steps, x, {"digits": max(len(v) for v in values)})


# ---- function tools (filled in by functions.py) -------------------------------------------


def _distractor_functions(rng: random.Random, setting: Setting, split: str) -> list[Any]:
    if not setting.functions:
        return []
    from gptoss_agent.model.demo.functions import random_functions

    return [f.tool for f in random_functions(rng, split, rng.randint(1, 3))]


# ---- the generator ----------------------------------------------------------------------------

_EFFORTS = ("low", "medium", "high")


class Generator:
    """Conversations of every skill for one split, and the settings they are rendered in."""

    def __init__(self, enc: Any, *, split: str = "train", skills: Sequence[str] = ("python",)) -> None:
        self.enc = enc
        self.split = split
        self.skills = tuple(skills)
        self._makers: dict[str, Callable[[random.Random, Setting, Any, str], Conversation]] = {
            "python": python_conversation,
            "copy": copy_conversation,
        }
        if {"functions", "args"} & set(self.skills):
            from gptoss_agent.model.demo.functions import arguments_conversation, function_conversation

            self._makers["functions"] = function_conversation
            self._makers["args"] = arguments_conversation
        if "browser" in self.skills:
            from gptoss_agent.model.demo.browse import browser_conversation

            self._makers["browser"] = browser_conversation

    def setting(self, rng: random.Random, skill: str) -> Setting:
        """A random setting in which ``skill`` can be done (the CLI's browser+python most often)."""
        day = dt.date(2024, 7, 1) + dt.timedelta(days=rng.randrange(365 * 3))
        effort = rng.choices(_EFFORTS, weights=[1, 1.5, 1])[0]
        if skill == "copy":  # no tools: a short system message, so attention learns to find copies fast
            return Setting((), day.isoformat(), effort, False)
        if skill == "python":
            builtins = rng.choices([("browser", "python"), ("python",)], weights=[1, 2])[0]
            functions = "functions" in self.skills and rng.random() < 0.25
        elif skill in ("functions", "args"):
            builtins = rng.choices([(), ("python",), ("browser", "python")], weights=[3, 1, 1])[0]
            functions = True
        else:
            builtins = rng.choices([("browser", "python"), ("browser",)], weights=[3, 1])[0]
            functions = rng.random() < 0.15
        return Setting(builtins, day.isoformat(), effort, functions)

    def conversation(self, rng: random.Random, setting: Setting, skill: str) -> Conversation:
        return self._makers[skill](rng, setting, self.enc, self.split)
