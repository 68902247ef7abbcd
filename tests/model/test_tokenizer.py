"""The o200k_harmony tokenizer against openai-harmony's and every rank source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gptoss_agent.model import SPECIAL_TOKENS, TokenizerNotFound, load_tokenizer
from gptoss_agent.model.tokenizer import _byte_decoder

TEXTS = [
    "Hello, world!",
    "def f(x):\n    return x ** 2  # squares\n",
    "Größe, 東京, emoji 🧪 and 'contractions' we'll",
    "   leading spaces\r\n\ttabs",
    "",
]


def test_specials_match_harmony_ids(enc):
    named = {
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|channel|>": 200005,
        "<|constrain|>": 200003,
        "<|return|>": 200002,
        "<|call|>": 200012,
        "<|endoftext|>": 199999,
    }
    for name, token_id in named.items():
        assert enc.encode_single_token(name) == token_id
    assert SPECIAL_TOKENS["<|reserved_200001|>"] == 200001
    assert SPECIAL_TOKENS["<|reserved_201087|>"] == 201087
    assert enc.n_vocab == 201088


def test_matches_openai_harmony(enc):
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    oracle = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    for text in TEXTS:
        assert enc.encode(text) == oracle.encode(text, allowed_special="all")
    text = "<|start|>user<|message|>hi<|end|>"
    assert enc.encode(text, allowed_special="all") == oracle.encode(text, allowed_special="all")


def test_explicit_path_and_dir(tmp_path, enc):
    src = Path(__import__("os").environ["TIKTOKEN_ENCODINGS_BASE"]) / "o200k_base.tiktoken"
    shutil.copy(src, tmp_path / "o200k_base.tiktoken")
    assert load_tokenizer(tmp_path).encode("abc") == enc.encode("abc")
    assert load_tokenizer(tmp_path / "o200k_base.tiktoken").encode("abc") == enc.encode("abc")


def test_corrupt_file_is_rejected(tmp_path):
    (tmp_path / "o200k_base.tiktoken").write_bytes(b"YQ== 0\n")
    with pytest.raises(TokenizerNotFound, match="sha256"):
        load_tokenizer(tmp_path)


def test_tokenizer_json_source(tmp_path, monkeypatch, enc):
    encoder = {b: c for c, b in _byte_decoder().items()}
    vocab = {"".join(encoder[b] for b in enc.decode_single_token_bytes(rank)): rank for rank in range(199998)}
    vocab["<|start|>"] = 200006
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE")
    tok = load_tokenizer(checkpoint=tmp_path)
    assert tok.encode(TEXTS[2]) == enc.encode(TEXTS[2])


def test_no_source_names_every_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path / "empty"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    # No network in tests: make tiktoken's download fail fast and deterministically.
    import tiktoken.load

    def offline(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(TokenizerNotFound) as info:
        load_tokenizer(checkpoint=tmp_path)
    message = str(info.value)
    for hint in ("path=", "TIKTOKEN_ENCODINGS_BASE", "tokenizer.json", "download"):
        assert hint in message
