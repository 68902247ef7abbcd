"""The browser and the python sandbox as an MCP server: ``gptoss-agent mcp-server``.

    gptoss-agent mcp-server                          # stdio, both tools
    gptoss-agent mcp-server --tools python --http 8001   # streamable HTTP on 127.0.0.1:8001/mcp

Any MCP client (Claude Desktop, Cursor, Codex, the Agents SDK, another gptoss-agent) then gets
the tools gpt-oss was trained with: ``search``, ``open`` and ``find`` of the browser (with their
trained descriptions and schemas) and ``python``, a stateful Jupyter-like sandbox.

State is kept per MCP session: each session has its own browser page stack and its own sandbox
session, so ``x = 1`` in one call is still there in the next. A session is the process for stdio
and the ``Mcp-Session-Id`` for streamable HTTP (the handshake protocol); clients of the stateless
2026-07-28 protocol over HTTP carry no session, and share one state per server process. A
session's sandbox is closed when the session ends (or the server stops).

This module is a thin adapter on the SDK's low-level ``Server``: the tools' own ``acall`` does the
work, their ``ToolOutput`` becomes the ``CallToolResult`` (``isError`` for the model's mistakes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptoss_agent.sandbox.base import Session
from gptoss_agent.tools.base import Tool, ToolOutput
from gptoss_agent.tools.python import Python

__all__ = ["ToolServer", "build_parser", "main"]

TOOLS = ("browser", "python")
_PYTHON_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The Python code to run."}},
    "required": ["code"],
}
_DEFAULT_KEY = "default"


@dataclass
class _State:
    """One MCP session's tools, created on first use."""

    tools: dict[str, Tool] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ToolServer:
    """The MCP server's logic: tool listing, calls routed to each session's tools, cleanup.

    Args:
        tools: Which tools to offer: ``browser``, ``python`` or both.
        browser: Builds one session's ``Browser`` (default: ``Browser()``, ``$GPTOSS_SEARCH``).
        python: Builds one session's ``Python`` (default: ``Python()``, ``open_sandbox("auto")``).
        name: The server name MCP clients see.
    """

    def __init__(
        self,
        tools: Sequence[str] = TOOLS,
        *,
        browser: Callable[[], Tool] | None = None,
        python: Callable[[], Tool] | None = None,
        name: str = "gptoss-agent",
    ) -> None:
        unknown = sorted(set(tools) - set(TOOLS))
        if unknown or not tools:
            raise ValueError(f"unknown tools {', '.join(unknown) or '(none)'}: choose from browser, python")
        self.enabled = tuple(t for t in TOOLS if t in tools)
        self.name = name
        self._factories: dict[str, Callable[[], Tool]] = {
            "browser": browser or _default_browser,
            "python": python or _default_python,
        }
        self._states: dict[str, _State] = {}

    # -- what clients see -----------------------------------------------------------------

    def tool_list(self) -> list[Any]:
        """The MCP ``Tool`` entries: the browser's three functions, then ``python``."""
        from gptoss_agent.tools.browser import DESCRIPTION, FUNCTIONS
        from gptoss_agent.tools.python import PYTHON_DESCRIPTION
        from mcp_types import Tool as MCPTool
        from mcp_types import ToolAnnotations

        out: list[Any] = []
        if "browser" in self.enabled:
            for f in FUNCTIONS:
                out.append(
                    MCPTool(
                        name=f.name,
                        description=f"{f.description}\n\n{DESCRIPTION}",
                        input_schema=dict(f.parameters or {"type": "object"}),
                        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
                    )
                )
        if "python" in self.enabled:
            out.append(
                MCPTool(
                    name="python",
                    description=PYTHON_DESCRIPTION.format(timeout=120.0),
                    input_schema=_PYTHON_SCHEMA,
                    annotations=ToolAnnotations(destructive_hint=False, open_world_hint=True),
                )
            )
        return out

    # -- calls ------------------------------------------------------------------------------

    async def call(self, key: str, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """Run tool ``name`` with ``arguments`` in the state of session ``key``."""
        if name in ("search", "open", "find") and "browser" in self.enabled:
            kind, function, body = "browser", name, json.dumps(arguments)
        elif name == "python" and "python" in self.enabled:
            code = arguments.get("code")
            if not isinstance(code, str):
                return ToolOutput(author="python", content='Send the code as {"code": "..."}.', is_error=True)
            kind, function, body = "python", "python", code
        else:
            names = ", ".join(t.name for t in self.tool_list())
            return ToolOutput(author=name, content=f"Unknown tool {name!r}. Tools: {names}.", is_error=True)
        state = self._states.setdefault(key, _State())
        async with state.lock:  # one call at a time per session: the page stack and the cell order
            tool = state.tools.get(kind)
            if tool is None:
                tool = state.tools[kind] = await asyncio.to_thread(self._factories[kind])
            return await tool.acall(function, body)

    async def close_session(self, key: str) -> None:
        """Close one session's tools (its sandbox)."""
        state = self._states.pop(key, None)
        if state is None:
            return
        for tool in state.tools.values():
            close = getattr(tool, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(close)

    async def aclose(self) -> None:
        """Close every session."""
        for key in list(self._states):
            await self.close_session(key)

    @property
    def sessions(self) -> int:
        """How many MCP sessions hold state now."""
        return len(self._states)

    # -- the SDK's server ---------------------------------------------------------------

    def lowlevel(self) -> Any:
        """The SDK's low-level ``Server`` with this object's handlers."""
        from mcp.server.lowlevel import Server
        from mcp_types import CallToolResult, ListToolsResult, TextContent

        async def list_tools(ctx: Any, params: Any) -> Any:
            return ListToolsResult(tools=self.tool_list())

        async def call_tool(ctx: Any, params: Any) -> Any:
            key = await self._session_key(ctx)
            out = await self.call(key, params.name, dict(params.arguments or {}))
            return CallToolResult(content=[TextContent(type="text", text=out.content)], is_error=out.is_error)

        @contextlib.asynccontextmanager
        async def lifespan(_: Any) -> AsyncIterator[dict[str, Any]]:
            try:
                yield {}
            finally:
                await self.aclose()

        return Server(
            self.name,
            version=_version(),
            instructions="The browser (search, open, find) and a stateful python sandbox of gpt-oss.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            lifespan=lifespan,
        )

    async def _session_key(self, ctx: Any) -> str:
        """The state key of a request: its MCP session id, else one state per process. A
        session's state is closed when the SDK tears the session's connection down."""
        connection = getattr(ctx.session, "_connection", None)
        session_id = getattr(connection, "session_id", None)
        if session_id is None:
            request = getattr(ctx, "request", None)
            headers = getattr(request, "headers", None)
            session_id = headers.get("mcp-session-id") if headers is not None else None
        if session_id is None:
            return _DEFAULT_KEY
        key = f"session:{session_id}"
        if key not in self._states and connection is not None:
            stack = getattr(connection, "exit_stack", None)
            if stack is not None:
                stack.push_async_callback(self.close_session, key)
        self._states.setdefault(key, _State())
        return key

    async def serve_stdio(self) -> None:
        """Serve one client over stdin and stdout until it disconnects."""
        from mcp.server.stdio import stdio_server

        server = self.lowlevel()
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    async def serve_http(self, port: int, host: str = "127.0.0.1", path: str = "/mcp") -> None:
        """Serve streamable HTTP on ``http://host:port/path`` until cancelled."""
        import uvicorn

        app = self.lowlevel().streamable_http_app(streamable_http_path=path, host=host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        await uvicorn.Server(config).serve()


def _default_browser() -> Tool:
    from gptoss_agent.tools import Browser

    return Browser()


def _default_python() -> Tool:
    from gptoss_agent.tools import Python

    return Python()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptoss-agent")
    except PackageNotFoundError:
        return "0"


# -- the command -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gptoss-agent mcp-server",
        description="Offer the browser and the python sandbox to any MCP client (stdio by default).",
    )
    p.add_argument(
        "--tools", default="browser,python", help="comma-separated: browser, python (default: both)"
    )
    p.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on PORT instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="the address --http listens on (default 127.0.0.1)")
    p.add_argument(
        "--search",
        metavar="BACKEND",
        help="the browser's search backend: duckduckgo, searxng, brave, exa, tavily (default: $GPTOSS_SEARCH or duckduckgo)",
    )
    p.add_argument(
        "--sandbox",
        choices=["auto", "docker", "bubblewrap"],
        default="auto",
        help="where python code runs (auto: Docker when an engine answers, else bubblewrap)",
    )
    p.add_argument("--python-timeout", type=float, default=120.0, help="seconds one python run may take")
    p.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let the browser open loopback and private addresses (an intranet deployment)",
    )
    return p


def _factories(args: argparse.Namespace) -> tuple[Callable[[], Tool], Callable[[], Tool]]:
    def browser() -> Tool:
        from gptoss_agent.tools import Browser

        return Browser(args.search, allow_private_urls=args.allow_private_urls)

    def python() -> Tool:
        return _SessionPython(args.sandbox, args.python_timeout)

    return browser, python


class _SessionPython(Python):
    """A ``Python`` whose own sandbox session (``backend``) opens on first use and closes with it."""

    def __init__(self, backend: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.backend = backend

    @property
    def session(self) -> Session:
        current: Session | None = self.__dict__.get("_session")
        if current is None:
            from gptoss_agent.sandbox import open_sandbox

            current = self.__dict__["_session"] = open_sandbox(self.backend, timeout=self.timeout)
        return current


def main(argv: Sequence[str] | None = None) -> int:
    """``gptoss-agent mcp-server``: returns the exit status."""
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    if args.http is not None and not 0 < args.http < 65536:
        print(f"gptoss-agent mcp-server: --http {args.http} is not a port (1-65535).", file=sys.stderr)
        return 2
    if "browser" in names:
        from gptoss_agent.tools.search import get_backend

        try:
            get_backend(args.search)
        except ValueError as e:
            print(f"gptoss-agent mcp-server: {str(e).rstrip('.')}.", file=sys.stderr)
            return 2
    browser, python = _factories(args)
    try:
        server = ToolServer(names, browser=browser, python=python)
    except ValueError as e:
        print(f"gptoss-agent mcp-server: {e}.", file=sys.stderr)
        return 2
    try:
        if args.http is None:
            asyncio.run(server.serve_stdio())
        else:
            print(
                f"gptoss-agent mcp-server: {', '.join(server.enabled)} on http://{args.host}:{args.http}/mcp",
                file=sys.stderr,
            )
            asyncio.run(server.serve_http(args.http, args.host))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
