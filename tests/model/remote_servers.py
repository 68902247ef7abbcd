"""Real HTTP servers on 127.0.0.1 for the remote engine's tests and benchmark.

``ScriptedServer`` speaks vLLM's wire format (``/v1/models``, ``/v1/completions`` with server-sent
events in chunked transfer encoding, vLLM's error bodies) and misbehaves on request: a 5xx, an
error event mid-stream, a dropped connection, a stall, malformed JSON. ``DroppingProxy`` sits in
front of a real server and cuts the connection after a number of events, as a server that dies
mid-stream would.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
from vllm_server import free_port

__all__ = ["MODEL", "DroppingProxy", "Reply", "ScriptedServer", "free_port"]

MODEL = "gpt-oss-scripted"


class _LocalServer:
    """A threaded HTTP server on 127.0.0.1 and a free port, serving while its ``with`` block runs."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Reply:
    """What the scripted server does with one ``POST /v1/completions``."""

    tokens: list[int] = field(default_factory=lambda: [11, 12, 13])
    status: int = 200
    error: str = ""
    finish_reason: str = "length"
    stop_reason: int | None = None
    include_stop_in_ids: bool = True
    fail_after: int | None = None
    """Events sent before the failure below (None: no failure)."""
    failure: str = ""
    """"error_event" (vLLM's in-stream error), "drop" (close the socket), "stall" (sleep), "garbage"."""
    stall: float = 0.0
    usage: dict[str, Any] | None = None


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


class ScriptedServer(_LocalServer):
    """A vLLM look-alike on 127.0.0.1 whose completion replies follow a script.

    ``replies`` are consumed one per completion request (the last one repeats). Each request's
    JSON body and headers are kept in ``requests``. ``api_key`` makes it demand a bearer token.
    """

    def __init__(
        self,
        replies: list[Reply] | None = None,
        *,
        api_key: str | None = None,
        max_model_len: int = 4096,
        models_status: int = 200,
        probe: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None,
    ) -> None:
        self.replies = list(replies or [Reply()])
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.api_key = api_key
        self.max_model_len = max_model_len
        self.models_status = models_status
        self.probe = probe
        super().__init__(self._handler())

    def completions(self) -> list[dict[str, Any]]:
        """Bodies of the completion requests, probe excluded."""
        return [body for body, _ in self.requests if body.get("prompt") != [0]]

    def _next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})

            def _authorized(self) -> bool:
                if outer.api_key and self.headers.get("Authorization") != f"Bearer {outer.api_key}":
                    self._json(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path != "/v1/models" or outer.models_status != 200:
                    self._json(
                        outer.models_status if self.path == "/v1/models" else 404, {"detail": "Not Found"}
                    )
                    return
                card = {"id": MODEL, "object": "model", "root": MODEL, "max_model_len": outer.max_model_len}
                self._json(200, {"object": "list", "data": [card]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.requests.append((body, dict(self.headers)))
                if not self._authorized():
                    return
                if self.path != "/v1/completions":
                    self._json(404, {"detail": "Not Found"})
                    return
                if body.get("prompt") == [0] and body.get("max_tokens") == 1:  # the vocabulary probe
                    verdict = outer.probe(body) if outer.probe else None
                    if verdict:
                        self._error(*verdict)
                    else:
                        self._json(200, _completion([5], "length", None, body))
                    return
                reply = outer._next_reply()
                if reply.status != 200:
                    self._error(reply.status, reply.error or "Internal Server Error")
                    return
                if reply.failure == "stall" and reply.fail_after is None:
                    time.sleep(reply.stall)
                if not body.get("stream"):
                    ids = reply.tokens + (
                        [reply.stop_reason] if reply.stop_reason and reply.include_stop_in_ids else []
                    )
                    self._json(
                        200, _completion(ids, reply.finish_reason, reply.stop_reason, body, reply.usage)
                    )
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for event in _events(reply, body):
                    if event is None:
                        self.close_connection = True
                        return  # dropped: no terminating chunk, the client sees a broken body
                    self._chunk(event)
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler


def _completion(
    ids: list[int], finish: str, stop_reason: int | None, body: dict[str, Any], usage: Any = None
) -> dict[str, Any]:
    choice = {"index": 0, "text": "", "finish_reason": finish, "stop_reason": stop_reason, "token_ids": ids}
    prompt = body.get("prompt") or []
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": MODEL,
        "choices": [choice],
        "usage": usage or {"prompt_tokens": len(prompt), "completion_tokens": len(ids)},
    }


def _events(reply: Reply, body: dict[str, Any]) -> Iterator[bytes | None]:
    """The SSE events of one streamed reply, a None where the connection drops."""
    base = {"id": "cmpl-1", "object": "text_completion", "model": MODEL}
    ids = list(reply.tokens)
    if reply.stop_reason is not None and reply.include_stop_in_ids:
        ids.append(reply.stop_reason)
    for i, token in enumerate(ids):
        if reply.fail_after is not None and i == reply.fail_after:
            if reply.failure == "error_event":
                yield _sse({"error": {"message": "EngineCore encountered an issue.", "code": 500}})
                yield b"data: [DONE]\n\n"
                return
            if reply.failure == "drop":
                yield None
                return
            if reply.failure == "stall":
                time.sleep(reply.stall)
            if reply.failure == "garbage":
                yield b"data: {this is not json\n\n"
                return
        last = i == len(ids) - 1
        choice = {
            "index": 0,
            "text": "",
            "finish_reason": reply.finish_reason if last else None,
            "stop_reason": reply.stop_reason if last else None,
            "token_ids": [token],
        }
        if i == 0:
            choice["prompt_token_ids"] = body.get("prompt")
        yield _sse({**base, "choices": [choice]})
    if not ids:
        yield _sse({**base, "choices": [{"index": 0, "text": "", "finish_reason": reply.finish_reason}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt = body.get("prompt") or []
        usage = reply.usage or {"prompt_tokens": len(prompt), "completion_tokens": len(ids)}
        yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"




class DroppingProxy(_LocalServer):
    """Forwards to ``upstream``; completion streams are cut after ``after_events`` events.

    Every other request passes through whole. The cut closes the client's socket without ending
    the chunked body, exactly what a server killed mid-stream leaves behind.
    """

    def __init__(self, upstream: str, after_events: int) -> None:
        self.upstream = upstream
        self.after_events = after_events
        super().__init__(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else {}
                with (
                    httpx.Client(timeout=60) as client,
                    client.stream(
                        method,
                        outer.upstream + self.path,
                        content=raw or None,
                        headers={"Content-Type": "application/json"},
                    ) as upstream,
                ):
                    self.send_response(upstream.status_code)
                    streaming = bool(body.get("stream")) and upstream.status_code == 200
                    self.send_header("Content-Type", upstream.headers.get("content-type", "application/json"))
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    events = 0
                    for line in upstream.iter_lines():
                        if streaming and line.startswith("data:"):
                            if events == outer.after_events:
                                self.close_connection = True
                                return
                            events += 1
                        data = (line + "\n").encode()
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler
