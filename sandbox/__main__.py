"""``python -m gptoss_agent.sandbox build-image``: build the sandbox image (with a progress bar and
the expected time on a terminal, one line per step otherwise)."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import docker
import docker.errors

from .base import SandboxError
from .image import DEFAULT_IMAGE, build_image, build_problem, build_rootfs, expected_build_seconds


def _lines(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_with_progress(
    client: Any, image: str = DEFAULT_IMAGE, *, method: str = "auto", force: bool = False, console: Any = None
) -> None:
    """Build ``image``, drawing a bar against the expected time on ``console`` (a rich
    ``Console``) when it is a terminal, else printing each step on stderr. Raises ``SandboxError``
    (before announcing anything, when no method can build it here)."""
    if method == "auto" and (problem := build_problem(client)) is not None:
        raise SandboxError(problem)
    if console is None or not console.is_terminal:
        minutes = max(1, round(expected_build_seconds() / 60))
        _lines(f"building the sandbox image {image} (about {minutes} min, once)")
        build_image(client, image, method=method, progress=_lines, force=force)
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    expected = expected_build_seconds()
    about = f"{expected // 60} min {expected % 60:02d} s" if expected >= 60 else f"{expected} s"
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn(f"of about {about}"), console=console) as bar:
        task = bar.add_task(f"building the sandbox image {image} (once)", total=expected)
        started = time.monotonic()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(0.5):  # time-based: no build step knows how many remain
                bar.update(task, completed=min(time.monotonic() - started, expected * 0.97))

        def step(line: str) -> None:
            bar.update(task, description=f"sandbox image: {line[:48]}")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            build_image(client, image, method=method, progress=step, force=force)
        finally:
            done.set()
            ticker.join()
        bar.update(task, completed=expected, description=f"built the sandbox image {image}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptoss_agent.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-image", help="build the Docker image of the sandbox")
    build.add_argument("--image", default=DEFAULT_IMAGE)
    build.add_argument(
        "--method",
        choices=["auto", "debootstrap", "dockerfile"],
        default="auto",
        help="debootstrap: Debian's packages, no registry needed (root); dockerfile: python:3.11-slim "
        "from a registry; auto: debootstrap where it can run, else the Dockerfile",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    sub.add_parser("build-rootfs", help="only the Debian root filesystem (the bubblewrap backend uses it)")
    args = parser.parse_args(argv)

    try:
        if args.command == "build-rootfs":
            _lines(str(build_rootfs(_lines)))
            return 0
        client = docker.from_env()
        if not args.force:
            try:
                client.images.get(args.image)
                _lines(f"{args.image} exists")
                return 0
            except docker.errors.ImageNotFound:
                pass
        from rich.console import Console

        build_with_progress(
            client, args.image, method=args.method, force=args.force, console=Console(stderr=True)
        )
    except (SandboxError, docker.errors.DockerException) as exc:
        _lines(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
