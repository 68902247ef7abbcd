"""The o200k_harmony tokenizer against openai-harmony's and every rank source."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gptoss_agent.model import SPECIAL_TOKENS, TokenizerNotFound, load_tokenizer
from gptoss_agent.model.tokenizer import O200K_BASE_SHA256, _byte_decoder, cache_dir

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
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "ours"))
    monkeypatch.setitem(sys.modules, "quicktok", None)  # as if quicktok-v1 were not installed
    with pytest.raises(TokenizerNotFound) as info:
        load_tokenizer(checkpoint=tmp_path)
    message = str(info.value)
    for hint in ("quicktok-v1", "path=", "TIKTOKEN_ENCODINGS_BASE", "tokenizer.json", "download"):
        assert hint in message
    assert any("quicktok-v1 package is not installed" in t for t in info.value.tried)
    assert any("network disabled" in t for t in info.value.tried)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """A new user's environment: empty home and caches, no tokenizer variables, network refused
    (every proxy points at a closed port, so any download fails at once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "DATA_GYM", "GPTOSS", "XDG_"))}
    env |= {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    return env


def test_offline_out_of_the_box_builds_from_quicktok_once(tmp_path, enc):
    """Nothing prepared, no network: the ranks come from quicktok-v1, are verified, and cached; the
    second process reads the cache (quicktok made unimportable to prove it)."""
    env = _clean_env(tmp_path)
    probe = (
        "import sys\n"
        "if sys.argv[1] == 'no-quicktok': sys.modules['quicktok'] = None\n"
        "from gptoss_agent.model import load_tokenizer\n"
        "print(load_tokenizer().encode('Größe, 東京 🧪'))\n"
    )
    first = subprocess.run(
        [sys.executable, "-c", probe, "quicktok"], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == enc.encode("Größe, 東京 🧪")
    cached = tmp_path / "home" / ".cache" / "gptoss-agent" / "tiktoken" / "o200k_base.tiktoken"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == O200K_BASE_SHA256
    second = subprocess.run(
        [sys.executable, "-c", probe, "no-quicktok"], env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, enc):
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "ours"))
    bad = cache_dir() / "o200k_base.tiktoken"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"YQ== 0\n")
    assert load_tokenizer(checkpoint=tmp_path).encode(TEXTS[1]) == enc.encode(TEXTS[1])
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == O200K_BASE_SHA256


def test_hub_layout_finds_tokenizer_json_at_the_snapshot_root(tmp_path, monkeypatch, enc):
    """The CLI loads weights from a snapshot's original/; tokenizer.json sits one level up."""
    encoder = {b: c for c, b in _byte_decoder().items()}
    vocab = {"".join(encoder[b] for b in enc.decode_single_token_bytes(rank)): rank for rank in range(199998)}
    (tmp_path / "original").mkdir()
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE")
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(tmp_path / "ours"))
    monkeypatch.setitem(sys.modules, "quicktok", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's cache off: only tokenizer.json can answer
    tok = load_tokenizer(checkpoint=tmp_path / "original")
    assert tok.encode(TEXTS[2]) == enc.encode(TEXTS[2])
    assert not (tmp_path / "ours").exists()
