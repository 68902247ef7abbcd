"""``RemoteEngine``: the ``Engine`` seam over a vLLM server's OpenAI-compatible API.

The runtime still renders harmony and parses the raw tokens itself; the server only turns token
ids into token ids. Each call is one ``POST /v1/completions`` whose prompt is the list of token
ids, with ``return_token_ids`` (so the reply carries ids, not text), ``stop_token_ids`` and
``ignore_eos`` (so generation ends exactly where ``LocalEngine``'s would), streamed as server-sent
events. That works against a server started with ``--skip-tokenizer-init`` and against a normal one.

Several agents can share one server: ``agenerate`` streams over one pooled ``httpx.AsyncClient``,
which is how vLLM's continuous batching pays off. Every request has a deadline (connect and
read timeouts); a 5xx or a dropped connection before the first token is retried once, never after
(no token is ever yielded twice). Failures surface as ``RemoteEngineError`` subclasses that say
what to do.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from gptoss_agent.model.engine import ContextStats, Deadline, GenerationStats, Sampling

__all__ = [
    "ContextTooLong",
    "NotGptOss",
    "RemoteConfig",
    "RemoteEngine",
    "RemoteEngineError",
    "RemoteTimeout",
    "ServerError",
    "ServerUnavailable",
    "StreamInterrupted",
]

API_KEY_ENV = "GPTOSS_API_KEY"
GPT_OSS_VOCAB = 201088
"""Rows of gpt-oss's embedding: o200k_harmony's ids are 0..201087."""


class RemoteEngineError(RuntimeError):
    """The remote engine could not do what was asked; the message says why and what to try."""


class ServerUnavailable(RemoteEngineError):
    """Nothing answers at the URL, or something that is not a vLLM/OpenAI server does."""


class NotGptOss(RemoteEngineError):
    """The server serves a model whose vocabulary is not gpt-oss's (o200k_harmony)."""


class ContextTooLong(RemoteEngineError):
    """The prompt (plus the tokens asked for) does not fit in the served model's context."""


class RemoteTimeout(RemoteEngineError):
    """The server did not answer (or send the next token) within the deadline."""


class ServerError(RemoteEngineError):
    """The server answered with an error (5xx after the retry, 4xx, or a malformed reply)."""


class StreamInterrupted(RemoteEngineError):
    """The stream broke after tokens were already yielded; it is not retried, so nothing repeats.

    ``tokens`` holds what had been yielded before the break.
    """

    def __init__(self, message: str, tokens: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.tokens = list(tokens)


@dataclass(frozen=True, kw_only=True)
class RemoteConfig:
    """How ``RemoteEngine`` talks to the server."""

    model: str | None = None
    """Served model name; None takes the first one ``/v1/models`` lists."""
    api_key: str | None = None
    """Bearer token (vLLM's ``--api-key``); None reads ``GPTOSS_API_KEY``."""
    stream: bool = True
    """Stream tokens as server-sent events; False asks for the whole completion at once."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    read_timeout: float = 300.0
    """Seconds to wait for the response to start and then for each next chunk (covers prefill)."""
    retries: int = 1
    """Retries of a 5xx or a dropped connection that happened before any token was yielded."""
    retry_delay: float = 0.5
    """Seconds before a retry."""
    check_vocab: bool = True
    """On connect, send a one-token probe that the server rejects unless the model's vocabulary
    holds every o200k_harmony id (so a model that is not gpt-oss is caught before any real work)."""
    max_connections: int = 64
    """Connection pool size of the shared async client (concurrent streams)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra request fields passed through to vLLM (for example ``{"priority": 1}``)."""
    max_model_len: int | None = None
    """The model's context in tokens, for a server that does not report it in ``/v1/models`` (or
    to use less than it reports); None takes the server's ``max_model_len``."""


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` says about the model being used."""

    name: str
    max_model_len: int | None


class RemoteEngine:
    """An ``Engine`` whose model runs in a vLLM server (or any server speaking vLLM's token-id API).

    >>> engine = RemoteEngine("http://127.0.0.1:8000")            # doctest: +SKIP
    >>> list(engine.generate(ids, stop={200002, 200012}, max_tokens=64))  # doctest: +SKIP

    ``generate`` is synchronous; ``agenerate`` is its asyncio twin over a shared pooled client, for
    many agents on one server. Both fill ``last_stats``, which is kept per thread and per asyncio
    task (so agents sharing one engine each see their own call's numbers), or the ``stats`` object
    passed in.
    """

    def __init__(self, url: str, config: RemoteConfig | None = None, **overrides: Any) -> None:
        """``url`` is the server's base address, with or without the trailing ``/v1``.

        Keyword overrides set ``RemoteConfig`` fields: ``RemoteEngine(url, api_key=..., model=...)``.
        """
        cfg = config or RemoteConfig()
        if overrides:
            cfg = RemoteConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        self.base_url = _base_url(url)
        self._stats: contextvars.ContextVar[GenerationStats | None] = contextvars.ContextVar(
            "remote_engine_stats", default=None
        )
        key = cfg.api_key if cfg.api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        self._limits = httpx.Limits(
            max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections
        )
        self._client: httpx.Client | None = None
        self._aclients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._served: ServedModel | None = None
        self._lock = threading.Lock()

    last_stats = ContextStats()
    """Numbers of the latest call made in this thread or asyncio task."""

    def __repr__(self) -> str:
        return f"RemoteEngine({self.base_url!r}, model={self.config.model!r})"

    # -- connection ---------------------------------------------------------------------------

    @property
    def served_model(self) -> ServedModel:
        """The served model (name, context length), discovered on first use."""
        return self._connect()

    @property
    def context_length(self) -> int | None:
        """The served model's context (vLLM's ``max_model_len``); None if the server does not say."""
        return self._connect().max_model_len

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(headers=self._headers, timeout=self._timeout, limits=self._limits)
        return self._client

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            for old in [lp for lp in self._aclients if lp.is_closed()]:
                del self._aclients[old]
            client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits)
            self._aclients[loop] = client
        return client

    def _connect(self) -> ServedModel:
        """Discover the model (``GET /v1/models``) and check it is gpt-oss, once."""
        with self._lock:
            if self._served is None:
                served = self._discover()
                if self.config.check_vocab:
                    self._probe_vocab(served)
                self._served = served
            return self._served

    def _discover(self) -> ServedModel:
        url = f"{self.base_url}/v1/models"
        try:
            response = self._sync_client().get(url)
        except httpx.TimeoutException as exc:
            raise RemoteTimeout(
                f"{url} did not answer within {self.config.connect_timeout:g}s: {exc}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ServerUnavailable(
                f"cannot reach a model server at {self.base_url} ({exc}); is vLLM running there "
                "(python -m vllm.entrypoints.openai.api_server ...)?"
            ) from exc
        if response.status_code in (401, 403):
            raise ServerError(_auth_message(response, self._headers))
        if response.status_code == 404:
            raise ServerUnavailable(
                f"{url} returned 404: {self.base_url} does not look like an OpenAI-compatible server "
                "(give the base URL, e.g. http://host:8000)"
            )
        if response.status_code >= 400:
            raise ServerError(f"{url} returned {response.status_code}: {_error_text(response)}")
        try:
            cards = response.json()["data"]
            names = [str(card["id"]) for card in cards]
        except (ValueError, KeyError, TypeError) as exc:
            raise ServerUnavailable(
                f"{url} did not return an OpenAI model list: {response.text[:200]!r}"
            ) from exc
        if not names:
            raise ServerError(f"{url} lists no models")
        wanted = self.config.model or names[0]
        if wanted not in names:
            raise ServerError(f"the server at {self.base_url} serves {names}, not {wanted!r}")
        card = cards[names.index(wanted)]
        length = card.get("max_model_len")
        served_len = int(length) if isinstance(length, int) else None
        mine = self.config.max_model_len
        if mine is not None:
            served_len = mine if served_len is None else min(mine, served_len)
        return ServedModel(name=wanted, max_model_len=served_len)

    def _probe_vocab(self, served: ServedModel) -> None:
        """One-token request whose stop list holds gpt-oss's last token id.

        vLLM checks ``stop_token_ids`` against the model's vocabulary and answers 400 when an id is
        outside it. (Probing with a *prompt* id would be unsafe: a server started with
        ``--skip-tokenizer-init`` does not check prompt ids, and an out-of-range one kills its engine.)
        """
        body = {
            "model": served.name,
            "prompt": [0],
            "max_tokens": 1,
            "temperature": 0.0,
            "stop_token_ids": [GPT_OSS_VOCAB - 1],
        }
        try:
            response = self._sync_client().post(f"{self.base_url}/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url, self.config) from exc
        if response.status_code in (401, 403):
            raise ServerError(_auth_message(response, self._headers))
        if response.status_code == 400 and _looks_out_of_vocab(_error_text(response)):
            raise NotGptOss(
                f"the model {served.name!r} at {self.base_url} is not gpt-oss: its vocabulary is smaller "
                f"than o200k_harmony's {GPT_OSS_VOCAB} tokens ({_error_text(response)})"
            )
        if response.status_code >= 400:
            raise ServerError(
                f"a one-token test request to {served.name!r} at {self.base_url} failed with "
                f"{response.status_code}: {_error_text(response)}"
            )

    def close(self) -> None:
        """Close the synchronous client (async clients close with ``aclose``)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close every client this engine opened."""
        self.close()
        clients, self._aclients = self._aclients, {}
        for client in clients.values():
            await client.aclose()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
        stats: GenerationStats | None = None,
        deadline: Deadline | None = None,
    ) -> Iterator[int]:
        """Stream generated token ids; stops after a token in ``stop``, ``max_tokens``, or the context end.

        The prompt is checked (and the server discovered) at the call; the request starts with
        the first ``next``. ``deadline``: the request's timeouts shrink to the time it leaves, and
        once it expires (or is cancelled) the stream closes its connection (vLLM then aborts the
        request) and ends quietly.
        """
        return self._stream(self._prepare(prompt_ids, stop, sampling, max_tokens, stats), deadline)

    def _timeout_for(self, deadline: Deadline | None) -> httpx.Timeout:
        """The configured timeouts, none longer than the deadline leaves (plus a moment)."""
        left = deadline.remaining() if deadline is not None else None
        if left is None:
            return self._timeout
        left += 0.25  # let the deadline, not the read, end a stream at the limit
        cfg = self.config
        return httpx.Timeout(min(cfg.read_timeout, left), connect=min(cfg.connect_timeout, left))

    def _stream(self, call: _Call, deadline: Deadline | None = None) -> Iterator[int]:
        if call.max_tokens == 0:
            return
        client = self._sync_client()
        for attempt in range(self.config.retries + 1):
            state = _Stream(call)
            if deadline is not None and deadline.expired():
                return
            timeout = self._timeout_for(deadline)
            try:
                if self.config.stream:
                    with client.stream("POST", call.url, json=call.body, timeout=timeout) as response:
                        if response.status_code >= 400:
                            response.read()
                            state.fail_status(response)
                        for line in response.iter_lines():
                            yield from state.feed_line(line)
                            if state.finished:
                                break
                            if deadline is not None and deadline.expired():
                                return  # leaving the block closes the connection: the server aborts
                else:
                    response = client.post(call.url, json=call.body, timeout=timeout)
                    if response.status_code >= 400:
                        state.fail_status(response)
                    yield from state.feed_json(response)
                yield from state.finish()
                return
            except _Retryable as exc:
                self._give_up_unless_retry(exc, state, attempt)
            except httpx.HTTPError as exc:
                if deadline is not None and deadline.expired():
                    return  # the deadline, not the server, ended it
                self._give_up_unless_retry(self._transport_failure(exc), state, attempt)
            time.sleep(self.config.retry_delay)

    async def agenerate(
        self,
        prompt_ids: Sequence[int],
        *,
        stop: Collection[int] = (),
        sampling: Sampling | None = None,
        max_tokens: int | None = None,
        stats: GenerationStats | None = None,
        deadline: Deadline | None = None,
    ) -> AsyncIterator[int]:
        """``generate`` for asyncio: concurrent calls share one pooled connection set."""
        if self._served is None:
            await asyncio.to_thread(self._connect)
        call = self._prepare(prompt_ids, stop, sampling, max_tokens, stats)
        if call.max_tokens == 0:
            return
        client = self._async_client()
        for attempt in range(self.config.retries + 1):
            state = _Stream(call)
            if deadline is not None and deadline.expired():
                return
            timeout = self._timeout_for(deadline)
            try:
                if self.config.stream:
                    async with client.stream("POST", call.url, json=call.body, timeout=timeout) as response:
                        if response.status_code >= 400:
                            await response.aread()
                            state.fail_status(response)
                        async for line in response.aiter_lines():
                            for token in state.feed_line(line):
                                yield token
                            if state.finished:
                                break
                            if deadline is not None and deadline.expired():
                                return
                else:
                    response = await client.post(call.url, json=call.body, timeout=timeout)
                    if response.status_code >= 400:
                        state.fail_status(response)
                    for token in state.feed_json(response):
                        yield token
                for token in state.finish():
                    yield token
                return
            except _Retryable as exc:
                self._give_up_unless_retry(exc, state, attempt)
            except httpx.HTTPError as exc:
                if deadline is not None and deadline.expired():
                    return
                self._give_up_unless_retry(self._transport_failure(exc), state, attempt)
            await asyncio.sleep(self.config.retry_delay)

    def _transport_failure(self, exc: httpx.HTTPError) -> _Retryable:
        error = _transport_error(exc, self.base_url, self.config)
        return _Retryable(error, retryable=not isinstance(error, RemoteTimeout))

    def _give_up_unless_retry(self, exc: _Retryable, state: _Stream, attempt: int) -> None:
        """Raise the final error unless this failure may be retried (nothing yielded yet)."""
        error = exc.error
        if state.yielded:
            raise StreamInterrupted(
                f"the stream from {self.base_url} broke after {len(state.yielded)} tokens and is not "
                f"retried (tokens were already delivered): {error}",
                state.yielded,
            ) from error
        if attempt >= self.config.retries or not exc.retryable:
            raise error

    def _prepare(
        self,
        prompt_ids: Sequence[int],
        stop: Collection[int],
        sampling: Sampling | None,
        max_tokens: int | None,
        stats: GenerationStats | None,
    ) -> _Call:
        served = self._connect() if self._served is None else self._served
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("prompt_ids is empty")
        bad = [t for t in prompt if not 0 <= t < GPT_OSS_VOCAB]
        if bad:
            # Checked here because a --skip-tokenizer-init server does not, and crashes on them.
            raise ValueError(f"prompt ids outside gpt-oss's vocabulary (0..{GPT_OSS_VOCAB - 1}): {bad[:5]}")
        room = None if served.max_model_len is None else served.max_model_len - len(prompt)
        if room is not None and room <= 0:
            raise ContextTooLong(
                f"the prompt has {len(prompt)} tokens; {served.name!r} takes at most {served.max_model_len}"
            )
        if max_tokens is not None and max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        limit = max_tokens if room is None else room if max_tokens is None else min(max_tokens, room)
        sampling = sampling or Sampling()
        body: dict[str, Any] = {
            "model": served.name,
            "prompt": prompt,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop_token_ids": sorted({int(t) for t in stop}),
            "ignore_eos": True,
            "return_token_ids": True,
            "top_k": 0,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "skip_special_tokens": False,
            "stream": self.config.stream,
            **self.config.extra_body,
        }
        if limit is not None:
            body["max_tokens"] = limit
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.config.stream:
            body["stream_options"] = {"include_usage": True}
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(prompt)
        stats.prefilled_tokens = len(prompt)
        self.last_stats = stats
        return _Call(
            url=f"{self.base_url}/v1/completions",
            body=body,
            stop=frozenset(int(t) for t in stop),
            max_tokens=limit,
            stats=stats,
            base_url=self.base_url,
            model=served,
        )


# -- one request's decoding, shared by the sync and async paths ---------------------------------


@dataclass
class _Call:
    url: str
    body: dict[str, Any]
    stop: frozenset[int]
    max_tokens: int | None
    stats: GenerationStats
    base_url: str
    model: ServedModel


class _Retryable(Exception):
    def __init__(self, error: RemoteEngineError, retryable: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


class _Stream:
    """Turns one response (SSE lines or a JSON body) into token ids and stats."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.yielded: list[int] = []
        self.finished = False
        self.finish_reason: str | None = None
        self.stop_reason: object = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None

    def fail_status(self, response: httpx.Response) -> None:
        """Raise the error an HTTP error status means (5xx retryable)."""
        status, text = response.status_code, _error_text(response)
        if status in (401, 403):
            raise _Retryable(ServerError(_auth_message(response, {})), retryable=False)
        if status == 400 and _looks_too_long(text):
            raise _Retryable(ContextTooLong(f"{self.call.model.name!r}: {text}"), retryable=False)
        if status == 400 and _looks_out_of_vocab(text):
            raise _Retryable(NotGptOss(f"{self.call.model.name!r} is not gpt-oss: {text}"), retryable=False)
        if status == 404:
            raise _Retryable(
                ServerError(f"{self.call.url} returned 404 ({text}); wrong URL or model name?"),
                retryable=False,
            )
        error = ServerError(f"{self.call.base_url} returned HTTP {status}: {text}")
        raise _Retryable(error, retryable=status >= 500 or status == 429)

    def feed_line(self, line: str) -> list[int]:
        """One line of the SSE stream: the token ids it brings."""
        if not line.startswith("data:"):
            return []  # blank separators, comments (": ping"), event/id fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise _Retryable(ServerError(f"the server sent a malformed event: {data[:200]!r}")) from exc
        return self._feed_chunk(chunk)

    def feed_json(self, response: httpx.Response) -> list[int]:
        """A whole non-streamed completion: its token ids."""
        try:
            chunk = response.json()
        except ValueError as exc:
            raise _Retryable(ServerError(f"the server sent malformed JSON: {response.text[:200]!r}")) from exc
        self.finished = True
        return self._feed_chunk(chunk)

    def _feed_chunk(self, chunk: Any) -> list[int]:
        if not isinstance(chunk, dict):
            raise _Retryable(ServerError(f"the server sent an unexpected event: {str(chunk)[:200]!r}"))
        if "error" in chunk or chunk.get("object") == "error":
            error = chunk.get("error", chunk)
            message = error.get("message", error) if isinstance(error, dict) else error
            raise _Retryable(ServerError(f"the server failed mid-request: {message}"))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._take_usage(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise _Retryable(ServerError(f"the reply has no choices: {str(chunk)[:200]!r}"))
        fresh: list[int] = []
        for choice in choices:
            ids = choice.get("token_ids")
            if ids is None and choice.get("text"):
                raise _Retryable(
                    ServerError(
                        "the server returned text but no token ids: it must honour "
                        "return_token_ids (vLLM >= 0.10.2)"
                    ),
                    retryable=False,
                )
            for token in ids or ():
                if self.finished_by_limit():
                    break
                fresh.append(self._emit(int(token)))
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        return fresh

    def _emit(self, token: int) -> int:
        """Count ``token`` as delivered (it is yielded right after) and update the stats."""
        now = time.perf_counter()
        stats = self.call.stats
        if self.first_token_at is None:
            self.first_token_at = now
            stats.prefill_seconds = now - self.started
        self.yielded.append(token)
        stats.generated_tokens = len(self.yielded)
        stats.decode_seconds = now - self.first_token_at
        return token

    def finished_by_limit(self) -> bool:
        last_is_stop = bool(self.yielded) and self.yielded[-1] in self.call.stop
        limit = self.call.max_tokens
        return last_is_stop or (limit is not None and len(self.yielded) >= limit)

    def finish(self) -> list[int]:
        """After the last event: the stop token if the server left it out; checks completeness."""
        if not self.finished and self.finish_reason is None:
            raise _Retryable(
                ServerError("the stream ended without a finish reason (connection closed early)")
            )
        stopped_on = self.stop_reason
        if (
            self.finish_reason == "stop"
            and isinstance(stopped_on, int)
            and stopped_on in self.call.stop
            and not self.finished_by_limit()
        ):
            return [self._emit(stopped_on)]
        return []

    def _take_usage(self, usage: dict[str, Any]) -> None:
        stats = self.call.stats
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(usage.get("prompt_tokens"), int):
            stats.prompt_tokens = usage["prompt_tokens"]
        if isinstance(cached, int):
            stats.reused_tokens = cached
        stats.prefilled_tokens = stats.prompt_tokens - stats.reused_tokens


# -- helpers ------------------------------------------------------------------------------------


def _base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a remote engine URL starts with http:// or https://, got {url!r}")
    for suffix in ("/v1/completions", "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:300]


def _auth_message(response: httpx.Response, headers: dict[str, str]) -> str:
    hint = (
        "the API key was rejected"
        if headers or "authorization" in {k.lower() for k in response.request.headers}
        else f"the server wants an API key: pass api_key= or set {API_KEY_ENV}"
    )
    return f"{response.request.url} returned {response.status_code}: {hint}"


def _looks_too_long(text: str) -> bool:
    text = text.lower()
    return any(
        phrase in text for phrase in ("maximum context length", "context length", "too long", "max_model_len")
    )


def _looks_out_of_vocab(text: str) -> bool:
    text = text.lower()
    return "out-of-vocab" in text or "out of vocab" in text


def _transport_error(exc: httpx.HTTPError, base_url: str, config: RemoteConfig) -> RemoteEngineError:
    if isinstance(exc, httpx.ConnectTimeout):
        return RemoteTimeout(f"connecting to {base_url} took longer than {config.connect_timeout:g}s")
    if isinstance(exc, httpx.TimeoutException):
        return RemoteTimeout(
            f"{base_url} sent nothing for {config.read_timeout:g}s (read_timeout); the server may be "
            "overloaded or stuck"
        )
    if isinstance(exc, httpx.ConnectError):
        return ServerUnavailable(f"cannot connect to {base_url}: {exc}; is the vLLM server running?")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ServerError(f"the connection to {base_url} was dropped: {exc or type(exc).__name__}")
    return ServerError(f"HTTP error talking to {base_url}: {exc or type(exc).__name__}")
