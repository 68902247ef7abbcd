"""Where the server keeps what a conversation needs across requests.

* ``ResponseStore``: stored Responses (``store: true``), in SQLite: the response object the
  client saw and the whole conversation behind it (harmony messages with the token ids the model
  generated, its reasoning and its pending call included), so ``previous_response_id`` continues
  exactly where the model stopped and the engine's cache is reused.
* ``ReasoningMemory``: for stateless Chat Completions clients, which send back an assistant's tool
  call without the reasoning that led to it: the messages the model generated up to that call,
  keyed by the call's id, so the next request puts them back (bounded, least recently used first).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptoss_agent.agent.messages import Message
from gptoss_agent.tools.text import json_text

__all__ = ["ReasoningMemory", "ResponseStore", "Stored"]


@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[Message]
    conversation: str
    """The id of the conversation's first response (its built-in tools' sessions are keyed by it)."""


class ResponseStore:
    """Stored responses in one SQLite database (``":memory:"`` keeps them in this process only)."""

    def __init__(self, path: str | Path = ":memory:"):
        if str(path) != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(Path(path).expanduser()) if str(path) != ":memory:" else path, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created REAL, "
                "conversation TEXT, response TEXT, messages TEXT)"
            )

    def put(self, response: dict[str, Any], messages: list[Message], conversation: str) -> None:
        row = (
            response["id"],
            time.time(),
            conversation,
            json_text(response),
            json_text([m.to_dict() for m in messages]),
        )
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)

    def get(self, response_id: str) -> Stored | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, messages, conversation FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        if row is None:
            return None
        messages = [Message.from_dict(m) for m in json.loads(row[1])]
        return Stored(json.loads(row[0]), messages, row[2])

    def delete(self, response_id: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ReasoningMemory:
    """The generated messages behind each tool call the server handed to a stateless client."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._calls: OrderedDict[str, list[Message]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, call_id: str, messages: list[Message]) -> None:
        with self._lock:
            self._calls[call_id] = list(messages)
            self._calls.move_to_end(call_id)
            while len(self._calls) > self.capacity:
                self._calls.popitem(last=False)

    def recall(self, call_id: str) -> list[Message] | None:
        with self._lock:
            found = self._calls.get(call_id)
            if found is not None:
                self._calls.move_to_end(call_id)
            return list(found) if found is not None else None
