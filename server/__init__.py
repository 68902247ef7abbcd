"""Servers: thin adapters from wire formats to the agent's tools and sessions.

``create_app(engine, tools=[...])`` (``gptoss_agent.server.api``) is the OpenAI-compatible HTTP
server (Responses and Chat Completions, ``gptoss-agent serve``); ``gptoss_agent.server.mcp`` offers
the browser and the python sandbox as an MCP server (``gptoss-agent mcp-server``). Nothing is
imported here until it is used: each server module loads its own dependencies.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from gptoss_agent.server.api import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
