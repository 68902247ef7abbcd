"""From synthetic conversations to training items, rendered exactly as the agent renders them.

A conversation is a list of ``Message`` objects as the ``Agent`` holds them after a run (system,
developer, user, the assistant's messages, the tool messages), cut into *steps*: each step is one
generation of the model (one or more assistant messages ending with ``<|call|>`` or
``<|return|>``). A training item is one step:

* the context: ``render_conversation_for_completion`` of everything before the step, the call the
  loop makes before each generation, with the earlier steps' messages holding the tokens the
  model generated (``Message.with_token_ids``) as the loop's parser records them: a later prompt
  holds an earlier call in the model's form, exactly as at inference;
* the target: the tokens the model generates, in the form gpt-oss emits them (recipient after
  the channel: ``<|channel|>analysis to=python code<|message|>``, ``<|channel|>commentary
  to=functions.f <|constrain|>json<|message|>``), ending with ``<|call|>`` or ``<|return|>``.

The system message and its tokens are built by the ``Agent`` itself (``Agent._system_message``,
``Agent._developer_message``) with the real tools, so a prompt at inference is a training prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gptoss_agent.agent.harmony import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    render_conversation_for_completion,
)
from gptoss_agent.agent.messages import Author, Message, Role, TextContent

__all__ = ["Item", "Step", "as_generated", "assistant", "generated_tokens", "items_of", "tool_message"]


@dataclass
class Step:
    """One generation: the assistant messages the model writes, then the tool's answer (if a call)."""

    messages: list[Message]
    tool_reply: Message | None = None


@dataclass
class Item:
    """One training example: ``tokens = context + target``; the loss is on ``target`` only."""

    context: list[int]
    target: list[int]
    skill: str


def assistant(channel: str, text: str, recipient: str | None = None, content_type: str | None = None) -> Message:
    """An assistant message as the parser hands it to the loop."""
    return Message(
        author=Author(Role.ASSISTANT), content=[TextContent(text)], channel=channel,
        recipient=recipient, content_type=content_type,
    )  # fmt: skip


def tool_message(author: str, channel: str, text: str) -> Message:
    """A tool's answer exactly as ``Agent._call_tool`` appends it."""
    return Message(author=Author(Role.TOOL, author), content=[TextContent(text)], channel=channel, recipient="assistant")


def generated_tokens(messages: Sequence[Message], enc: object) -> list[int]:
    """What the model emits for one step after the prompt's ``<|start|>assistant``."""
    encode = enc.encode_ordinary  # type: ignore[attr-defined]
    out: list[int] = []
    for i, m in enumerate(messages):
        if i:
            out += [START, *encode("assistant")]
        out.append(CHANNEL)
        out += encode(m.channel or "final")
        if m.recipient is not None:
            out += encode(f" to={m.recipient}")
        ct = m.content_type
        if ct is not None:
            if ct.startswith("<|constrain|>"):
                out += [*encode(" "), CONSTRAIN, *encode(ct[len("<|constrain|>") :])]
            else:
                out += encode(f" {ct}")
        out.append(MESSAGE)
        out += encode(m.text)
        last = i == len(messages) - 1
        if m.recipient is not None:
            out.append(CALL)
        elif last and m.channel == "final":
            out.append(RETURN)
        else:
            out.append(END)
    return out


def as_generated(message: Message, enc: Any) -> Message:
    """A copy of ``message`` carrying the tokens the model generates for it, ``<|start|>`` to its
    end (``<|return|>`` kept as ``<|end|>``), as ``StreamParser(record_tokens=True)`` records them."""
    ids = [START, *enc.encode_ordinary("assistant"), *generated_tokens([message], enc)]
    if ids[-1] == RETURN:
        ids[-1] = END
    return replace(message, metadata={}).with_token_ids(ids)


def items_of(head: Sequence[Message], steps: Sequence[Step], enc: Any, skill: str) -> list[Item]:
    """The training items of one conversation: ``head`` (system, developer, user) then ``steps``."""
    history = list(head)
    items = []
    for step in steps:
        context = render_conversation_for_completion(history, Role.ASSISTANT, enc, auto_drop_analysis=False)
        items.append(Item(context=context, target=generated_tokens(step.messages, enc), skill=skill))
        history += [as_generated(m, enc) for m in step.messages]
        if step.tool_reply is not None:
            history.append(step.tool_reply)
    return items
