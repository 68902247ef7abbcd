"""Constrained decoding for harmony: the structure and the tool arguments, the reasoning left free.

    grammar = HarmonyGrammar.compile(enc, HarmonySpec(
        tools=(ToolRule("functions.get_weather", schema), ToolRule("python")),
        tool_choice="required", response_format=None, reasoning_budget=512))
    engine.generate(prompt, stop=..., constraint=grammar)      # LocalEngine

One generation of gpt-oss (the prompt ends with ``<|start|>assistant``) is a few messages: free
text on ``analysis`` (or a ``commentary`` preamble) closed by ``<|end|>``, then either a tool call
whose header names a declared recipient and whose body fits that tool's JSON Schema, or a
``final`` answer (fitting the response format's schema when one is asked for). The grammar
spells exactly that in llguidance's Lark dialect, with harmony's control tokens as tokens
(``<|channel|>``), so regexes for free text can never produce or swallow one. The header admits
the forms gpt-oss writes: the recipient after the channel (``<|channel|>commentary
to=functions.f <|constrain|>json<|message|>``) or in the role position (``to=functions.f
<|channel|>commentary``), with `` <|constrain|>json``, `` json`` or (for free-text tools) `` code``.

The mask only bites where it must (``ConstraintState.choose``): each sampled token is first
checked against the matcher (microseconds); only a token the grammar refuses costs a full
vocabulary mask and a draw among the allowed tokens. Sampling, refusing, then drawing from the
renormalised rest samples exactly the masked distribution, so reasoning and free text run at full
speed and the result is the same as masking every step. Where the grammar keeps refusing (a
stretch that allows few tokens), the draw goes straight to the allowed tokens.

Why llguidance (not xgrammar): it takes a tiktoken vocabulary directly, matches harmony's
special tokens inside the grammar (xgrammar's grammars see only text, so a control token can
only be allowed or banned wholesale), supports per-rule token limits (the reasoning budget) and
JSON Schema inline (``%json{...}``), and computes a 201k-token mask in tens of microseconds
(``benchmarks/constrain.py`` measures both).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "ConstraintError",
    "ConstraintState",
    "HarmonyGrammar",
    "HarmonySpec",
    "ToolRule",
    "harmony_lark",
]

ToolChoice = Literal["auto", "none", "required"] | str

# JSON text as gpt-oss writes it, compact or with a space; a model that is forced cannot run on
# with whitespace (at most two blanks or newlines between tokens of the JSON).
_JSON_STYLE = {"whitespace_flexible": True, "whitespace_pattern": "[ \\n]{0,2}"}
_FREE_TEXT = r"/(?s:.*)/"


class ConstraintError(ValueError):
    """A grammar that cannot be built: a tool_choice naming no declared tool, a schema llguidance
    cannot compile (the message names the tool)."""


@dataclass(frozen=True)
class ToolRule:
    """A recipient the model may address, and what its message body must be."""

    name: str
    """Canonical recipient: ``functions.get_weather``, ``browser.search``, ``python``."""
    schema: dict[str, Any] | None = None
    """JSON Schema of a JSON body; None for free text (python's code)."""


@dataclass(frozen=True, kw_only=True)
class HarmonySpec:
    """What one generation may contain."""

    tools: tuple[ToolRule, ...] = ()
    tool_choice: ToolChoice = "auto"
    """``auto`` (a call or an answer), ``none`` (an answer), ``required`` (a call to any declared
    tool), or a recipient name (a call to that tool)."""
    response_format: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    """JSON Schema of the final answer; None for free text."""
    reasoning_budget: int | None = None
    """At most this many tokens of ``analysis`` (then ``<|end|>`` is forced); with a budget a
    generation holds at most one analysis message and one preamble, each within the budget."""

    def key(self) -> str:
        """A stable identity of the spec (the cache key of its compiled grammar)."""
        return json.dumps(
            {
                "tools": [[t.name, t.schema] for t in self.tools],
                "choice": self.tool_choice,
                "format": self.response_format,
                "budget": self.reasoning_budget,
            }
        )  # not sorted: a schema's property order is the order its JSON is generated in


def _lark_string(text: str) -> str:
    return json.dumps(text)


def _json_rule(schema: dict[str, Any]) -> str:
    merged = dict(schema)
    merged["x-guidance"] = {**_JSON_STYLE, **schema.get("x-guidance", {})}
    return "%json " + json.dumps(merged)  # key order kept: it is the order the JSON must follow


def harmony_lark(spec: HarmonySpec) -> str:
    """The Lark grammar (llguidance dialect) of one assistant generation under ``spec``."""
    choice = spec.tool_choice
    names = [t.name for t in spec.tools]
    if choice not in ("auto", "none", "required") and choice not in names:
        raise ConstraintError(
            f"tool_choice {choice!r} names no declared tool (declared: {', '.join(names) or 'none'})"
        )
    if choice == "required" and not spec.tools:
        raise ConstraintError("tool_choice 'required' needs at least one declared tool")
    callable_tools = [
        t for t in spec.tools if choice in ("auto", "required") or t.name == choice
    ] if choice != "none" else []
    terminals = []
    if choice in ("auto", "none"):
        terminals.append("final")
    rules: list[str] = []
    for i, tool in enumerate(callable_tools):
        terminals.append(f"call{i}")
        to = _lark_string(f" to={tool.name}")
        header = f'(<|channel|> channel {to} | {to} <|channel|> channel)'
        if tool.schema is not None:
            rules.append(f'call{i}: {header} (" " <|constrain|> "json" | " json")? <|message|> args{i} <|call|>')
            rules.append(f"args{i}: {_json_rule(tool.schema)}")
        else:
            rules.append(f'call{i}: {header} (" code" | " " <|constrain|> "code")? <|message|> text <|call|>')
    body = "text" if spec.response_format is None else "answer"
    rules.append(f'final: <|channel|> "final" <|message|> {body} <|return|>')
    if spec.response_format is not None:
        rules.append(f"answer: {_json_rule(spec.response_format)}")
    if spec.reasoning_budget is None:
        head = '(thought <|start|> "assistant")*'
        rules.append("thought: analysis | preamble")
        rules.append('analysis: <|channel|> "analysis" <|message|> text <|end|>')
        rules.append('preamble: <|channel|> "commentary" <|message|> text <|end|>')
    else:
        budget = max(1, int(spec.reasoning_budget))
        head = '(analysis <|start|> "assistant")? (preamble <|start|> "assistant")?'
        rules.append('analysis: <|channel|> "analysis" <|message|> reasoning <|end|>')
        rules.append('preamble: <|channel|> "commentary" <|message|> reasoning <|end|>')
        rules.append(f"reasoning[max_tokens={budget}]: {_FREE_TEXT}")
    rules.append('channel: "analysis" | "commentary"')
    rules.append(f"text: {_FREE_TEXT}")
    return "\n".join([f"start: {head} ({' | '.join(terminals)})", *rules]) + "\n"


_TOKENIZERS: dict[int, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def _lltokenizer(enc: Any) -> Any:
    """llguidance's view of a tiktoken encoding (built once per encoding: about a second)."""
    import llguidance.tiktoken

    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.get(id(enc))
        if tok is None:
            tok = _TOKENIZERS[id(enc)] = llguidance.tiktoken.lltokenizer_from_encoding(enc)
        return tok


class HarmonyGrammar:
    """A compiled ``HarmonySpec``: hand one to ``LocalEngine.generate(constraint=...)``.

    Compiling checks the grammar and every tool's schema once; each generation then starts a
    fresh ``ConstraintState`` from it (a cheap copy).
    """

    def __init__(self, tokenizer: Any, spec: HarmonySpec, lark: str, matcher: Any):
        self.tokenizer = tokenizer
        self.spec = spec
        self.lark = lark
        self._matcher = matcher

    @classmethod
    def compile(cls, enc: Any, spec: HarmonySpec) -> HarmonyGrammar:
        """Build the grammar of ``spec`` over the tokenizer ``enc``; ``ConstraintError`` if it cannot."""
        import llguidance

        tokenizer = _lltokenizer(enc)
        lark = harmony_lark(spec)
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise ConstraintError(_explain(spec, "; ".join(messages)))
        matcher = llguidance.LLMatcher(tokenizer, grammar)
        if matcher.is_error():
            raise ConstraintError(_explain(spec, matcher.get_error()))
        return cls(tokenizer, spec, lark, matcher)

    def start(self) -> ConstraintState:
        """The state at the start of a generation (right after ``<|start|>assistant``)."""
        return ConstraintState(self._matcher.deep_copy(), self.tokenizer.vocab_size)


def _explain(spec: HarmonySpec, error: str) -> str:
    """Name the tool whose schema broke the grammar, when one did."""
    import llguidance

    for tool in spec.tools:
        if tool.schema is not None:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(tool.schema)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
            if is_error:
                return f"the arguments schema of {tool.name} cannot be enforced: {'; '.join(messages)}"
    return f"the harmony grammar cannot be built: {error}"


class ConstraintState:
    """The grammar's position within one generation."""

    def __init__(self, matcher: Any, vocab_size: int):
        self._matcher = matcher
        self._vocab = vocab_size
        self._biting = False
        self.masked_steps = 0
        """Steps that computed the full mask (a refused token, or a stretch the grammar narrows)."""

    def allows(self, token: int) -> bool:
        """Whether ``token`` may come next (cheap: no vocabulary mask)."""
        return bool(self._matcher.validate_tokens([token]) == 1)

    def _bits(self, width: int) -> np.ndarray:
        """One byte per id below ``width``: 1 where the grammar allows it next (~0.1 ms for 201k)."""
        self.masked_steps += 1
        words = np.zeros((self._vocab + 31) // 32, dtype="<u4")
        self._matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:width]  # bit j of word i: id 32i+j
        if not bits.any():
            raise ConstraintError(f"the grammar allows no token of the model's vocabulary: {self.error()}")
        return bits

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits (vocab,)`` with every token the grammar refuses at ``-inf`` (a new tensor)."""
        # numpy, single-threaded: torch's intra-op threads only add barriers on a vector this short
        bits = self._bits(logits.shape[-1])
        values = logits.detach().float().cpu().numpy()
        return torch.from_numpy(np.where(bits.astype(bool), values, np.float32(-np.inf)))

    def choose(self, logits: torch.Tensor, sample: Callable[[torch.Tensor], int]) -> int:
        """The next token: ``sample(logits)`` when the grammar takes it, else a draw from the
        allowed tokens (the masked distribution: sampling, refusing and drawing again from the rest
        is exactly that). While the grammar bites (few tokens allowed, e.g. inside arguments a model
        does not write by itself), the draw is made among the allowed tokens directly."""
        if not self._biting:
            token = sample(logits)
            if self.allows(token):
                self.advance(token)
                return token
        width = logits.shape[-1]
        bits = self._bits(width)
        ids = np.flatnonzero(bits)
        self._biting = ids.size < width // 64  # a narrow stretch: skip the unconstrained draw
        if ids.size < width // 2:
            index = torch.from_numpy(ids)
            token = int(index[sample(logits.detach().float().cpu()[index])])
        else:
            values = logits.detach().float().cpu().numpy()
            token = sample(torch.from_numpy(np.where(bits.astype(bool), values, np.float32(-np.inf))))
        self.advance(token)
        return token

    def advance(self, token: int) -> None:
        """Move past ``token`` (which ``allows`` must have accepted)."""
        if not self._matcher.consume_token(token):
            raise ConstraintError(f"token {token} does not fit the grammar: {self.error()}")

    def error(self) -> str:
        return str(self._matcher.get_error() or "no error")

    @property
    def finished(self) -> bool:
        """The generation is complete (after ``<|call|>`` or ``<|return|>``)."""
        return bool(self._matcher.is_stopped())

    def accepts(self, tokens: Sequence[int]) -> bool:
        """Whether ``tokens`` (from the current position) all fit; the state is not moved."""
        return bool(self._matcher.validate_tokens(list(tokens)) == len(tokens))
