"""The sandbox image: a Dockerfile build where a registry answers, a Debian root filesystem made
by debootstrap and ``docker import``-ed where none does (CI). The same root filesystem, kept in the
cache, is what the bubblewrap backend runs when it exists."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import SandboxError

__all__ = [
    "DEFAULT_IMAGE",
    "PACKAGES",
    "build_image",
    "build_rootfs",
    "cache_dir",
    "ensure_image",
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
            raise SandboxError(f"docker build failed: {chunk['error']}")
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
    (pulls python:3.11-slim), or ``auto`` (debootstrap when it can run here)."""
    if method == "auto":
        method = "debootstrap" if shutil.which("debootstrap") and os.geteuid() == 0 else "dockerfile"
    if method == "debootstrap":
        _import_rootfs(client, build_rootfs(progress, force=force), image, progress)
    elif method == "dockerfile":
        _build_dockerfile(client, image, progress)
    else:
        raise ValueError(f"unknown build method {method!r} (debootstrap, dockerfile or auto)")
    _say(progress, f"built {image}")
    return image


def ensure_image(
    client: Any, image: str = DEFAULT_IMAGE, *, build: bool = True, progress: Progress | None = None
) -> None:
    """Make sure ``image`` exists, building it (with progress) when it is ours and missing."""
    if _image_exists(client, image):
        return
    if not build or not image.startswith(IMAGE_NAME + ":"):
        raise SandboxError(
            f"the sandbox image {image} is missing: build it with `python -m gptoss_agent.sandbox build-image`"
        )
    _say(progress, f"the sandbox image {image} is missing; building it (a few minutes, once)")
    build_image(client, image, progress=progress)
