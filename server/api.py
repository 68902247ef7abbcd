"""The OpenAI-compatible HTTP server: ``create_app`` (ASGI) and ``gptoss-agent serve``.

    from gptoss_agent.server import create_app
    app = create_app(engine, tools=["python", "browser"], api_key="sk-local")
    # uvicorn.run(app, port=8000), or: gptoss-agent serve --model demo --tools python,browser

Routes: ``POST /v1/responses`` (``GET``/``DELETE /v1/responses/{id}``), ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /health``. Errors are OpenAI's error JSON with the status that fits:
400 naming the field, 401 for a missing or wrong key, 404 for an unknown response. The model's
mistakes never become a 500: the agent's loop recovers from malformed harmony, and a run that
ends without an answer is a response with ``status: incomplete`` or ``finish_reason: length``.

Built on Starlette and uvicorn (both already installed by the MCP SDK, which serves streamable
HTTP with them): routing, streaming responses and a lifespan are all this server needs, and
FastAPI's request models would duplicate the checks that name the offending field.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from gptoss_agent.server.chat import ChatRun, parse_chat_request
from gptoss_agent.server.common import BadRequest, Conversations, ServerConfig, dumps, now
from gptoss_agent.server.responses import ResponsesRun, parse_responses_request
from gptoss_agent.server.store import ReasoningMemory, ResponseStore
from gptoss_agent.tools.base import Tool

__all__ = ["create_app", "main"]


async def coalesced(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """``chunks`` joined into as few writes as keep up: a task reads ahead, and each write takes
    everything that arrived while the last one was sent (one HTTP chunk per token costs ~2 ms of
    event-loop work on a busy machine; a fast stream then needs far fewer). Closing this generator
    (the client went away) cancels the reading, which stops the agent's run."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(chunk)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        done = False
        while not done:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            done = batch[-1] is None
            text = "".join(c for c in batch if c is not None)
            if text:
                yield text
        await task  # the run's own errors surface here
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _builtin_factories(
    names: Sequence[str], sandbox: str = "auto", search: str | None = None
) -> dict[str, Callable[[], Tool]]:
    factories: dict[str, Callable[[], Tool]] = {}
    for name in names:
        if name == "python":

            def python() -> Tool:
                from gptoss_agent.tools import Python

                if sandbox == "auto":
                    return Python()
                from gptoss_agent.sandbox import open_sandbox

                return Python(open_sandbox(sandbox, start=False))

            factories["python"] = python
        elif name == "browser":

            def browser() -> Tool:
                from gptoss_agent.tools import Browser

                return Browser(search)

            factories["browser"] = browser
    return factories


def create_app(
    engine: Any,
    tools: Sequence[str | Tool] = (),
    *,
    api_key: str | None = None,
    max_concurrency: int = 4,
    store: str = ":memory:",
    model: str = "gpt-oss",
    enc: Any = None,
    builtins: dict[str, Callable[[], Tool]] | None = None,
    **agent_options: Any,
) -> Any:
    """The ASGI app serving ``engine``.

    Args:
        engine: Any engine (``LocalEngine``, ``RemoteEngine``, a scripted one).
        tools: ``"python"`` and ``"browser"`` (built-ins with one session per conversation:
            ``code_interpreter`` and ``web_search`` in the Responses API, always on in Chat
            Completions), and ``Tool`` objects every request may use (run here, shared).
        api_key: Required as ``Authorization: Bearer KEY`` on ``/v1/*`` when set.
        max_concurrency: Requests run at once; the rest wait their turn.
        store: The SQLite file of stored responses (``":memory:"``: this process only).
        model: The model name ``/v1/models`` reports.
        builtins: Factories of the built-ins by name, overriding the defaults
            (e.g. ``{"python": lambda: Python(timeout=30)}``).
        agent_options: Passed to every ``Agent`` (``max_steps``, ``timeout``, ``constrain``, ...).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    if enc is None:
        from gptoss_agent.model.tokenizer import load_tokenizer

        enc = load_tokenizer()
    names = [t for t in tools if isinstance(t, str)]
    unknown = sorted(set(names) - {"python", "browser"})
    if unknown:
        raise ValueError(f"unknown built-in tools {unknown}: use python, browser or Tool objects")
    config = ServerConfig(
        engine=engine,
        builtins={**_builtin_factories(names), **(builtins or {})},
        tools=[t for t in tools if not isinstance(t, str)],
        model=model,
        api_key=api_key,
        max_concurrency=max_concurrency,
        enc=enc,
        agent_options=agent_options,
    )
    responses = ResponseStore(store)
    memory = ReasoningMemory()
    conversations = Conversations()
    gate = asyncio.Semaphore(max_concurrency)

    def error(e: BadRequest) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def authorized(request: Request) -> bool:
        if api_key is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            raise BadRequest("the request body is not valid JSON") from None

    def streaming(events: AsyncIterator[str]) -> StreamingResponse:
        async def gated() -> AsyncIterator[str]:
            async with gate:
                async for chunk in coalesced(events):
                    yield chunk

        return StreamingResponse(
            gated(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if request.url.path.startswith("/v1/") and not authorized(request):
                return error(BadRequest("Incorrect API key provided.", status=401, code="invalid_api_key"))
            try:
                return await handler(request)
            except BadRequest as e:
                return error(e)

        return endpoint

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        entry = {"id": model, "object": "model", "created": now(), "owned_by": "gptoss-agent"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(request: Request) -> Response:
        run = ChatRun(config, parse_chat_request(await body_of(request), memory), memory, conversations)
        if run.request.stream:
            return streaming(run.stream())
        async with gate:
            return Response(dumps(await run.complete()), media_type="application/json")

    async def create_response(request: Request) -> Response:
        parsed = parse_responses_request(await body_of(request), responses, memory, config)
        run = ResponsesRun(config, parsed, responses, memory, conversations)
        if parsed.stream:

            async def sse() -> AsyncIterator[str]:
                async for event in run.events():
                    yield f"event: {event['type']}\ndata: {dumps(event)}\n\n"

            return streaming(sse())
        async with gate:
            return Response(dumps(await run.complete()), media_type="application/json")

    async def response_by_id(request: Request) -> Response:
        response_id = request.path_params["response_id"]
        if request.method == "DELETE":
            if not responses.delete(response_id):
                raise BadRequest(f"No response found with id '{response_id}'.", "response_id", 404)
            return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
        stored = responses.get(response_id)
        if stored is None:
            raise BadRequest(f"No response found with id '{response_id}'.", "response_id", 404)
        return Response(dumps(stored.response), media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            conversations.close()
            responses.close()

    routes = [
        Route("/health", guarded(health), methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        Route("/v1/responses", guarded(create_response), methods=["POST"]),
        Route("/v1/responses/{response_id}", guarded(response_by_id), methods=["GET", "DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.config = config
    return app


# -- gptoss-agent serve -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gptoss-agent serve",
        description="Serve gpt-oss as an OpenAI-compatible API (Responses and Chat Completions) that runs "
        "the agent: the built-in python and browser execute on this server.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint directory, vLLM server URL or 'demo' "
        "(default $GPTOSS_MODEL, else gpt-oss-20b from the Hugging Face cache)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--tools",
        default="browser,python",
        help="built-ins to offer (browser,python) and module:function tools; 'none' for none",
    )
    p.add_argument(
        "--api-key", default=None, help="require this bearer token on /v1/* (default $GPTOSS_SERVER_KEY)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow listening beyond loopback without an API key"
    )
    p.add_argument("--max-concurrency", type=int, default=4, help="requests run at once (the rest wait)")
    p.add_argument(
        "--store",
        default="~/.cache/gptoss-agent/responses.sqlite3",
        help="SQLite file of stored responses (':memory:' keeps none across restarts)",
    )
    p.add_argument("--sandbox", choices=["auto", "docker", "bubblewrap"], default="auto")
    p.add_argument("--search", default=None, help="the browser's search backend")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--remote-key", dest="api_key_remote", default=None, help="bearer token of a vLLM server URL"
    )
    return p


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """``gptoss-agent serve``; the user's mistakes raise the CLI's ``UserError``."""
    import os

    from gptoss_agent.agent.cli import UserError, _custom_tool, _load_engine

    args = build_parser().parse_args(argv)
    key = args.api_key or os.environ.get("GPTOSS_SERVER_KEY")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be between 1 and 65535, not {args.port}")
    if args.max_concurrency < 1:
        raise UserError("--max-concurrency must be at least 1")
    if not _loopback(args.host) and key is None and not args.insecure:
        raise UserError(
            f"refusing to listen on {args.host} without an API key: give --api-key (or $GPTOSS_SERVER_KEY), "
            "or --insecure to serve anyone who can reach it"
        )
    tools: list[Any] = []
    for name in (n.strip() for n in args.tools.split(",")):
        if not name or name == "none":
            continue
        tools.append(name if name in ("python", "browser") else _custom_tool(name))
    args.api_key = args.api_key_remote
    engine, enc = _load_engine(args, quiet=False)
    import uvicorn

    builtins = _builtin_factories([t for t in tools if isinstance(t, str)], args.sandbox, args.search)
    app = create_app(
        engine,
        tools,
        api_key=key,
        max_concurrency=args.max_concurrency,
        store=args.store,
        model=os.path.basename(str(args.model or "gpt-oss").rstrip("/")) or "gpt-oss",
        enc=enc,
        builtins=builtins,
    )
    print(f"gptoss-agent: serving on http://{args.host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
