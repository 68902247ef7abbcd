"""Fast CPU paths in a small C library (``kernels.c``): the matrix products, attention and a thread pool.

Decoding one token reads every active weight once, so it is memory-bound: the kernels read the
packed MXFP4 experts (4.25 bits per weight) and the bf16 matrices in place and widen them to
float32 in registers, instead of materialising unpacked copies. Many-token batches (prefill) are
compute-bound: MXFP4 weights go through a packed GEMM that unpacks sixteen rows at a time into a
panel kept in L2. Attention is one pass over the cache per query with an online softmax. Work is
split over a persistent thread pool (starting a thread costs ~90 us; a decode step makes ~270
calls). The library is compiled once per machine and instruction set with the system C compiler
(a few seconds) into ``~/.cache/gptoss_agent`` (``GPTOSS_KERNEL_CACHE`` overrides). The cache key
holds the source, the compiler and its version, the flags and the CPU's model and feature flags,
so a cache shared between machines (a home directory on NFS, a container image) never hands one
CPU a library built for another's instructions (SIGILL).

The same source is built per instruction set (``ISA_FLAGS``: ``avx2``; ``avx512`` with VNNI for the
int8 decode path and 512-bit bf16 matvecs; ``amx``, the AVX-512 build with the tile extensions
enabled; ``generic``, plain C) and the widest one the CPU's features allow (``/proc/cpuinfo``) is
loaded. ``GPTOSS_KERNELS_ISA=generic|avx2|avx512|amx`` forces one (a CPU that lacks it is an error
naming the missing features); ``use_isa()`` switches in-process, which the tests use to check every
path this CPU has against the same reference.

If there is no compiler, or ``GPTOSS_KERNELS=0``, every function here returns None and the
callers fall back to plain torch; a compile that fails is reported once (a ``RuntimeWarning``
with the compiler's own message), and ``describe()`` says which path runs and why.
``GPTOSS_REQUIRE_KERNELS=1`` (the test command sets it) turns a failed build into an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "ISAS",
    "KernelBuildError",
    "attention",
    "available",
    "describe",
    "int8_enabled",
    "isa",
    "linear",
    "mxfp4_linear",
    "supported_isas",
    "use_isa",
]

SOURCE_PATH = Path(__file__).with_name("kernels.c")
"""The C source, shipped beside this module as package data."""


@functools.cache
def _source() -> str:
    return SOURCE_PATH.read_text(encoding="utf-8")


_lib: ctypes.CDLL | None = None
_tried = False
_avx2 = False
"""Whether the library was built with AVX2 (bf16 caches are then read in place)."""
_lock = threading.Lock()
_status = "not loaded yet"
"""What ``describe()`` reports: the library in use, or why plain torch runs."""

FLAGS = ["-O3", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra"]
"""The compiler flags every build shares; ``ISA_FLAGS`` adds the instruction set's."""

_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"]
ISA_FLAGS: dict[str, list[str]] = {
    "generic": [],
    "avx2": _AVX2,
    "avx512": _AVX512,
    "amx": [*_AVX512, "-mavx512bf16", "-mamx-tile", "-mamx-int8", "-mamx-bf16"],
}
"""Each instruction set's compiler flags (the same source; ``#if`` blocks pick the code)."""

ISAS = tuple(ISA_FLAGS)
"""The instruction sets, narrowest first."""

_NEEDS: dict[str, frozenset[str]] = {
    "generic": frozenset(),
    "avx2": frozenset({"avx2", "fma", "f16c"}),
    "avx512": frozenset(
        {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    ),
}
_NEEDS["amx"] = _NEEDS["avx512"] | {"avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}

_libs: dict[str, ctypes.CDLL] = {}
_isa: str | None = None
"""The instruction set of the library in use (None: none loaded)."""


class KernelBuildError(RuntimeError):
    """The kernels did not compile or load while ``GPTOSS_REQUIRE_KERNELS=1`` demands them."""


@functools.cache
def cpu_signature() -> str:
    """The CPU model and its feature flags (Linux: ``/proc/cpuinfo``), which ``-march=native`` follows."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            seen: set[str] = set()
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU part", "vendor_id") and key not in seen:
                    seen.add(key)
                    parts.append(f"{key}={' '.join(sorted(value.split()))}")
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx2``, ``avx512_vnni``, ``amx_tile``...)."""
    for line in cpu_signature().splitlines():
        if line.startswith("flags="):
            return frozenset(line.removeprefix("flags=").split())
    return frozenset()


def supported_isas() -> list[str]:
    """The instruction sets this CPU runs, narrowest first (``generic`` always)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    have = cpu_features()
    return [name for name in ISAS if _NEEDS[name] <= have]


def missing_features(name: str) -> list[str]:
    """The CPU features this machine lacks to run instruction set ``name`` (its architecture, when it
    has them all but is not x86-64); empty when it runs it."""
    if name in supported_isas():
        return []
    return sorted(_NEEDS[name] - cpu_features()) or [platform.machine()]


def _missing(name: str) -> str:
    """One sentence on why this CPU cannot run ``name``, or "" if it can."""
    if name not in ISA_FLAGS:
        return f"unknown instruction set {name!r} (choose one of {', '.join(ISAS)})"
    lacks = missing_features(name)
    return f"this CPU cannot run the {name} kernels: it lacks {', '.join(lacks)}" if lacks else ""


def _default_isa() -> str:
    forced = os.environ.get("GPTOSS_KERNELS_ISA", "").strip().lower()
    return forced or supported_isas()[-1]


def cache_key(cc: str, isa: str | None = None) -> str:
    """Digest of everything the compiled library depends on: source, compiler, flags, CPU (``isa``:
    the instruction set, by default the one in use)."""
    flags = [*FLAGS, *ISA_FLAGS.get(isa or _isa or _default_isa(), [])]
    material = "\0".join([_source(), cc, _compiler_version(cc), " ".join(flags), cpu_signature()])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _compile(cc: str, lib_path: Path, isa: str = "generic") -> str | None:
    """Build the library at ``lib_path``; None on success, else the compiler's message."""
    try:
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "kernels.c"
            src.write_text(_source())
            tmp_lib = Path(tmp) / "kernels.so"
            cmd = [cc, *FLAGS, *ISA_FLAGS[isa], str(src), "-o", str(tmp_lib), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or done.stderr.splitlines()
                return f"{' '.join(cmd[:3])} ... failed (status {done.returncode}): " + "; ".join(errors[:3])
            os.replace(tmp_lib, lib_path)  # atomic: concurrent builders do not see half a file
    except (OSError, subprocess.SubprocessError) as e:
        return f"building the kernels in {lib_path.parent} failed: {e}"
    return None


def _load(isa: str) -> tuple[ctypes.CDLL | None, str]:
    """The library built for ``isa`` (compiled on first use, then cached), or None and why not."""
    if isa in _libs:
        return _libs[isa], str(_libs[isa]._name)
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler (cc or gcc) is installed"
    cache = Path(os.environ.get("GPTOSS_KERNEL_CACHE", Path.home() / ".cache" / "gptoss_agent"))
    lib_path = cache / f"kernels-{isa}-{cache_key(cc, isa)}.so"
    if not lib_path.exists():
        error = _compile(cc, lib_path, isa)
        if error is not None:
            return None, error
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        return None, f"{lib_path} does not load: {e}"
    _bind(lib)
    _libs[isa] = lib
    return lib, str(lib_path)


def _build() -> ctypes.CDLL | None:
    global _status, _isa
    if os.environ.get("GPTOSS_KERNELS", "1") == "0":
        _status = "off (GPTOSS_KERNELS=0): plain torch"
        return None
    name = _default_isa()
    why = _missing(name)
    if why:
        _failed(f"GPTOSS_KERNELS_ISA={name}: {why}")
        return None
    lib, where = _load(name)
    if lib is None and "GPTOSS_KERNELS_ISA" not in os.environ and name != "generic":
        first = where  # a compiler too old for the widest set: the next narrower one, said once
        for narrower in reversed(supported_isas()[: supported_isas().index(name)]):
            lib, where = _load(narrower)
            if lib is not None:
                warnings.warn(
                    f"gptoss_agent: the {name} kernels did not build ({first}); using {narrower}",
                    RuntimeWarning,
                    stacklevel=4,
                )
                name = narrower
                break
        else:
            where = first
    if lib is None:
        _failed(where)
        return None
    _isa = name
    _status = f"C kernels {where}"
    return lib


class LayerStep(ctypes.Structure):
    """``layer_step`` in kernels.c: one layer's weights and sizes for ``decode_layer``, and the
    call's settings (``scratch``, ``kv_mode``, ``bf16x``, ``nthreads``)."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in (
            "attn_norm", "qkv_b", "sinks", "out_b", "mlp_norm", "gate_b", "mlp1_bias", "mlp2_bias",
            "qkv_w", "out_w", "gate_w", "mlp1_blocks", "mlp1_scales", "mlp2_blocks", "mlp2_scales", "scratch",
        )),
        *((name, ctypes.c_int) for name in (
            "hidden", "nq", "nkv", "d", "experts", "top_k", "inter", "window", "kv_mode", "bf16x", "nthreads",
        )),
        *((name, ctypes.c_float) for name in ("eps", "alpha", "limit", "scale")),
    ]  # fmt: skip


DECODE_LAYER_ROWS = 64
"""Sequences times experts per token that one ``decode_layer`` call takes (``Q8_MAX_EXPERTS``)."""


class LayerRow(ctypes.Structure):
    """``layer_row`` in kernels.c: one sequence's cache buffers, the row it claimed, its RoPE row."""

    _fields_ = [("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p), ("cos", ctypes.c_void_p),
                ("sin", ctypes.c_void_p), ("row", ctypes.c_int)]  # fmt: skip


def _bind(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.mxfp4_gemv.argtypes = [p, p, p, p, p, i, i, i, i]
    lib.mxfp4_gemv_q8.argtypes = [p, p, p, p, p, i, i, i, i]
    lib.mxfp4_gemm.argtypes = [p, p, p, p, p, i, i, i, i]
    lib.mxfp4_gemm_q8.argtypes = [p, p, p, p, p, i, i, i, i]
    lib.mxfp4_gemv_q8_experts.argtypes = [p, p, p, p, i, p, i, p, i, i, i]
    lib.bf16_gemv.argtypes = [p, p, p, p, i, i, i, i]
    lib.bf16_gemv_bf16x.argtypes = [p, p, p, p, i, i, i, i]
    lib.attention_rows.argtypes = [p, p, p, i, p, p, i, i, i, i, i, i, ctypes.c_float, i]
    f32 = ctypes.c_float
    lib.rms_norm.argtypes = [p, p, f32, p, i, i]
    lib.rope_rows.argtypes = [p, i, i, i, i, p, p]
    lib.swiglu_rows.argtypes = [p, p, i, i, f32, f32]
    lib.moe_combine.argtypes = [p, p, p, p, i, i, i]
    lib.moe_route.argtypes = [p, i, i, i, p, p]
    lib.decode_layer_batch.argtypes = [ctypes.POINTER(LayerStep), i, ctypes.POINTER(LayerRow), p]
    lib.decode_layer_scratch.argtypes = [ctypes.POINTER(LayerStep), i]
    lib.decode_layer_scratch.restype = ctypes.c_int
    lib.has_avx2.argtypes = []
    lib.has_avx2.restype = ctypes.c_int
    lib.kernel_isa.argtypes = []
    lib.kernel_isa.restype = ctypes.c_int
    for f in (
        lib.mxfp4_gemv,
        lib.mxfp4_gemm,
        lib.mxfp4_gemm_q8,
        lib.mxfp4_gemv_q8_experts,
        lib.mxfp4_gemv_q8,
        lib.bf16_gemv,
        lib.bf16_gemv_bf16x,
        lib.attention_rows,
        lib.rms_norm,
        lib.rope_rows,
        lib.swiglu_rows,
        lib.moe_combine,
        lib.moe_route,
        lib.decode_layer_batch,
    ):
        f.restype = None


def _failed(why: str) -> None:
    """Record why the kernels are off, warn once, or raise under ``GPTOSS_REQUIRE_KERNELS=1``."""
    global _status
    _status = f"plain torch (the C kernels are off: {why})"
    if os.environ.get("GPTOSS_REQUIRE_KERNELS") == "1":
        raise KernelBuildError(f"GPTOSS_REQUIRE_KERNELS=1 but the C kernels are unavailable: {why}")
    warnings.warn(
        f"gptoss_agent: the C kernels are off, the model runs slower: {why}", RuntimeWarning, stacklevel=3
    )


def _library() -> ctypes.CDLL | None:
    global _lib, _tried, _avx2, _status
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                finally:
                    _tried = True  # reported once: a failed build is not retried per call
                _avx2 = _lib is not None and bool(_lib.has_avx2())
                if _lib is not None:
                    _status = f"{_status} ({_isa}: {compiled_isa(_lib)})"
    return _lib


def compiled_isa(lib: ctypes.CDLL | None = None) -> str:
    """What the library (by default the one in use) was really compiled with, as the C code sees its
    macros: ``AVX2``, ``AVX-512``, ``VNNI``, ``AMX`` or ``no AVX2``."""
    lib = lib if lib is not None else _library()
    if lib is None:
        return "none"
    bits = lib.kernel_isa()
    names = [n for b, n in ((1, "AVX2"), (2, "AVX-512"), (4, "VNNI"), (8, "AMX")) if bits & b]
    return "+".join(names) or "no AVX2"


def isa() -> str | None:
    """The instruction set of the kernels in use (None: plain torch)."""
    _library()
    return _isa if _lib is not None else None


def use_isa(name: str | None) -> None:
    """Switch the kernels in use to the ones built for ``name`` (None: the default, which
    ``GPTOSS_KERNELS_ISA`` or the CPU's features choose). Raises ``ValueError`` naming what this CPU
    lacks, or ``KernelBuildError`` if that build fails."""
    global _lib, _tried, _avx2, _status, _isa
    _library()
    target = name or _default_isa()
    why = _missing(target)
    if why:
        raise ValueError(why)
    with _lock:
        lib, where = _load(target)
        if lib is None:
            raise KernelBuildError(f"the {target} kernels do not build: {where}")
        _lib, _tried, _isa = lib, True, target
        _avx2 = bool(lib.has_avx2())
        _status = f"C kernels {where} ({target}: {compiled_isa(lib)})"


def describe() -> str:
    """Which path the model's CPU arithmetic takes: the C kernels (and their file), or plain torch
    and why (loads the library first)."""
    _library()
    return _status


threads: int | None = None
"""Threads the kernels split rows over; None follows ``torch.get_num_threads()``."""


_pinned = threading.local()


def threads_in_use() -> int:
    """The threads the kernels split a call over (``set_threads``, else torch's count)."""
    return _threads()


def _threads() -> int:
    pinned = getattr(_pinned, "threads", None)
    if pinned is not None:
        return int(pinned)
    return threads if threads is not None else torch.get_num_threads()


@contextlib.contextmanager
def torch_on_one_thread() -> Iterator[None]:
    """Torch's own operations on one thread for a while; the kernels keep their thread count.

    For steps made of kernel calls with small torch operations between them (a batch of decode
    rows: norms, softmax, index_put over a few thousand values each). Those are over torch's grain
    size, so each wakes torch's OpenMP team, whose threads then spin against the kernels' spinning
    pool: on 2 cores a 4-row decode step took 254 ms with torch on 2 threads and 109 ms on one,
    and a 512-token prefill of the 20b shape (4 layers) 2.6 s against 1.75 s (the int8 expert
    GEMMs 1.78 s against 0.95 s). Torch's matrix products go through ``torch_blas``, which gives
    them the threads back. Without the kernels (torch does everything) this changes nothing.
    """
    if not available():
        yield
        return
    before, pinned = torch.get_num_threads(), getattr(_pinned, "threads", None)
    _pinned.threads = _threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _pinned.threads = pinned


@contextlib.contextmanager
def torch_blas() -> Iterator[None]:
    """Inside ``torch_on_one_thread``: torch on the kernels' thread count again, for work that
    torch does best (its BLAS products: float32 weights, bf16 blocks widened for prefill)."""
    n = getattr(_pinned, "threads", None)
    if n is None or n == torch.get_num_threads():
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def available() -> bool:
    """Whether the compiled kernels are in use."""
    return _library() is not None


MATMUL_ROWS = 64
"""From this many tokens on, bf16 weights are widened to float32 (a block at a time) for BLAS."""

GEMM_ROWS = 16
"""From this many tokens on, MXFP4 weights go through the packed GEMM (below it: tiles of 8 tokens)."""

_VNNI = 4  # kernel_isa()'s bit for a build with AVX-512 VNNI

SCRATCH_ELEMENTS = 1 << 24
"""Float32 elements widened at a time for BLAS (64 MB; a whole attention matrix fits)."""

_scratch_buf = threading.local()


def _scratch(n: int) -> torch.Tensor:
    """A float32 buffer of at least ``n`` elements, reused (fresh pages cost more than the widening)."""
    buf = getattr(_scratch_buf, "t", None)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):  # a normal tensor: callers in and out of inference mode write it
            buf = torch.empty(n, dtype=torch.float32)
        _scratch_buf.t = buf
    return buf[:n]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _cpu_f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


def bf16_activations() -> bool:
    """Whether ``linear`` rounds its activations to bf16 and multiplies them with AVX-512 BF16's
    ``vdpbf16ps`` (float32 sums): on CPUs that have it, with the AVX-512 kernels, unless
    ``GPTOSS_KERNELS_BF16=0``. Only bf16 weights take this path, i.e. engines that compute in bf16
    (float32 checkpoints and ``dtype="fp32"`` stay exact). Error: about 2e-3 of the output's norm;
    two to three times the speed of widening the weights for BLAS (prefill); decode rows as fast
    as the float32 matvec for one, and 4 rows of the 20b head cost 1.6-2x one (2.7x before)."""
    return (
        os.environ.get("GPTOSS_KERNELS_BF16", "1") != "0"
        and "avx512_bf16" in cpu_features()
        and _isa in ("avx512", "amx")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ weight.T + bias`` for float32 ``x`` and a bf16 ``weight`` read in place on the CPU, or None
    (activations rounded to bf16 where ``bf16_activations()``)."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.bfloat16
        or x.dim() != 2
        or not weight.is_contiguous()
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    x = x.contiguous()
    b = _cpu_f32(bias)
    out, inp = weight.shape
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    if bf16_activations():
        lib.bf16_gemv_bf16x(_ptr(weight), _ptr(x), _ptr(b), _ptr(y), x.shape[0], out, inp, _threads())
        return y
    if x.shape[0] >= MATMUL_ROWS:  # many tokens: widen blocks of rows into a reused buffer, then BLAS
        step = max(1, SCRATCH_ELEMENTS // inp)
        with torch_blas():
            for r in range(0, out, step):
                w = _scratch(min(step, out - r) * inp).view(-1, inp)
                w.copy_(weight[r : r + step])
                if b is None:
                    torch.mm(x, w.T, out=y[:, r : r + step])
                else:
                    torch.addmm(b[r : r + step], x, w.T, out=y[:, r : r + step])
        return y
    lib.bf16_gemv(_ptr(weight), _ptr(x), _ptr(b), _ptr(y), x.shape[0], out, inp, _threads())
    return y


def int8_enabled() -> bool:
    """Whether ``int8=True`` may use int8 activations (``GPTOSS_KERNELS_INT8=0`` turns them off)."""
    return os.environ.get("GPTOSS_KERNELS_INT8", "1") != "0"


def mxfp4_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    int8: bool = False,
) -> torch.Tensor | None:
    """``x @ W.T + bias`` with ``W`` packed MXFP4 ``(out, G, 16)`` / ``(out, G)`` on the CPU, or None.

    Up to ``GEMM_ROWS`` rows go through in tiles of 8, each MXFP4 block unpacked once per tile in
    registers; more rows go through a packed GEMM that unpacks ``W`` sixteen rows at a time into a
    float32 panel kept in L2 (faster than unpacking all of ``W`` for BLAS at every size measured).

    ``int8=True`` lets the rows be quantized to int8 per 32-element group (scale ``max|x| / 127``),
    each row by itself, and multiplied in integer arithmetic, within 1% of the exact result
    relative to the output's norm (typically 0.5%): for engines computing with bf16 weights, not
    for exact float32 runs. Below ``GEMM_ROWS`` rows (decode steps: one sequence, or a batch of
    them) the weights are read once for all rows, two to three times as fast as exact; from
    ``GEMM_ROWS`` on (prefill) only where the build has AVX-512 VNNI, whose ``vpdpbusd`` GEMM over
    an unpacked panel of W is about twice as fast as the float32 one (elsewhere prefill stays
    exact). The default stays exact to float32 rounding; ``GPTOSS_KERNELS_INT8=0`` makes
    ``int8=True`` exact too.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        return None
    lib = _library()
    if lib is None:
        return None
    x = x.contiguous()
    blocks, scales = blocks.contiguous(), scales.contiguous()
    b = _cpu_f32(bias)
    out, g, _ = blocks.shape
    y = torch.empty(x.shape[0], out, dtype=torch.float32)
    int8 = int8 and int8_enabled()
    if x.shape[0] >= GEMM_ROWS:
        gemm = lib.mxfp4_gemm_q8 if int8 and lib.kernel_isa() & _VNNI else lib.mxfp4_gemm
        gemm(_ptr(blocks), _ptr(scales), _ptr(x), _ptr(b), _ptr(y), x.shape[0], out, g, _threads())
        return y
    if int8:
        lib.mxfp4_gemv_q8(_ptr(blocks), _ptr(scales), _ptr(x), _ptr(b), _ptr(y), x.shape[0], out, g, _threads())
        return y
    lib.mxfp4_gemv(_ptr(blocks), _ptr(scales), _ptr(x), _ptr(b), _ptr(y), x.shape[0], out, g, _threads())
    return y


def mxfp4_experts_q8(
    x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor, experts: torch.Tensor
) -> torch.Tensor | None:
    """One decode token through several experts at once, on int8 activations: row ``j`` of the result
    is expert ``experts[j]`` of ``blocks (E, out, G, 16)`` / ``scales (E, out, G)`` / ``bias (E, out)``
    applied to ``x[0]`` (``x`` one row: the same input for all) or ``x[j]``, bit for bit what
    ``mxfp4_linear(..., int8=True)`` gives per expert; one call instead of one per expert (fewer
    waits for the thread pool). None where the kernels or int8 are off."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or not int8_enabled():
        return None
    if not (blocks.is_contiguous() and scales.is_contiguous()) or experts.numel() > 16:
        return None
    lib = _library()
    if lib is None:
        return None
    x = x.contiguous()
    ids = experts.to(torch.int64).contiguous()
    k = ids.numel()
    _, out, g, _ = blocks.shape
    y = torch.empty(k, out, dtype=torch.float32)
    b = _cpu_f32(bias)
    lib.mxfp4_gemv_q8_experts(
        _ptr(blocks), _ptr(scales), _ptr(b), _ptr(ids), k, _ptr(x), x.shape[0], _ptr(y),
        out, g, _threads(),
    )  # fmt: skip
    return y


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sinks: torch.Tensor,
    *,
    pos0: int,
    window: int | None,
    scale: float,
) -> torch.Tensor | None:
    """Causal grouped-query attention with sinks on the CPU (float32 queries, float32 or bf16 cache), or None.

    ``q (T, n_kv, rep, d)``, ``k, v (S, n_kv, d)``, ``sinks (n_kv, rep)``. Query ``t`` sits at key
    row ``pos0 + t`` and sees the rows up to it (the last ``window`` of them, if given). Returns
    ``(T, n_kv * rep * d)``. One pass over the keys per query with an online softmax: no score
    matrix, no mask, no copies of the cache. With a bf16 cache where ``bf16_activations()``, the
    query and the probabilities are rounded to bf16 for ``vdpbf16ps`` (about 2e-3 of the output's
    norm, as the cache's own rounding; 2-3x faster at long context).
    """
    kv_types = (torch.float32, torch.bfloat16)
    if q.device.type != "cpu" or q.dtype != torch.float32 or k.dtype not in kv_types or v.dtype != k.dtype:
        return None
    lib = _library()
    if lib is None:
        return None
    t, n_kv, rep, d = q.shape
    if pos0 < 0 or pos0 + t > k.shape[0]:
        raise ValueError(f"queries at rows {pos0}..{pos0 + t - 1} need keys the cache of {k.shape[0]} lacks")
    bf16 = kv_mode(k.dtype, d)  # 2: bf16 products
    if bf16 is None:  # bf16 is read in place for d = 64 only
        k, v, bf16 = k.float(), v.float(), 0
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    s = _cpu_f32(sinks)
    out = torch.empty(t, n_kv * rep * d, dtype=torch.float32)
    lib.attention_rows(
        _ptr(q),
        _ptr(k),
        _ptr(v),
        bf16,
        _ptr(s),
        _ptr(out),
        t,
        pos0,
        window or 0,
        n_kv,
        rep,
        d,
        scale,
        _threads(),
    )
    return out


# ---- the small steps between the products (float32 rows on the CPU; None: use torch) ----------


def _rows_ok(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in ts)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``x / sqrt(mean(x^2) + eps) * scale`` per row of ``x (T, n)``, or None."""
    lib = _library() if x.dim() == 2 and _rows_ok(x, scale) else None  # no build for other devices
    if lib is None:
        return None
    y = torch.empty_like(x)
    lib.rms_norm(_ptr(x), _ptr(scale), eps, _ptr(y), x.shape[0], x.shape[1])
    return y


def rope_rows(x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Rotate in place the first ``heads`` heads of each row of ``x (T, width)`` (float32, heads of
    ``d = 2 * cos.shape[1]`` values side by side) by ``cos, sin (T, d / 2)``; False: not done."""
    lib = _library() if x.dim() == 2 and _rows_ok(x, cos, sin) and cos.shape[0] == x.shape[0] else None
    if lib is None:
        return False
    d = 2 * cos.shape[1]
    if heads * d > x.shape[1]:
        raise ValueError(f"{heads} heads of {d} do not fit rows of {x.shape[1]}")
    lib.rope_rows(_ptr(x), x.shape[0], heads, d, x.shape[1], _ptr(cos), _ptr(sin))
    return True


def swiglu(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor | None:
    """Clamped SwiGLU over the interleaved halves of ``x (T, 2n)`` -> ``(T, n)``, or None."""
    lib = _library() if x.dim() == 2 and x.shape[1] % 2 == 0 and _rows_ok(x) else None
    if lib is None:
        return None
    y = torch.empty(x.shape[0], x.shape[1] // 2)
    lib.swiglu_rows(_ptr(x), _ptr(y), x.shape[0], x.shape[1] // 2, alpha, limit)
    return y


def moe_route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The router's top ``k`` of each row of ``logits (T, E)`` in descending order (ties: the lower
    index first) and their softmax: ``(ids (T, k) int64, weights (T, k))``, or None."""
    lib = _library() if logits.dim() == 2 and _rows_ok(logits) and k <= logits.shape[1] else None
    if lib is None:
        return None
    t, e = logits.shape
    ids = torch.empty(t, k, dtype=torch.int64)
    w = torch.empty(t, k)
    lib.moe_route(_ptr(logits), t, e, k, _ptr(ids), _ptr(w))
    return ids, w


def fused_decode_enabled() -> bool:
    """Whether a decode token may run each layer as one C call (``decode_layer``; the same kernels
    as the layer's Python path, bit for bit): ``GPTOSS_KERNELS_FUSED=0`` turns it off."""
    return os.environ.get("GPTOSS_KERNELS_FUSED", "1") != "0" and _library() is not None


def decode_layer_scratch(step: LayerStep, rows: int) -> int:
    """Floats of scratch ``decode_layer`` needs for ``rows`` sequences through layers of ``step``'s sizes."""
    lib = _library()
    assert lib is not None
    return int(lib.decode_layer_scratch(ctypes.byref(step), rows))


def decode_layer(step: LayerStep, rows: ctypes.Array[LayerRow], x: torch.Tensor) -> None:
    """One decode token of each of ``len(rows)`` sequences, ``x (B, hidden)`` (float32, contiguous),
    through a layer, in place."""
    lib = _library()
    assert lib is not None
    lib.decode_layer_batch(ctypes.byref(step), len(rows), rows, x.data_ptr())


def kv_mode(dtype: torch.dtype, head_dim: int) -> int | None:
    """How ``attention`` reads a cache of ``dtype`` in place: 0 float32, 1 bf16, 2 bf16 with bf16
    products; None where it would first widen the cache (``decode_layer`` does not run then)."""
    if dtype == torch.float32:
        return 0
    if dtype != torch.bfloat16 or head_dim != 64 or _library() is None or not _avx2:
        return None
    return 2 if bf16_activations() else 1


def moe_combine(x: torch.Tensor, parts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
    """``x + sum_j weights[:, j] * parts[:, j]`` (top-k order) for ``x (T, n)``, ``parts (T, k, n)``,
    ``weights (T, k)``, or None."""
    lib = _library() if parts.dim() == 3 and _rows_ok(x, parts, weights) else None
    if lib is None:
        return None
    t, k, n = parts.shape
    y = torch.empty(t, n)
    lib.moe_combine(_ptr(x), _ptr(parts), _ptr(weights), _ptr(y), t, k, n)
    return y
