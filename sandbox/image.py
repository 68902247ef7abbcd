"""The sandbox image: a Dockerfile build where a registry answers, a Debian root filesystem made
by debootstrap and ``docker import``-ed where none does (CI). The same root filesystem, kept in the
cache, is what the bubblewrap backend runs when it exists."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import SandboxError

__all__ = [
    "BUILD_COMMAND",
    "DEFAULT_IMAGE",
    "PACKAGES",
    "build_image",
    "build_problem",
    "build_rootfs",
    "cache_dir",
    "ensure_image",
    "expected_build_seconds",
    "image_exists",
    "rootfs_dir",
]

log = logging.getLogger(__name__)

IMAGE_NAME = "gptoss-agent-sandbox"
IMAGE_VERSION = "bookworm-1"
"""Bump when the package list or the stripping changes."""
DEFAULT_IMAGE = f"{IMAGE_NAME}:{IMAGE_VERSION}"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "python3",
    "python3-numpy",
    "python3-scipy",
    "python3-sympy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-pil",
    "python3-networkx",
)
"""Debian's packages of what the model reaches for (the Dockerfile installs the same from PyPI)."""
STRIP = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/cache/debconf",
    "var/lib/apt/lists",
    "var/log",
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "root",
    "home",
    # Build tools that scipy's packaging drags in (pythran -> gcc, boost): never run in a sandbox.
    "usr/include",
    "usr/lib/gcc",
)
STRIP_GLOBS = ("usr/lib/x86_64-linux-gnu/**/*.a", "usr/lib/x86_64-linux-gnu/lib*san.so*")

Progress = Callable[[str], None]

BUILD_COMMAND = "python -m gptoss_agent.sandbox build-image"
"""The one command that builds the image ahead of time (as root for the registry-free build)."""
REGISTRY_PROBE = "python:3.11-slim"
"""The Dockerfile's base image: a registry that can serve it is what the Dockerfile build needs."""
DEBOOTSTRAP_SECONDS = 180
"""A registry-free build from nothing: debootstrap of ~260 Debian packages, then the import (2 cores)."""
IMPORT_SECONDS = 30
"""The import alone, when the root filesystem is already built."""


def cache_dir() -> Path:
    """Where the debootstrap downloads and the root filesystem are kept between builds."""
    base = os.environ.get("GPTOSS_SANDBOX_CACHE")
    if base:
        return Path(base)
    if os.geteuid() == 0:
        # Readable by the unused uids that bubblewrap sessions run under (/root is not).
        return Path("/var/cache/gptoss-agent/sandbox")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gptoss-agent" / "sandbox"


def rootfs_dir(version: str = IMAGE_VERSION) -> Path | None:
    """The finished root filesystem, if one was built here."""
    path = cache_dir() / f"rootfs-{version}"
    return path if (path / ".complete").exists() else None


def expected_build_seconds() -> int:
    """About how long building the image takes here: the last build's time when one finished
    on this machine, else an estimate for the method that will run."""
    try:
        return max(1, int(float((cache_dir() / "last-build-seconds").read_text())))
    except (OSError, ValueError):
        return IMPORT_SECONDS if rootfs_dir() is not None else DEBOOTSTRAP_SECONDS


def image_exists(client: Any, image: str = DEFAULT_IMAGE) -> bool:
    """Whether the Docker engine behind ``client`` has ``image``."""
    return _image_exists(client, image)


def _registry_answers(client: Any) -> bool:
    try:
        client.api.inspect_distribution(REGISTRY_PROBE)
        return True
    except Exception:  # no such host, refused, timed out, unauthorised: no usable registry
        return False


def _method(client: Any) -> tuple[str | None, str | None]:
    """The build method that can run here, or None and one sentence saying why none can."""
    if rootfs_dir() is not None or (shutil.which("debootstrap") and os.geteuid() == 0):
        return "debootstrap", None
    if _registry_answers(client):
        return "dockerfile", None
    if shutil.which("debootstrap") is None:
        return None, (
            "the sandbox image cannot be built: no image registry answers and debootstrap is not "
            f"installed; run `apt-get install debootstrap`, then `{BUILD_COMMAND}` as root"
        )
    return None, (
        "the sandbox image cannot be built: no image registry answers and the registry-free build "
        f"(debootstrap) needs root; run `sudo {BUILD_COMMAND}`"
    )


def build_problem(client: Any) -> str | None:
    """Why the image cannot be built with this engine and machine (one sentence), or None."""
    return _method(client)[1]


def _say(progress: Progress | None, message: str) -> None:
    (progress or log.info)(message)


def _run(cmd: list[str], progress: Progress | None) -> None:
    _say(progress, "$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-20:], line]
        if line.startswith(("I: Retrieving", "I: Extracting", "I: Installing", "I: Base", "E:", "W:")):
            _say(progress, line)
    if proc.wait() != 0:
        raise SandboxError(f"{cmd[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def build_rootfs(progress: Progress | None = None, *, mirror: str | None = None, force: bool = False) -> Path:
    """Make the Debian root filesystem with debootstrap (needs root and Debian's mirror)."""
    target = cache_dir() / f"rootfs-{IMAGE_VERSION}"
    if not force and (target / ".complete").exists():
        return target
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise SandboxError("the registry-free image build runs debootstrap, which needs root")
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    for old in (partial, target):
        _unmount_below(old)
        shutil.rmtree(old, ignore_errors=True)
    mirror = mirror or os.environ.get("GPTOSS_SANDBOX_MIRROR") or MIRROR
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                f"--cache-dir={debs}",
                SUITE,
                str(partial),
                mirror,
            ],
            progress,
        )
    finally:
        _unmount_below(partial)  # a failed debootstrap leaves /proc mounted in the target
    strip(partial)
    (partial / ".complete").touch()
    partial.rename(target)
    return target


def strip(root: Path) -> None:
    """Remove what a sandbox never needs (docs, caches, password hashes, compilers)."""
    for rel in STRIP:
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir(mode=0o700 if rel in ("root", "home") else 0o755)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for pattern in STRIP_GLOBS:
        for path in root.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    (root / "mnt" / "data").mkdir(parents=True, exist_ok=True)
    (root / "mnt" / "data").chmod(0o1777)


def _unmount_below(path: Path) -> None:
    """Unmount whatever is mounted at or below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for mount in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def _image_exists(client: Any, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _import_rootfs(client: Any, rootfs: Path, image: str, progress: Progress | None) -> None:
    repository, _, tag = image.partition(":")
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        _run(
            ["tar", "--numeric-owner", "--exclude=./.complete", "-C", str(rootfs), "-cf", str(tarball), "."],
            progress,
        )
        _say(progress, f"importing {tarball.stat().st_size // (1024 * 1024)} MiB as {image}")
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=tag or "latest",
            changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin", "WORKDIR /mnt/data", 'CMD ["python3"]'],
        )


def _build_dockerfile(client: Any, image: str, progress: Progress | None) -> None:
    context = Path(__file__).parent
    _say(progress, f"building {image} from {context / 'Dockerfile'}")
    for chunk in client.api.build(
        path=str(context), dockerfile="Dockerfile", tag=image, rm=True, decode=True
    ):
        if "error" in chunk:
            error = str(chunk["error"]).strip().splitlines()[0]
            if not _registry_answers(client):
                raise SandboxError(
                    f"docker build failed: no image registry answers ({error}); the registry-free build "
                    f"needs debootstrap: run `apt-get install debootstrap`, then `{BUILD_COMMAND}` as root"
                )
            raise SandboxError(f"docker build failed: {error}")
        line = str(chunk.get("stream", "")).strip()
        if line:
            _say(progress, line)


def build_image(
    client: Any,
    image: str = DEFAULT_IMAGE,
    *,
    method: str = "auto",
    progress: Progress | None = None,
    force: bool = False,
) -> str:
    """Build the sandbox image. ``method``: ``debootstrap`` (no registry needed), ``dockerfile``
    (pulls python:3.11-slim), or ``auto`` (debootstrap when it can run here or its root
    filesystem is built, else the Dockerfile when a registry answers; ``SandboxError`` with one
    sentence naming what to install when neither can)."""
    started = time.monotonic()
    if method == "auto":
        chosen, problem = _method(client)
        if chosen is None:
            raise SandboxError(problem or "the sandbox image cannot be built here")
        method = chosen
    if method == "debootstrap":
        _import_rootfs(client, build_rootfs(progress, force=force), image, progress)
    elif method == "dockerfile":
        _build_dockerfile(client, image, progress)
    else:
        raise ValueError(f"unknown build method {method!r} (debootstrap, dockerfile or auto)")
    seconds = time.monotonic() - started
    with contextlib.suppress(OSError):
        (cache_dir() / "last-build-seconds").write_text(f"{seconds:.0f}\n")
    _say(progress, f"built {image} in {seconds:.0f} s")
    return image


def ensure_image(
    client: Any, image: str = DEFAULT_IMAGE, *, build: bool = True, progress: Progress | None = None
) -> None:
    """Make sure ``image`` exists, building it (with progress) when it is ours and missing."""
    if _image_exists(client, image):
        return
    if not build or not image.startswith(IMAGE_NAME + ":"):
        raise SandboxError(f"the sandbox image {image} is missing: build it with `{BUILD_COMMAND}`")
    minutes = max(1, round(expected_build_seconds() / 60))
    _say(progress, f"the sandbox image {image} is missing; building it (about {minutes} min, once)")
    build_image(client, image, progress=progress)
