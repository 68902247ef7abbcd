"""llama.cpp as the same-run CPU peer of ``benchmarks/model.py`` (``--llama-cpp``).

Its tools are built from the ``llama-cpp-python`` sdist's vendored llama.cpp (``pip download``,
then cmake with ``-DGGML_NATIVE=ON``), once, under the benchmark cache. The benchmark's Hugging Face
checkpoint is converted with llama.cpp's own ``convert_hf_to_gguf.py`` (MXFP4 experts stay MXFP4,
dense weights bf16 as ours); the converter needs a ``tokenizer.json``, which is written from our
``o200k_harmony`` tokenizer with transformers' ``TikTokenConverter`` and checked token for token
against it. ``llama-bench`` then measures prefill (``-p``) and decode at a depth (``-n`` with
``-d``: the KV cache already holds that many tokens), as tokens per second.

    python benchmarks/llama_cpp.py CHECKPOINT [--threads N]   # build, convert, bench; prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
"""The llama-cpp-python release whose vendored llama.cpp is built (the one issue 19 measured)."""

CHECK_TEXTS = [
    "Hello, world! 123456789 the quick brown fox",
    "<|start|>assistant<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Hi<|return|>",
    "  leading spaces\n\n\ttabs and\r\nnewlines    ",
    "Ünïcödé: 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский",
    "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # code\n",
    "I'M YOU'RE they'll we'd CamelCaseWords x=y+z;",
]


def _run(cmd: list[str], log: Path, **kw: object) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{cmd[0]} failed (status {done.returncode}); see {log}:\n" + "\n".join(tail))


def source_dir(cache: Path) -> Path:
    """The vendored llama.cpp of the sdist, downloaded and unpacked once."""
    root = cache / "llama-src"
    root.mkdir(parents=True, exist_ok=True)
    sdist = next(iter(sorted(root.glob("llama_cpp_python-*.tar.gz"))), None)
    if sdist is None:  # the build dependencies as wheels: only the package itself as source
        cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-binary", "llama-cpp-python"]
        _run([*cmd, "--no-deps", "-d", str(root)], root / "download.log")
        sdist = next(iter(sorted(root.glob("llama_cpp_python-*.tar.gz"))))
    unpacked = root / sdist.name.removesuffix(".tar.gz")
    if not (unpacked / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(root, filter="data")
    return unpacked / "vendor" / "llama.cpp"


def build(cache: Path) -> Path:
    """``llama-bench`` built for this CPU (``-DGGML_NATIVE=ON``), cached; returns its path."""
    src = source_dir(cache)
    out = cache / "llama-build"
    binary = out / "bin" / "llama-bench"
    if binary.exists():
        return binary
    log = cache / "llama-build.log"
    options = ["-DGGML_NATIVE=ON", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]
    options += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    _run(["cmake", "-S", str(src), "-B", str(out), *options], log)
    _run(["cmake", "--build", str(out), "-j", str(os.cpu_count() or 1), "--target", "llama-bench"], log)
    return binary


def write_tokenizer_json(directory: Path) -> Path:
    """``tokenizer.json`` (and a minimal ``tokenizer_config.json``) for ``o200k_harmony``, built by
    transformers' ``TikTokenConverter`` from our ranks; raises if any check text or special token
    encodes differently from our tokenizer."""
    from gptoss_agent.model.tokenizer import O200K_PATTERN, SPECIAL_TOKENS, load_tokenizer, write_ranks_file
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ours = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        ranks = write_ranks_file(tmp)
        specials = sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.__getitem__)  # added in id order
        fast = TikTokenConverter(
            vocab_file=str(ranks), pattern=O200K_PATTERN, extra_special_tokens=specials
        ).converted()
    for name, token_id in SPECIAL_TOKENS.items():
        if fast.token_to_id(name) != token_id:
            raise RuntimeError(
                f"tokenizer.json gives {name} the id {fast.token_to_id(name)}, ours {token_id}"
            )
    for text in CHECK_TEXTS:
        theirs, want = (
            fast.encode(text, add_special_tokens=False).ids,
            ours.encode(text, allowed_special="all"),
        )
        if theirs != want:
            raise RuntimeError(f"tokenizer.json encodes {text!r} as {theirs[:20]}, ours {want[:20]}")
    if fast.get_vocab_size() != ours.n_vocab:
        raise RuntimeError(f"tokenizer.json has {fast.get_vocab_size()} tokens, ours {ours.n_vocab}")
    directory.mkdir(parents=True, exist_ok=True)
    fast.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|startoftext|>",
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 131072,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory / "tokenizer.json"


def convert(checkpoint: Path, cache: Path) -> Path:
    """The HF checkpoint as GGUF (llama.cpp's converter; experts MXFP4, the rest bf16), cached."""
    gguf = cache / f"{checkpoint.name}.gguf"
    if gguf.exists():
        return gguf
    src = source_dir(cache)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        staged = Path(tmp) / checkpoint.name  # the checkpoint's files plus the tokenizer's
        staged.mkdir()
        for f in checkpoint.iterdir():
            if f.is_file():
                (staged / f.name).symlink_to(f.resolve())
        write_tokenizer_json(staged)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(src / "gguf-py"), os.environ.get("PYTHONPATH", "")]),
        }
        partial = Path(tmp) / "out.gguf"
        cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(staged), "--outfile", str(partial)]
        _run([*cmd, "--outtype", "bf16"], cache / "llama-convert.log", env=env)
        shutil.move(partial, gguf)
    return gguf


def bench(
    binary: Path,
    gguf: Path,
    *,
    threads: int,
    prompts: list[int],
    depths: list[int],
    decode: int = 16,
    repeats: int = 3,
) -> dict:
    """Tokens per second from ``llama-bench``: prefill of each prompt length, and decode of ``decode``
    tokens after each depth (the KV cache already holding that many). Medians come from llama-bench's
    own repetitions (``-r``)."""
    common = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", str(repeats), "-o", "json"]
    runs = [["-p", ",".join(map(str, prompts)), "-n", "0"]]
    runs.append(["-p", "0", "-n", str(decode), "-d", ",".join(map(str, depths))])
    prefill, decoded, info = {}, {}, {}
    for extra in runs:
        done = subprocess.run([*common, *extra], capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"llama-bench failed (status {done.returncode}): {done.stderr[-2000:]}")
        for row in json.loads(done.stdout):
            rate = {
                "tokens_per_s": row["avg_ts"],
                "stdev": row.get("stddev_ts"),
                "samples": row.get("samples_ts"),
            }
            if row["n_prompt"] > 0:
                prefill[row["n_prompt"]] = rate
            else:
                decoded[row.get("n_depth", 0)] = rate
            info = {
                k: row.get(k)
                for k in (
                    "build_commit",
                    "cpu_info",
                    "backends",
                    "model_type",
                    "model_size",
                    "n_threads",
                    "type_k",
                )
            }
    return {"prefill": prefill, "decode": decoded, "info": info}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("GPTOSS_BENCH_CACHE", "/work/.cache-bench"))
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prompts", default="512,2048")
    p.add_argument("--depths", default="128,2048,8192")
    args = p.parse_args()
    binary = build(args.cache)
    gguf = convert(args.checkpoint, args.cache)
    result = bench(
        binary,
        gguf,
        threads=args.threads,
        prompts=[int(n) for n in args.prompts.split(",")],
        depths=[int(n) for n in args.depths.split(",")],
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
