"""``python -m gptoss_agent.sandbox build-image``: build the sandbox image (with progress)."""

from __future__ import annotations

import argparse
import sys

import docker
import docker.errors

from .base import SandboxError
from .image import DEFAULT_IMAGE, build_image, build_rootfs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptoss_agent.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-image", help="build the Docker image of the sandbox")
    build.add_argument("--image", default=DEFAULT_IMAGE)
    build.add_argument(
        "--method",
        choices=["auto", "debootstrap", "dockerfile"],
        default="auto",
        help="debootstrap: Debian's packages, no registry needed (root); dockerfile: python:3.11-slim from a registry",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    sub.add_parser("build-rootfs", help="only the Debian root filesystem (the bubblewrap backend uses it)")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.command == "build-rootfs":
            say(str(build_rootfs(say)))
            return 0
        client = docker.from_env()
        if not args.force:
            try:
                client.images.get(args.image)
                say(f"{args.image} exists")
                return 0
            except docker.errors.ImageNotFound:
                pass
        build_image(client, args.image, method=args.method, progress=say, force=args.force)
    except (SandboxError, docker.errors.DockerException) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
