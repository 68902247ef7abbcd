"""Helpers of the agent tests: scripted harmony completions and a small function tool."""

from __future__ import annotations

from gptoss_agent.tools import tool

DATE = "2026-01-02"


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


def call(recipient: str, body: str, channel: str = "commentary", think: str | None = None) -> str:
    """A completion (after ``<|start|>assistant``) that calls ``recipient``, optionally after reasoning."""
    head = f"<|channel|>analysis<|message|>{think}<|end|><|start|>assistant" if think else ""
    return f"{head} to={recipient}<|channel|>{channel} <|constrain|>json<|message|>{body}<|call|>"


def final(text: str, think: str | None = None) -> str:
    """A completion that answers ``text``, optionally after reasoning."""
    head = f"<|channel|>analysis<|message|>{think}<|end|><|start|>assistant" if think else ""
    return f"{head}<|channel|>final<|message|>{text}<|return|>"
