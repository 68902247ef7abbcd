"""Accuracy of the demo model on the held-out split, through the real ``Agent`` and real tools.

Every case is a held-out conversation (held-out phrasings, held-out function names and entity
names, another seed): the ``Agent`` runs it greedily with the same tools and setting (built-ins,
date, reasoning effort) the generator rendered, over a real sandbox session for ``python``, real
``FunctionTool`` objects for the declared functions, and the real ``Browser`` over the corpus.
A case is *correct* when the right tool was called with the right input and the final answer
holds the expected value (and, for browsing, the citation of the right line).

    python -m gptoss_agent.model.demo eval [CHECKPOINT] [--n 100] [--sandbox auto]
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.model.demo.data import Generator

__all__ = ["CaseResult", "evaluate", "format_table", "run_case"]


@dataclass
class CaseResult:
    skill: str
    correct: bool
    well_formed_calls: int
    calls: int
    parse_problems: int
    bucket: str
    effort: str
    analysis_tokens: int
    detail: dict[str, Any] = field(default_factory=dict)


def _bucket(conv: Any) -> str:
    if conv.skill != "python":
        return "-"
    digits = conv.meta["digits"]
    return "1-6 digits" if digits <= 6 else ("7-9 digits" if digits <= 9 else "10-12 digits")


def _tools(conv: Any, setting: Any, sandbox: Any) -> tuple[list[Any], Callable[[], dict[str, Any]]]:
    """The real tools of a case, and a function that reports what they saw."""
    from gptoss_agent.model.demo.browse import Corpus, corpus_browser
    from gptoss_agent.tools import Python

    seen: dict[str, Any] = {"function_calls": []}
    tools: list[Any] = []
    if "browser" in setting.builtins:
        corpus = conv.meta.get("corpus") or Corpus()
        tools.append(corpus_browser(corpus, conv.meta.get("order")))
    if "python" in setting.builtins:
        tools.append(Python(sandbox=sandbox))
    for f in conv.meta.get("functions", []):
        result = conv.meta["result"] if f.name == conv.meta.get("function") else {"error": "not this one"}

        def call(_name: str = f.name, _result: Any = result, **kwargs: Any) -> Any:
            seen["function_calls"].append((_name, kwargs))
            return _result

        tools.append(f.function_tool(call))
    return tools, lambda: seen


def run_case(engine: Any, conv: Any, setting: Any, sandbox: Any, enc: Any) -> CaseResult:
    """Run one held-out conversation through the Agent and judge the outcome."""
    from gptoss_agent.agent.events import ParseProblem, RunDone
    from gptoss_agent.agent.loop import Agent
    from gptoss_agent.model.engine import Sampling

    tools, seen = _tools(conv, setting, sandbox)
    if conv.skill == "python":
        sandbox.reset()
    agent = Agent(engine, tools=tools, reasoning_effort=setting.effort, date=setting.date, enc=enc,
                  sampling=Sampling(temperature=0.0), max_steps=6, max_tokens=600)  # fmt: skip
    problems = 0
    result = None
    for event in agent.stream(conv.user):
        if isinstance(event, ParseProblem):
            problems += 1
        elif isinstance(event, RunDone):
            result = event.result
    assert result is not None
    calls = result.tool_calls
    well_formed = sum(1 for c in calls if not c.is_error)
    answer = result.answer
    first_analysis = next((m.text for m in result.new_messages if m.channel == "analysis" and m.recipient is None), "")
    detail: dict[str, Any] = {"question": conv.user, "answer": answer, "expected": conv.answer,
                              "calls": [(c.recipient, c.arguments, c.output[:200]) for c in calls],
                              "stop": str(result.stop_reason)}  # fmt: skip
    if conv.skill == "python":
        code = conv.meta["code"]
        ran = [c for c in calls if c.recipient == "python"]
        ok_call = bool(ran) and ran[0].output.strip() == conv.answer
        correct = ok_call and conv.answer in answer.replace(",", "")
        detail["expected_code"] = code
    elif conv.skill == "functions":
        got = seen()["function_calls"]
        ok_call = bool(got) and got[0] == (conv.meta["function"], conv.meta["arguments"])
        correct = ok_call and conv.answer in answer
        detail["expected_call"] = (conv.meta["function"], conv.meta["arguments"])
    else:
        opened = [c for c in calls if c.recipient == "browser.open" and not c.is_error]
        ok_call = bool(opened) and conv.meta["entity"] in opened[0].output.split("\n", 1)[0]
        correct = ok_call and conv.answer in answer and conv.meta["citation"] in answer
        detail["expected_citation"] = conv.meta["citation"]
    return CaseResult(
        skill=conv.skill, correct=correct, well_formed_calls=well_formed, calls=len(calls),
        parse_problems=problems, bucket=_bucket(conv), effort=setting.effort,
        analysis_tokens=len(enc.encode_ordinary(first_analysis)), detail=detail,
    )  # fmt: skip


def cases(enc: Any, skill: str, n: int, seed: int, split: str = "heldout") -> Iterator[tuple[Any, Any]]:
    """``n`` (conversation, setting) pairs of ``skill`` from ``split`` (``train``: the phrasings,
    names and functions trained on, with new numbers: what the model learnt, not how it
    generalises); arithmetic balanced by result length."""
    gen = Generator(enc, split=split, skills=("python", "functions", "browser"))
    rng = random.Random(seed * 7919 + len(skill))
    buckets: dict[str, int] = defaultdict(int)
    made = 0
    while made < n:
        setting = gen.setting(rng, skill)
        try:
            conv = gen.conversation(rng, setting, skill)
        except RuntimeError:  # a browsing case whose fact does not fit on one line
            continue
        if skill == "python":  # a third each of 1-6, 7-9 and 10-12 digit results
            b = _bucket(conv)
            if buckets[b] >= (n + 2) // 3:
                continue
            buckets[b] += 1
        made += 1
        yield conv, setting


def evaluate(
    checkpoint: str | None = None,
    *,
    n: int = 100,
    seed: int = 1,
    skills: tuple[str, ...] = ("python", "functions", "browser"),
    sandbox: str = "auto",
    engine: Any = None,
    log: Callable[[str], None] | None = None,
    split: str = "heldout",
) -> list[CaseResult]:
    """Run ``n`` cases per skill from ``split`` (held-out by default); ``engine`` overrides loading ``checkpoint``."""
    from gptoss_agent.model.tokenizer import load_tokenizer
    from gptoss_agent.sandbox import open_sandbox

    enc = load_tokenizer()
    if engine is None:
        from gptoss_agent.model.demo.pack import demo_checkpoint
        from gptoss_agent.model.local import load_engine

        engine = load_engine(checkpoint or str(demo_checkpoint()))
    results = []
    with open_sandbox(sandbox) as session:
        for skill in skills:
            t0 = time.perf_counter()
            for conv, setting in cases(enc, skill, n, seed, split):
                r = run_case(engine, conv, setting, session, enc)
                results.append(r)
                if log is not None and not r.correct:
                    log(json.dumps({"skill": skill, **r.detail}, default=str))
            if log is not None:
                done = [r for r in results if r.skill == skill]
                log(f"{skill}: {sum(r.correct for r in done)}/{len(done)} correct in {time.perf_counter() - t0:.0f} s")
    return results


def format_table(results: list[CaseResult]) -> str:
    """A Markdown table: correct answers and well-formed calls by skill and result length, and the
    analysis length by reasoning effort."""
    rows = ["| skill | cases | correct answers | well-formed tool calls |", "|---|---|---|---|"]
    groups: dict[tuple[str, str], list[CaseResult]] = defaultdict(list)
    for r in results:
        groups[(r.skill, "all")].append(r)
        if r.bucket != "-":
            groups[(r.skill, r.bucket)].append(r)
    order = ["all", "1-6 digits", "7-9 digits", "10-12 digits"]
    for (skill, bucket), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
        calls = sum(r.calls for r in rs)
        good = sum(r.well_formed_calls for r in rs)
        name = skill if bucket == "all" else f"{skill}, result {bucket}"
        pct = 100 * sum(r.correct for r in rs) / len(rs)
        rows.append(f"| {name} | {len(rs)} | {pct:.1f}% | {100 * good / max(calls, 1):.1f}% ({good}/{calls}) |")
    everything = results
    calls = sum(r.calls for r in everything)
    good = sum(r.well_formed_calls for r in everything)
    pct = 100 * sum(r.correct for r in everything) / max(len(everything), 1)
    rows.append(f"| **all** | {len(everything)} | {pct:.1f}% | {100 * good / max(calls, 1):.1f}% ({good}/{calls}) |")
    effort: dict[str, list[int]] = defaultdict(list)
    for r in results:
        effort[r.effort].append(r.analysis_tokens)
    lengths = ", ".join(
        f"{e} {sum(v) / len(v):.0f}" for e in ("low", "medium", "high") if (v := effort.get(e))
    )
    return "\n".join(rows) + f"\n\nMean tokens of the first analysis message by reasoning effort: {lengths}."
