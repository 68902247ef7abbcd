"""Transcripts: every message of a session, one JSON line each, written as it happens.

Each line is one message in openai-harmony's message JSON (``Message.to_dict()``), so a transcript
loads with ``openai_harmony.Message.from_dict`` line by line, and ``Conversation.from_messages``
of the lines renders the session again.

Crash safety, the rules:

- **Durability.** Each line goes to the OS in one ``write`` as soon as its message exists
  (``flush``, the default): a crash of the process (an exception, ``kill -9``, the OOM killer)
  loses at most the message being generated. The OS writes the file to disk on its own schedule,
  so a power loss or a kernel crash can lose the last seconds; ``Transcript(path, fsync=True)``
  also forces every line to the disk (``os.fsync``) before the agent goes on (a few ms a message).
- **A torn last line** (the process died in the middle of a write) is skipped by
  ``load_transcript`` and cut off by the next writer before it appends, so resuming never glues
  a new line onto a fragment.
- **One writer per file.** The writer holds an exclusive ``flock`` on the file from its first
  append until ``close()`` (``Agent.close()``); a second ``Transcript`` on the same file, in this
  process or another, gets ``TranscriptLocked`` instead of interleaving its lines. Readers
  (``load_transcript``) need no lock.
- **Tool calls are at least once across a crash.** The assistant's call is written before the
  tool runs and the tool's result after it returns; a transcript whose last message is a call
  means the call was cut off and may have run, and ``Agent.resume()`` runs it again.

The file holds the whole session, reasoning included; the prompt the agent renders from it leaves
out the reasoning of completed turns (see ``Agent``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptoss_agent.agent.messages import Message
from gptoss_agent.tools.text import clean_json

try:
    import fcntl
except ImportError:  # pragma: no cover -- not POSIX: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

__all__ = ["Transcript", "TranscriptError", "TranscriptLocked", "load_transcript"]

_TAIL_BLOCK = 1 << 16


class TranscriptError(ValueError):
    """A transcript file cannot be read (not JSON lines of harmony messages)."""


class TranscriptLocked(TranscriptError):
    """Another writer (another agent, in this process or another one) has the transcript open."""


class Transcript:
    """An append-only JSONL file of messages, with one writer at a time.

    Args:
        path: The file; created (with its folder) when missing, opened for appending on the first
            ``append`` (or ``open()``), which also takes its lock and cuts off a torn last line.
        fsync: Force every line to the disk before ``append`` returns (default: hand it to the OS).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None

    def open(self) -> None:
        """Open the file for appending now: take its lock, cut off a torn last line.

        Raises:
            TranscriptLocked: another writer has it open.
        """
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise TranscriptLocked(
                        f"{self.path} is being written by another agent (one writer per transcript): "
                        "close that agent first, or continue a copy of the file"
                    ) from None
            _cut_torn_tail(fd)
            if created and self.fsync:
                _fsync_dir(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def append(self, message: Message) -> None:
        """Write one message as a JSON line (one ``write``; ``fsync`` too when asked)."""
        self.open()
        assert self._fd is not None
        line = json.dumps(clean_json(message.to_dict()), ensure_ascii=False)  # always valid UTF-8
        data = (line + "\n").encode("utf-8")
        while data:
            data = data[os.write(self._fd, data) :]
        if self.fsync:
            os.fsync(self._fd)

    def load(self) -> list[Message]:
        """Every message written so far (see ``load_transcript``)."""
        return load_transcript(self.path)

    def close(self) -> None:
        """Close the file and release its lock (appending again reopens it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the flock

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Transcript({str(self.path)!r})"


def _cut_torn_tail(fd: int) -> None:
    """Truncate the file after its last newline (a line cut off mid-write goes)."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        end = start
    else:
        keep = 0
    if keep != size:
        os.ftruncate(fd, keep)


def _fsync_dir(folder: Path) -> None:
    """Make a new file's directory entry durable too."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


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
