"""A small MCP server written with the official SDK, for the MCP client tests.

    python mcp_test_server.py              # stdio
    python mcp_test_server.py --http PORT  # streamable HTTP on 127.0.0.1:PORT/mcp
    python mcp_test_server.py --sse PORT   # the older SSE transport on 127.0.0.1:PORT/sse

Its tools cover what the client must handle: typed and nested arguments (pydantic writes titles,
``$defs`` and ``anyOf`` with null), a tool that raises, one that kills the server mid-call, one
that hangs, one that changes the tool list, images and resources, and the request's headers.
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
import time
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import EmbeddedResource, ImageContent, TextContent, TextResourceContents
from pydantic import BaseModel, Field

server = MCPServer("Test Server!", instructions="Tools for the MCP client tests.", log_level="WARNING")


class Point(BaseModel):
    """A point on the plane."""

    x: int = Field(description="Horizontal position.")
    y: int = 0


@server.tool()
def add(a: Annotated[int, Field(description="First number.")], b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(name="describe-point")
def describe_point(point: Point, label: str | None = None) -> str:
    """Describe a point, with an optional label."""
    return f"{label or 'point'} at ({point.x}, {point.y})"


@server.tool()
def boom(reason: str = "kaboom") -> str:
    """Always fails."""
    raise ToolError(f"boom failed: {reason}")


@server.tool()
def die() -> str:
    """Kills the server in the middle of the call."""
    print("dying now", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def hang(seconds: float = 60.0) -> str:
    """Sleeps (blocking the whole server)."""
    time.sleep(seconds)
    return "woke up"


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def picture() -> list[ImageContent | EmbeddedResource | TextContent]:
    """An image, an embedded text resource and a caption."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(2048)).decode()
    return [
        ImageContent(type="image", data=png, mime_type="image/png"),
        EmbeddedResource(
            type="resource",
            resource=TextResourceContents(
                uri="file:///notes.txt", mime_type="text/plain", text="hello notes"
            ),
        ),
        TextContent(type="text", text="a caption"),
    ]


@server.tool()
def whoami(ctx: Context) -> str:
    """The X-Test header of this request (HTTP only)."""
    headers = ctx.headers or {}
    return headers.get("x-test", "no header")


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool ``fresh`` and tells the client the list changed."""

    def fresh(word: str) -> str:
        return f"fresh {word}"

    server.add_tool(fresh, name="fresh", description="A tool that appeared later.")
    await ctx.notify_tools_changed()  # 2026-era clients: their subscriptions/listen stream
    with contextlib.suppress(Exception):  # the 2026 era has no such notification
        await ctx.session.send_tool_list_changed()  # handshake-era clients: a notification
    return "grown"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sse":
        server.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
