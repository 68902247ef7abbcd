"""The ``o200k_harmony`` tokenizer: o200k_base ranks and regex plus the harmony special tokens.

Where the ranks come from, in order:

1. an explicit ``path`` (an ``o200k_base.tiktoken`` file, or a directory holding one);
2. the directory named by ``TIKTOKEN_ENCODINGS_BASE`` (the variable openai-harmony reads);
3. the model checkpoint's ``tokenizer.json`` (its byte-level BPE vocabulary turned back into bytes);
4. tiktoken's own cache, downloading on first use.

Every source but tiktoken's own is checked against the o200k_base sha256. Nothing touches the
network at import time.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from pathlib import Path

import tiktoken

__all__ = [
    "O200K_BASE_SHA256",
    "SPECIAL_TOKENS",
    "TokenizerNotFound",
    "load_tokenizer",
    "ranks_file_bytes",
]

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_FILE = "o200k_base.tiktoken"
N_RANKS = 199998  # o200k_base mergeable ranks are 0..199997

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
    """No source of the o200k_base ranks could be found or verified."""


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


def _ranks_from_tiktoken() -> dict[bytes, int]:
    try:
        return tiktoken.get_encoding("o200k_base")._mergeable_ranks
    except Exception as exc:  # tiktoken raises whatever its download raised
        raise TokenizerNotFound(f"tiktoken could not load o200k_base: {exc}") from exc


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
        candidate = Path(checkpoint) / "tokenizer.json"
        if candidate.is_file():
            return _ranks_from_tokenizer_json(candidate)
        tried.append(f"checkpoint {checkpoint} has no tokenizer.json")
    try:
        return _ranks_from_tiktoken()
    except TokenizerNotFound as exc:
        tried.append(str(exc))
    raise TokenizerNotFound(
        "cannot find the o200k_base tokenizer ranks ("
        + "; ".join(tried)
        + "). Fix it one of these ways: pass load_tokenizer(path=...) an o200k_base.tiktoken file; "
        "set TIKTOKEN_ENCODINGS_BASE to a directory holding o200k_base.tiktoken; use a checkpoint "
        "directory with its tokenizer.json; or allow tiktoken to download it once (network access, "
        "cached under TIKTOKEN_CACHE_DIR)."
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
