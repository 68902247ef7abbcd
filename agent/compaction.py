"""Context compaction: what the loop does when the next prompt would not fit.

Before each generation the loop measures the prompt. When it would leave less room than
``reserve_tokens(limit)`` for the model to write in (``limit`` being the engine's context, or
``Agent(context_budget=...)`` when smaller), the loop calls the agent's compaction policy with
the conversation, the budget the prompt must fit in and a function that measures a list of
messages in prompt tokens; it emits a ``ContextCompacted`` event saying what was left out and
goes on with the smaller conversation. When even the policy's result does not fit, the run
stops with ``stop_reason="context"`` and the conversation is kept as it was.

A policy is any callable ``policy(messages, budget, measure) -> list[Message]``:

    def keep_recent(messages, budget, measure):
        head, rest = messages[:2], messages[2:]       # system and developer
        while rest and measure(head + rest) > budget:
            rest = rest[1:]
        return head + rest

    agent = Agent(engine, tools, compaction=keep_recent)

The default, ``Compactor()``, keeps the system and developer messages and the current user turn
and frees room in this order, stopping as soon as the prompt is down to ``target`` of the budget
(so that the next steps have room to grow before compacting again):

1. the oldest tool results, all but the last ``keep_tool_results``, become a one-line note
   saying they were elided (the call that asked for them stays);
2. the oldest finished turns (a user message and everything up to the next) are dropped whole;
3. the reasoning (``analysis``) of earlier steps of the current turn is dropped;
4. the tool results kept whole so far are elided too, oldest first, all but the newest.

Compaction changes the prompt from the first message it touches, so the engine prefills from
there once; the target leaves the following steps to extend the compacted prompt. The
transcript keeps every message as it was written: compaction changes only what the model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gptoss_agent.agent.messages import Author, Message, Role, TextContent

__all__ = ["CompactionPolicy", "Compactor", "Measure", "describe", "elide", "reserve_tokens"]

Measure = Callable[[Sequence[Message]], int]
"""Prompt tokens of a list of messages (rendered for the next assistant message)."""

CompactionPolicy = Callable[[list[Message], int, Measure], Sequence[Message]]
"""``policy(messages, budget, measure)``: a conversation whose prompt fits ``budget`` if it can."""

ELIDED_KEY = "elided_tokens"
"""``Message.metadata`` key of an elided tool result: the tokens its content had."""


def reserve_tokens(limit: int) -> int:
    """Room kept free for the model's next message: an eighth of the context, at most 4,096."""
    return min(4096, limit // 8)


def elide(message: Message, tokens: int) -> Message:
    """A tool message whose content is replaced by a one-line note that it was elided."""
    name = message.author.name or "tool"
    note = (
        f"[The {name} result ({tokens} tokens) was elided to fit the context; "
        "call the tool again if it is needed.]"
    )
    return Message(
        author=Author(message.author.role, message.author.name),
        content=[TextContent(note)],
        channel=message.channel,
        recipient=message.recipient,
        content_type=message.content_type,
        metadata={ELIDED_KEY: tokens},
    )


def _is_elided(message: Message) -> bool:
    return ELIDED_KEY in message.metadata


@dataclass(frozen=True)
class Compactor:
    """The default compaction policy (see the module's docstring for the order it follows).

    Args:
        keep_tool_results: The most recent tool results kept whole in step 1.
        target: The fraction of the budget to compact down to.
    """

    keep_tool_results: int = 2
    target: float = 0.75

    def __post_init__(self) -> None:
        if self.keep_tool_results < 0:
            raise ValueError("keep_tool_results must be 0 or more")
        if not 0 < self.target <= 1:
            raise ValueError("target must be a fraction of the budget in (0, 1]")

    def __call__(self, messages: list[Message], budget: int, measure: Measure) -> list[Message]:
        out = list(messages)
        goal = int(budget * self.target)
        empty = measure([])
        size = measure(out)

        def tokens(m: Message) -> int:
            return measure([m]) - empty

        def fits() -> bool:
            return size <= goal

        if fits():
            return out
        # 1. the oldest tool results, all but the last few
        tools = [i for i, m in enumerate(out) if m.author.role is Role.TOOL and not _is_elided(m)]
        keep = self.keep_tool_results
        for i in tools[: max(0, len(tools) - keep)]:
            size -= self._elide_at(out, i, tokens)
            if fits():
                return out
        # 2. the oldest finished turns, whole
        while not fits():
            users = [i for i, m in enumerate(out) if m.author.role is Role.USER]
            if len(users) < 2:
                break
            first, second = users[0], users[1]
            size -= sum(tokens(m) for m in out[first:second])
            del out[first:second]
        if fits():
            return out
        # 3. the reasoning of earlier steps of the current turn
        turn = max((i for i, m in enumerate(out) if m.author.role is Role.USER), default=len(out))
        last_tool = max((i for i, m in enumerate(out) if m.author.role is Role.TOOL), default=-1)
        i = turn
        while i < last_tool and not fits():
            m = out[i]
            if m.author.role is Role.ASSISTANT and m.channel == "analysis":
                size -= tokens(m)
                del out[i]
                last_tool -= 1
            else:
                i += 1
        if fits():
            return out
        # 4. the tool results kept whole so far, all but the newest
        tools = [i for i, m in enumerate(out) if m.author.role is Role.TOOL and not _is_elided(m)]
        for i in tools[:-1]:
            size -= self._elide_at(out, i, tokens)
            if fits():
                break
        return out

    @staticmethod
    def _elide_at(out: list[Message], i: int, tokens: Callable[[Message], int]) -> int:
        """Replace the tool result at ``i`` with its note; return the tokens saved."""
        before = tokens(out[i])
        out[i] = elide(out[i], before)
        return before - tokens(out[i])


def describe(before: Sequence[Message], after: Sequence[Message]) -> tuple[int, int, str]:
    """(messages dropped, tool results elided, a one-line description) of a compaction."""
    kept, old = {id(m) for m in after}, {id(m) for m in before}
    new = [m for m in after if id(m) not in old]
    elided = sum(1 for m in new if _is_elided(m))
    dropped = sum(1 for m in before if id(m) not in kept) - elided
    parts = []
    if elided:
        parts.append(f"elided {elided} tool result{'s' if elided != 1 else ''}")
    if dropped > 0:
        parts.append(f"dropped {dropped} message{'s' if dropped != 1 else ''}")
    return max(dropped, 0), elided, ", ".join(parts) or "changed nothing"
