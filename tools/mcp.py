"""MCP servers as tool namespaces: any Model Context Protocol server's tools, called by the model.

    fs = MCPServer.stdio("npx", args=["-y", "@modelcontextprotocol/server-filesystem", "/tmp"])
    docs = MCPServer.http("https://example.com/mcp", headers={"Authorization": "Bearer ..."})
    agent = Agent(engine, tools=[Browser(), fs, docs])   # the model calls secure_filesystem_server.read_file

Each server is one harmony namespace in the developer message, named after the server (the
``serverInfo`` name it reports, sanitised; ``name=`` overrides), with its tools rendered by the
rules harmony's renderer needs: titles dropped, ``$ref`` inlined, ``anyOf`` with ``null`` turned
into ``nullable``, descriptions kept. Arguments are validated against the server's own input
schema before the call; results come back as text (structured content as JSON, images, audio
and resources as short notes), ``isError`` as an error message.

The official ``mcp`` SDK is async (anyio) while the agent calls tools from worker threads, so
every server runs its client session on a background event loop thread of its own; sync calls
are submitted to it with ``run_coroutine_threadsafe`` and async callers await the same future.
The session is opened on first use (the first render lists the tools), the listing is refreshed
after ``notifications/tools/list_changed`` (or its ``subscriptions/listen`` event on 2026-era
servers), and ``close()`` (the agent's) ends the session, which stops and reaps a stdio server.

Failures are sorted by who is at fault: a server that cannot be started or listed is the user's
configuration (``MCPConnectionError``, one sentence); a server that dies or hangs during a call is
reported to the model in the tool message, and the server is restarted on its next call (one
attempt per call), so the run goes on.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import concurrent.futures
import contextlib
import copy
import dataclasses
import json
import os
import re
import shlex
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TextIO, TypeVar, cast
from urllib.parse import urlsplit

from gptoss_agent.tools.base import FunctionSpec, NamespaceSpec, ToolOutput
from gptoss_agent.tools.schema import ArgumentError, check_arguments, compile_validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

__all__ = ["MCPConnectionError", "MCPServer", "harmony_schema", "load_mcp_config", "sanitize_name"]

T = TypeVar("T")

_RESERVED = {"functions", "browser", "python", "assistant", "user", "system", "developer", "tool", "all"}
"""Namespace names an MCP server may not take (harmony's own recipients and roles)."""

_GRACE_SECONDS = 5.0
"""How much longer than the server's own limits (connecting, then the call) the toolbox waits."""

_CLOSE_SECONDS = 10.0
"""How long ``close()`` waits for a session to end (stdio shutdown: stdin closed, then a kill)."""


class MCPConnectionError(RuntimeError):
    """An MCP server could not be started, connected to or listed (a configuration problem)."""


# --------------------------------------------------------------------------------------------
# Names and schemas


def sanitize_name(text: str) -> str:
    """A name the model can write in a recipient: letters, digits and ``_`` (runs of anything
    else become one ``_``), not starting with a digit, never empty."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    if not name:
        return "mcp"
    return f"_{name}" if name[0].isdigit() else name


def _namespace_name(text: str) -> str:
    name = sanitize_name(text).lower()
    return f"{name}_mcp" if name in _RESERVED else name


def harmony_schema(schema: Any) -> Any:
    """An MCP tool's input schema as harmony's renderer needs it (for rendering only).

    ``title`` is dropped everywhere (the renderer would print it as a comment line above each
    property, and pydantic writes one for every field), ``$ref`` is inlined from ``$defs`` /
    ``definitions`` (the renderer does not follow references), ``anyOf``/``oneOf`` with a
    ``null`` branch become the other branch with ``"nullable": true`` (rendered ``| null``),
    unions of plain types become a type list, and other ``anyOf`` become ``oneOf`` (rendered one
    variant per line instead of ``any``). Descriptions, defaults, enums and examples are kept.
    """
    if not isinstance(schema, dict):
        return schema
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{name}": value for name, value in schema[key].items()})
    return _clean(schema, defs, ())


def _clean(schema: Any, defs: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(schema, list):
        return [_clean(s, defs, seen) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        if ref in defs and ref not in seen:
            target = _clean(defs[ref], defs, (*seen, ref))
            return {**target, **_clean(rest, defs, seen)} if isinstance(target, dict) else target
        return {"type": "object", **_clean(rest, defs, seen)}  # recursive or external: an object
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "$defs", "definitions", "$schema", "$id", "$comment"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _clean(prop, defs, seen) for name, prop in value.items()}
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            out[key] = _clean(value, defs, seen)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            out[key] = [_clean(v, defs, seen) for v in value]
        else:
            out[key] = value
    for key in ("anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out = _union(out, key)
    if isinstance(out.get("allOf"), list) and len(out["allOf"]) == 1 and isinstance(out["allOf"][0], dict):
        only = out.pop("allOf")[0]
        out = {**only, **out}
    return out


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "null" or schema.get("const", 0) is None)


def _union(schema: dict[str, Any], key: str) -> dict[str, Any]:
    branches = schema[key]
    rest = {k: v for k, v in schema.items() if k != key}
    members = [b for b in branches if not _is_null(b)]
    nullable = len(members) < len(branches)
    if not members:
        return {**rest, "type": "null"}
    if len(members) == 1 and isinstance(members[0], dict):
        merged = {**members[0], **rest}
        return {**merged, "nullable": True} if nullable else merged
    if all(isinstance(m, dict) and set(m) == {"type"} and isinstance(m["type"], str) for m in members):
        names = list(dict.fromkeys(m["type"] for m in members))
        return {**rest, "type": [*names, "null"] if nullable else names}
    if nullable and isinstance(members[-1], dict):
        members[-1] = {**members[-1], "nullable": True}
    return {**rest, "oneOf": members}


# --------------------------------------------------------------------------------------------
# Results


def _size(data: str) -> str:
    try:
        n = len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        n = len(data)
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def _resource_note(resource: Any) -> str:
    uri = str(getattr(resource, "uri", ""))
    mime = getattr(resource, "mime_type", None)
    text = getattr(resource, "text", None)
    head = f"[resource {uri}" + (f" ({mime})" if mime else "")
    if isinstance(text, str):
        return f"{head}]\n{text}"
    blob = getattr(resource, "blob", None)
    return f"{head}, {_size(blob) if isinstance(blob, str) else 'binary'}]"


def result_text(result: Any) -> tuple[str, dict[str, Any]]:
    """A ``CallToolResult`` as the model reads it, and the metadata kept for callers.

    Text blocks as they are; structured content as compact JSON when there is no text (servers
    are asked to repeat it as text, and most do); images, audio and resource links as one-line notes (their data stays in the
    metadata); embedded text resources with their text.
    """
    parts: list[str] = []
    texts: list[str] = []
    media: list[dict[str, Any]] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {_size(block.data)}]")
            media.append({"type": kind, "mime_type": block.mime_type, "data": block.data})
        elif kind == "resource_link":
            label = getattr(block, "title", None) or block.name
            mime = getattr(block, "mime_type", None)
            parts.append(f"[resource link: {label} <{block.uri}>" + (f" ({mime})" if mime else "") + "]")
        elif kind == "resource":
            parts.append(_resource_note(block.resource))
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    metadata: dict[str, Any] = {}
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        metadata["structured_content"] = structured
        if not texts:
            parts.append(json.dumps(structured, ensure_ascii=False))
    if media:
        metadata["media"] = media
    return "\n".join(parts), metadata


# --------------------------------------------------------------------------------------------
# The server object


@dataclass(frozen=True)
class _Tool:
    """One MCP tool as the model sees it and as the server knows it."""

    name: str
    """The name the model calls (sanitised)."""
    server_name: str
    """The name the server knows it by."""
    spec: FunctionSpec
    validator: Validator | None


class _Session:
    """One connection to the server: a task on the background loop that holds the SDK's
    ``Client`` open until ``stop`` is set (anyio scopes must be left by the task that entered)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None
        self.broken: str | None = None
        """Why this session can no longer be used (None while it is healthy)."""


_OPEN: weakref.WeakSet[MCPServer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # a server the caller forgot to close must not outlive the interpreter
    for server in list(_OPEN):
        with contextlib.suppress(Exception):
            server.close()


class MCPServer:
    """An MCP server's tools as one harmony namespace (a ``Tool`` for ``Agent(tools=[...])``).

    Build one with ``MCPServer.stdio(...)`` or ``MCPServer.http(...)``. Nothing is started until
    the tools are first needed (the agent's first render, or ``connect()``).

    Attributes:
        timeout: Seconds one call may take before the model is told the server hung (the server
            is then restarted on the next call). None: no limit.
        call_timeout: What the toolbox allows a call: ``timeout``, plus ``connect_timeout`` for the
            restart a call after a failure begins with, plus a few seconds (the limits of its own
            steps are what normally end a call, each with its own message).
        lazy_spec: Tells the ``Toolbox`` that this tool's functions are listed on first use and
            may change (it then builds routes from ``spec`` when a name is looked up).
    """

    lazy_spec = True

    def __init__(
        self,
        target: Any,
        *,
        label: str,
        default_name: str,
        name: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 30.0,
        protocol: str = "auto",
    ) -> None:
        self._target = target
        self.label = label
        """How the server is described in errors (its command line or URL)."""
        self._default_name = default_name
        self._name = _namespace_name(name) if name else None
        self.timeout = timeout
        self.call_timeout = timeout + connect_timeout + _GRACE_SECONDS if timeout is not None else None
        self.connect_timeout = connect_timeout
        self.protocol = protocol
        self.server_info: Any = None
        """The server's ``Implementation`` (name, version) once connected."""
        self.instructions: str | None = None
        self.restarts = 0
        """How many times the server was restarted after dying or hanging."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()
        self._session: _Session | None = None
        self._session_lock: asyncio.Lock | None = None
        self._tools: dict[str, _Tool] = {}
        self._by_server_name: dict[str, str] = {}
        self._spec: NamespaceSpec | None = None
        self._changed = False
        self._closed = False
        self._stderr: IO[str] | None = None

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def stdio(
        cls,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 30.0,
        protocol: str = "auto",
    ) -> MCPServer:
        """A server started as a subprocess, speaking MCP over its stdin and stdout.

        Args:
            command: The executable (``npx``, ``uvx``, ``python``, a path).
            args: Its arguments.
            env: Extra environment variables (merged over the SDK's safe default environment).
            cwd: The working directory of the process.
            name: The namespace the model sees (default: the name the server reports).
            timeout: Seconds one tool call may take (None: no limit).
            connect_timeout: Seconds starting the server and listing its tools may take.
            protocol: ``"auto"`` (the 2026 discovery, falling back to the ``initialize``
                handshake), ``"legacy"`` (the handshake only), or a protocol version.
        """
        from mcp.client.stdio import StdioServerParameters

        params = StdioServerParameters(
            command=command,
            args=list(args),
            env=dict(env) if env else None,
            cwd=os.fspath(cwd) if cwd else None,
        )
        label = shlex.join([command, *args])
        default = os.path.basename(next((a for a in reversed(args) if not a.startswith("-")), command))
        default = re.sub(r"\.(py|js|mjs|ts)$", "", default) or command
        return cls(
            params,
            label=label,
            default_name=default,
            name=name,
            timeout=timeout,
            connect_timeout=connect_timeout,
            protocol=protocol,
        )

    @classmethod
    def http(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        timeout: float | None = 60.0,
        connect_timeout: float = 30.0,
        transport: str = "auto",
        protocol: str = "auto",
    ) -> MCPServer:
        """A server reached over HTTP: streamable HTTP, or SSE where the server still uses it.

        Args:
            url: The endpoint (``http://127.0.0.1:8000/mcp``; a path ending in ``/sse`` means SSE).
            headers: Sent with every request (``Authorization`` and the like).
            name: The namespace the model sees (default: the name the server reports).
            timeout: Seconds one tool call may take (None: no limit).
            connect_timeout: Seconds connecting and listing the tools may take.
            transport: ``"auto"``, ``"streamable-http"`` or ``"sse"``.
            protocol: As for ``stdio`` (SSE always uses the handshake).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if transport == "auto":
            transport = "sse" if parts.path.rstrip("/").endswith("/sse") else "streamable-http"
        if transport not in ("streamable-http", "sse"):
            raise ValueError(f"transport must be 'auto', 'streamable-http' or 'sse', not {transport!r}")
        target = _HTTPTarget(url=url, headers=dict(headers or {}), transport=transport)
        return cls(
            target,
            label=url,
            default_name=parts.hostname or "mcp",
            name=name,
            timeout=timeout,
            connect_timeout=connect_timeout,
            protocol="legacy" if transport == "sse" else protocol,
        )

    # -- the Tool protocol ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The namespace name: ``name=``, else the server's reported name (after connecting),
        else one derived from the command or URL."""
        if self._name is not None:
            return self._name
        reported = getattr(self.server_info, "name", None)
        return _namespace_name(reported or self._default_name)

    @name.setter
    def name(self, value: str) -> None:
        """Rename the namespace (before the first render: the rendered prompt keeps its names)."""
        self._name = _namespace_name(value)
        if self._spec is not None:
            self._spec = dataclasses.replace(self._spec, name=self._name)

    @property
    def spec(self) -> NamespaceSpec:
        """The namespace as harmony renders it; the first access starts the server and lists its
        tools, a later one re-lists them after the server said they changed (while it is up: a
        dead server is restarted by its next call, not by a look at its spec)."""
        session = self._session
        healthy = session is not None and session.broken is None
        if self._spec is None or (self._changed and healthy):
            try:
                self._submit(self._refresh(), self.connect_timeout + _GRACE_SECONDS)
            except (MCPConnectionError, TimeoutError):
                if self._spec is None:
                    raise
                # A later re-list that fails keeps the last listing; the next call restarts the server.
        assert self._spec is not None
        return self._spec

    def call(self, function: str, body: str) -> ToolOutput:
        """Run one tool call (blocking): validate, call the server, turn the result into text."""
        return self._submit(self._call(function, body))

    async def acall(self, function: str, body: str) -> ToolOutput:
        """The async form of ``call`` (the call runs on this server's own event loop)."""
        return await self._asubmit(self._call(function, body))

    def connect(self) -> MCPServer:
        """Start the server and list its tools now (instead of on first use); returns self.

        Raises MCPConnectionError (one sentence) when that fails.
        """
        _ = self.spec
        return self

    async def aconnect(self) -> MCPServer:
        """The async form of ``connect``."""
        await self._asubmit(self._refresh())
        return self

    def close(self) -> None:
        """End the session (a stdio server is stopped and reaped) and the background loop."""
        self._closed = True
        _OPEN.discard(self)
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is not threading.current_thread() and loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError, Exception):
                asyncio.run_coroutine_threadsafe(self._end_session(), loop).result(_CLOSE_SECONDS + 1)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(_CLOSE_SECONDS)
        self._loop = self._thread = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    async def aclose(self) -> None:
        """The async form of ``close``."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> MCPServer:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MCPServer:
        return await self.aconnect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MCPServer({self.label!r}, name={self.name!r})"

    # -- the background loop -------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"the MCP server {self.label!r} is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    try:
                        loop.run_forever()
                    finally:
                        with contextlib.suppress(Exception):
                            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                            for t in pending:
                                t.cancel()
                            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                        loop.close()

                thread = threading.Thread(target=run, name=f"mcp-{self._default_name}", daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
                _OPEN.add(self)
            return self._loop

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the server's loop and wait for it from sync code."""
        try:
            loop = self._ensure_loop()
        except BaseException:
            coro.close()
            raise
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("MCPServer's sync API was called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the MCP server {self.label!r} did not answer within {timeout:g} seconds"
            ) from None

    async def _asubmit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and await it from the caller's loop."""
        try:
            loop = self._ensure_loop()
        except BaseException:
            coro.close()
            raise
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    # -- on the background loop: sessions ------------------------------------------------

    async def _client(self) -> Any:
        """The open session's client, starting (or restarting) the server when there is none
        or the last one broke. Raises MCPConnectionError when that fails."""
        if self._session_lock is None:
            self._session_lock = asyncio.Lock()
        async with self._session_lock:
            session = self._session
            healthy = session is not None and session.broken is None and session.task is not None
            if healthy and session is not None and session.task is not None and not session.task.done():
                return session.client
            if session is not None:
                await self._end_session()
                self.restarts += 1
            session = _Session()
            session.task = asyncio.get_running_loop().create_task(self._run_session(session))
            self._session = session
            try:
                return await asyncio.wait_for(asyncio.shield(session.ready), self.connect_timeout)
            except TimeoutError:
                session.broken = "it did not finish connecting"
                await self._end_session()
                raise MCPConnectionError(
                    f"The MCP server {self.label!r} did not connect within {self.connect_timeout:g} seconds."
                ) from None
            except MCPConnectionError:
                raise
            except Exception as e:
                await self._end_session()
                verb = "reached" if isinstance(self._target, _HTTPTarget) else "started"
                raise MCPConnectionError(
                    f"The MCP server {self.label!r} could not be {verb}: {_describe(e)}."
                ) from None

    async def _run_session(self, session: _Session) -> None:
        import anyio

        try:
            async with self._open_client() as client, anyio.create_task_group() as group:
                session.client = client
                self.server_info = client.server_info
                self.instructions = client.instructions
                if _listens(client):
                    group.start_soon(self._listen, client)
                session.ready.set_result(client)
                await session.stop.wait()
                group.cancel_scope.cancel()
        except BaseException as e:
            if not session.ready.done():
                session.ready.set_exception(e if isinstance(e, Exception) else RuntimeError(_describe(e)))
            session.broken = session.broken or _describe(e)
            if not isinstance(e, Exception | asyncio.CancelledError):
                raise
        finally:
            session.client = None
            session.broken = session.broken or "the connection closed"

    @contextlib.asynccontextmanager
    async def _open_client(self) -> Any:
        from mcp import Client, Implementation, StdioServerParameters

        async with contextlib.AsyncExitStack() as stack:
            target: Any = self._target
            if isinstance(target, StdioServerParameters):
                from mcp.client.stdio import stdio_client

                target = stdio_client(target, errlog=cast(TextIO, self._stderr_file()))
            elif isinstance(target, _HTTPTarget) and target.transport == "sse":
                from mcp.client.sse import sse_client

                target = sse_client(target.url, headers=target.headers or None)
            elif isinstance(target, _HTTPTarget):
                from mcp.client.streamable_http import streamable_http_client
                from mcp.shared._httpx_utils import create_mcp_http_client

                http = await stack.enter_async_context(create_mcp_http_client(headers=target.headers or None))
                target = streamable_http_client(target.url, http_client=http)
            client = Client(
                target,
                mode=self.protocol,
                message_handler=self._on_message,
                client_info=Implementation(name="gptoss-agent", version=_version()),
                cache=None,
            )
            yield await stack.enter_async_context(client)

    def _stderr_file(self) -> IO[str]:
        """Where a stdio server's stderr goes: a file of our own (its tail explains a death),
        not the terminal the live view draws on."""
        if self._stderr is None:
            self._stderr = tempfile.TemporaryFile(mode="a+", encoding="utf-8", errors="replace")  # noqa: SIM115
        return self._stderr

    def _stderr_size(self) -> int:
        if self._stderr is None:
            return 0
        try:
            return os.fstat(self._stderr.fileno()).st_size
        except (OSError, ValueError):
            return 0

    def stderr_tail(self, since: int = 0, lines: int = 5) -> str:
        """The last lines a stdio server wrote to its stderr after byte offset ``since``
        ("" for HTTP servers)."""
        if self._stderr is None:
            return ""
        try:
            size = self._stderr_size()
            self._stderr.seek(max(since, size - 4096))
            text = self._stderr.read()
        except (OSError, ValueError):
            return ""
        return "\n".join(line.rstrip() for line in text.splitlines()[-lines:] if line.strip())

    async def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is None or session.task is None:
            return
        session.broken = session.broken or "closed"
        session.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(session.task), _CLOSE_SECONDS)
        except (TimeoutError, Exception, asyncio.CancelledError):
            session.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(session.task, 2.0)

    async def _on_message(self, message: Any) -> None:
        """The session's message handler: a tools list-changed notification marks the listing stale."""
        from mcp_types import ToolListChangedNotification

        if isinstance(message, ToolListChangedNotification):
            self._changed = True

    async def _listen(self, client: Any) -> None:
        """On 2026-era connections change events come over a ``subscriptions/listen`` stream."""
        with contextlib.suppress(Exception):
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    self._changed = True

    # -- on the background loop: listing and calling -------------------------------------

    async def _refresh(self) -> NamespaceSpec:
        """List the tools (all pages) and rebuild the namespace."""
        client = await self._client()
        self._changed = False
        try:
            listed: list[Any] = []
            cursor: str | None = None
            for _ in range(100):
                page = await asyncio.wait_for(client.list_tools(cursor=cursor), self.connect_timeout)
                listed.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        except Exception as e:
            if self._session is not None:
                self._session.broken = _describe(e)
            raise MCPConnectionError(
                f"The MCP server {self.label!r} did not list its tools: {_describe(e)}."
            ) from None
        self._build(listed)
        assert self._spec is not None
        return self._spec

    def _build(self, listed: Sequence[Any]) -> None:
        tools: dict[str, _Tool] = {}
        for t in listed:
            name = sanitize_name(t.name)
            base, n = name, 2
            while name in tools:
                name, n = f"{base}_{n}", n + 1
            schema = t.input_schema if isinstance(t.input_schema, dict) else {"type": "object"}
            try:
                validator: Validator | None = compile_validator(schema)
            except SchemaError:
                validator = None  # the server's schema is broken: let the server judge the arguments
            description = (t.description or getattr(t, "title", None) or "").strip()
            parameters = harmony_schema(schema)
            if not parameters.get("properties") and not parameters.get("additionalProperties"):
                parameters = None  # no arguments: rendered ``() => any``
            tools[name] = _Tool(
                name=name,
                server_name=t.name,
                spec=FunctionSpec(name=name, description=description, parameters=parameters),
                validator=validator,
            )
        self._tools = tools
        self._by_server_name = {t.server_name: t.name for t in tools.values()}
        description = self.instructions.strip() if isinstance(self.instructions, str) else None
        self._spec = NamespaceSpec(
            name=self.name,
            description=description or None,
            functions=tuple(t.spec for t in tools.values()),
        )

    async def _call(self, function: str, body: str) -> ToolOutput:
        function = function.removeprefix(f"{self.name}.")
        author = f"{self.name}.{function}"
        if self._spec is None or self._changed or (self._session is not None and self._session.broken):
            try:
                await self._refresh()  # first use, a changed listing, or a restart after a failure
            except MCPConnectionError as e:
                return _error(author, f"{e} The call was not made.", "server_unavailable")
        entry = self._tools.get(function) or self._tools.get(self._by_server_name.get(function, ""))
        if entry is None:
            names = ", ".join(f"{self.name}.{n}" for n in self._tools) or "none"
            return _error(author, f"Unknown tool {author!r}. This server's tools: {names}.", "unknown_tool")
        author = f"{self.name}.{entry.name}"
        try:
            arguments = check_arguments(body, entry.validator, name=author)
        except ArgumentError as e:
            return _error(author, str(e), e.kind)
        client = self._session.client if self._session is not None else None
        if client is None:  # the session ended between the refresh and now
            try:
                client = await self._client()
            except MCPConnectionError as e:
                return _error(author, f"{e} The call was not made.", "server_unavailable")
        started = time.monotonic()
        stderr_mark = self._stderr_size()
        try:
            result = await asyncio.wait_for(client.call_tool(entry.server_name, arguments), self.timeout)
        except TimeoutError:
            self._mark_broken("it did not answer in time")
            return _error(
                author,
                f"{author} did not answer within {self.timeout:g} seconds; the MCP server "
                f"{self.name!r} was stopped and will be restarted on the next call.",
                "timeout",
            )
        except Exception as e:
            if _is_transport_failure(e):
                self._mark_broken(_describe(e))
                tail = self.stderr_tail(stderr_mark)
                return _error(
                    author,
                    f"The MCP server {self.name!r} stopped during the call to {author} ({_describe(e)}); "
                    "it will be restarted on the next call." + (f" Its last words:\n{tail}" if tail else ""),
                    "server_died",
                )
            return _error(author, f"{author} failed: {_describe(e)}", "mcp_error")
        text, metadata = result_text(result)
        metadata["mcp_seconds"] = time.monotonic() - started
        if self._changed:  # the call changed the tool list: say so, the model may use the new ones
            note = await self._change_note()
            text = f"{text}\n\n{note}" if note and text else note or text
        if result.is_error:
            return ToolOutput(
                author=author,
                content=text or f"{author} reported an error without a message.",
                is_error=True,
                metadata={**metadata, "error": "tool_error"},
            )
        return ToolOutput(author=author, content=text, metadata=metadata)

    async def _change_note(self) -> str:
        """Re-list the tools and describe what changed (the developer message keeps the old list)."""
        before = {name: t.spec.description for name, t in self._tools.items()}
        try:
            await self._refresh()
        except MCPConnectionError:
            return ""
        added = [n for n in self._tools if n not in before]
        removed = [n for n in before if n not in self._tools]
        if not added and not removed:
            return ""
        lines = [f"[The MCP server {self.name!r} changed its tools.]"]
        for n in added:
            t = self._tools[n].spec
            params = ", ".join((t.parameters or {}).get("properties", {}))
            lines.append(
                f"New: {self.name}.{n}({params})" + (f" -- {t.description}" if t.description else "")
            )
        if removed:
            lines.append("Removed: " + ", ".join(f"{self.name}.{n}" for n in removed))
        return "\n".join(lines)

    def _mark_broken(self, why: str) -> None:
        if self._session is not None:
            self._session.broken = why


@dataclass(frozen=True)
class _HTTPTarget:
    url: str
    headers: dict[str, str]
    transport: str


def _listens(client: Any) -> bool:
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    try:
        tools = client.server_capabilities.tools
        return bool(client.protocol_version in MODERN_PROTOCOL_VERSIONS and tools and tools.list_changed)
    except Exception:
        return False


def _is_transport_failure(error: BaseException) -> bool:
    """Whether an exception from a call means the connection is gone (not the tool's answer)."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    if isinstance(error, MCPError):
        return error.code == CONNECTION_CLOSED
    return True  # OSError, an HTTP transport error, a closed stream: the session cannot go on


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        leaves = [e for e in _leaves(error) if not isinstance(e, asyncio.CancelledError)]
        if leaves:
            return "; ".join(dict.fromkeys(_describe(e) for e in leaves))
    message = " ".join(str(error).split())
    name = type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such command: {error.filename}"
    return (
        f"{name}: {message}"
        if message and name not in ("MCPError", "MCPConnectionError")
        else message or name
    )


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def _error(author: str, content: str, kind: str) -> ToolOutput:
    return ToolOutput(author=author, content=content, is_error=True, metadata={"error": kind})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptoss-agent")
    except PackageNotFoundError:
        return "0"


# --------------------------------------------------------------------------------------------
# The common ``mcpServers`` configuration


def load_mcp_config(source: str | os.PathLike[str] | Mapping[str, Any], **options: Any) -> list[MCPServer]:
    """The servers of an ``mcpServers`` configuration (the format Claude Desktop, Cursor and
    the Agents SDK share), from a file path or the parsed JSON.

        {"mcpServers": {
            "fs":   {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."]},
            "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}
        }}

    Each key becomes the namespace name. ``options`` (``timeout=...``) go to every server.
    Raises ValueError with one sentence for a malformed file.
    """
    if isinstance(source, Mapping):
        data: Any = source
        where = "the MCP configuration"
    else:
        where = os.fspath(source)
        try:
            with open(where, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise ValueError(f"cannot read the MCP configuration {where}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
    servers = data.get("mcpServers", data.get("servers")) if isinstance(data, Mapping) else None
    if not isinstance(servers, Mapping):
        raise ValueError(f'{where} has no "mcpServers" object')
    out: list[MCPServer] = []
    for key, entry in servers.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: the server {key!r} is not an object")
        if entry.get("disabled") is True:
            continue
        entry = copy.deepcopy(dict(entry))
        if "command" in entry:
            args = entry.get("args", [])
            env = entry.get("env")
            if not isinstance(entry["command"], str) or not isinstance(args, list):
                raise ValueError(
                    f'{where}: the server {key!r} needs "command" as a string and "args" as a list'
                )
            if env is not None and not isinstance(env, Mapping):
                raise ValueError(f'{where}: "env" of the server {key!r} must be an object')
            out.append(
                MCPServer.stdio(
                    entry["command"],
                    args=[str(a) for a in args],
                    env={str(k): str(v) for k, v in (env or {}).items()},
                    cwd=entry.get("cwd"),
                    name=str(key),
                    **options,
                )
            )
        elif "url" in entry:
            headers = entry.get("headers") or {}
            if not isinstance(headers, Mapping):
                raise ValueError(f'{where}: "headers" of the server {key!r} must be an object')
            kind = str(entry.get("type") or entry.get("transport") or "auto")
            kind = {"http": "streamable-http", "streamableHttp": "streamable-http"}.get(kind, kind)
            try:
                out.append(
                    MCPServer.http(
                        str(entry["url"]),
                        headers={str(k): str(v) for k, v in headers.items()},
                        name=str(key),
                        transport=kind,
                        **options,
                    )
                )
            except ValueError as e:
                raise ValueError(f"{where}: the server {key!r}: {e}") from None
        else:
            raise ValueError(f'{where}: the server {key!r} has neither "command" nor "url"')
    return out
