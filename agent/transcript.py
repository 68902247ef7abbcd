"""Transcripts: every message of a session, one JSON line each, written as it happens.

Each line is one message in openai-harmony's message JSON (``Message.to_dict()``), so a transcript
loads with ``openai_harmony.Message.from_dict`` line by line, and ``Conversation.from_messages``
of the lines renders the session again. Lines are flushed one by one: a crash or ``kill -9`` loses
at most the message being generated or the tool call being run. ``load_transcript`` skips a last
line cut off mid-write.

The file holds the whole session, reasoning included; the prompt the agent renders from it leaves
out the reasoning of completed turns (see ``Agent``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from gptoss_agent.agent.messages import Message
from gptoss_agent.tools.text import clean_json

__all__ = ["Transcript", "TranscriptError", "load_transcript"]


class TranscriptError(ValueError):
    """A transcript file cannot be read (not JSON lines of harmony messages)."""


class Transcript:
    """An append-only JSONL file of messages.

    Args:
        path: The file. Opened for appending; created (with its folder) when missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None

    def append(self, message: Message) -> None:
        """Write one message as a JSON line and flush it to the OS."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- held open across appends
        line = json.dumps(clean_json(message.to_dict()), ensure_ascii=False)  # always valid UTF-8
        self._file.write(line + "\n")
        self._file.flush()

    def load(self) -> list[Message]:
        """Every message written so far (see ``load_transcript``)."""
        return load_transcript(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transcript({str(self.path)!r})"


def load_transcript(path: str | os.PathLike[str]) -> list[Message]:
    """Read the messages of a transcript.

    A last line without its newline (the process died while writing it) is ignored.

    Raises:
        FileNotFoundError: no such file.
        TranscriptError: a complete line is not a harmony message.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # cut off mid-write
    messages = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages.append(Message.from_dict(clean_json(json.loads(line))))
        except (ValueError, KeyError, TypeError) as e:
            raise TranscriptError(f"{path}, line {number}: not a harmony message ({e})") from e
    return messages
