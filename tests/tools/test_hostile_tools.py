"""Tools that try to end the process: ``sys.exit()`` in a tool is the model's problem (a tool
error), a ``KeyboardInterrupt`` is the user's and still stops the run."""

from __future__ import annotations

import asyncio
import sys

import pytest
from gptoss_agent.tools import Toolbox, tool


@tool
def quit_now(code: int) -> str:
    """Exit the process.

    Args:
        code: Exit status.
    """
    sys.exit(code)


@tool
async def quit_async() -> str:
    """Exit the process, from a coroutine."""
    raise SystemExit("bye")


@tool
def interrupted() -> str:
    """As if the user pressed Ctrl-C during the call."""
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("recipient", "body", "message"),
    [
        ("functions.quit_now", '{"code": 3}', "functions.quit_now raised SystemExit: 3"),
        ("functions.quit_async", "{}", "functions.quit_async raised SystemExit: bye"),
    ],
)
def test_system_exit_from_a_tool_is_a_tool_error(recipient, body, message):
    box = Toolbox([quit_now, quit_async])
    out = box.dispatch(recipient, body)
    assert out.is_error and out.content.startswith(message), out.content
    out = asyncio.run(box.adispatch(recipient, body))
    assert out.is_error and out.content.startswith(message), out.content


def test_system_exit_does_not_end_the_agent_run(enc):
    from gptoss_agent.agent import Agent, ScriptedEngine, StopReason

    engine = ScriptedEngine(
        [
            '<|channel|>commentary to=functions.quit_now <|constrain|>json<|message|>{"code": 0}<|call|>',
            "<|channel|>final<|message|>It tried to exit.<|return|>",
        ],
        enc=enc,
    )
    result = Agent(engine, [quit_now], enc=enc).run("exit?")
    assert result.stop_reason is StopReason.ANSWER and result.answer == "It tried to exit."
    assert result.tool_calls[0].is_error and "SystemExit" in result.tool_calls[0].output


def test_keyboard_interrupt_still_stops_the_run():
    with pytest.raises(KeyboardInterrupt):
        Toolbox([interrupted]).dispatch("functions.interrupted", "{}")
