"""``open_sandbox``: pick a backend and start a session."""

from __future__ import annotations

import logging
from typing import Any

from .base import SandboxError
from .limits import Limits
from .repl import ReplSession

__all__ = ["BACKENDS", "open_sandbox"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "docker", "bubblewrap", "dangerous-local")

HOW_TO = (
    "no sandbox is available: neither a Docker engine answers nor can bubblewrap run here. "
    "Either start Docker (Debian: `apt-get install docker.io && dockerd &`, or Docker Desktop) and build "
    "the image with `python -m gptoss_agent.sandbox build-image` (gptoss-agent offers to), or install "
    "bubblewrap (`apt-get install bubblewrap`) on a kernel that allows user namespaces."
)


def _docker_image_problem(options: dict[str, Any]) -> str | None:
    """Why ``auto`` cannot use Docker although an engine answers (the image is missing and will
    not or cannot be built), or None."""
    import docker

    from .image import BUILD_COMMAND, DEFAULT_IMAGE, build_problem, image_exists

    image = options.get("image", DEFAULT_IMAGE)
    try:
        client = docker.from_env()
        if image_exists(client, image):
            return None
        if not options.get("build", True):
            return f"the sandbox image {image} is missing (build it with `{BUILD_COMMAND}`)"
        return build_problem(client)
    except docker.errors.DockerException:
        return None  # let the Docker backend report it


def open_sandbox(
    backend: str = "auto", *, limits: Limits | None = None, start: bool = True, **options: Any
) -> ReplSession:
    """Open a stateful Python session.

    ``backend``: ``auto`` (Docker when an engine answers, else bubblewrap), ``docker``,
    ``bubblewrap``, or ``dangerous-local`` (no isolation at all). Keyword arguments are the fields
    of ``Limits`` (``timeout=30, memory=512 * 2**20``...) or a whole ``limits=Limits(...)``, plus
    backend options (Docker: ``image``, ``build``, ``progress``; bubblewrap: ``root``; both:
    ``strict=True``, which refuses to start where a limit cannot be applied as asked, instead of
    one warning line). The session is started at once unless ``start=False`` (then the first
    ``run`` starts it).
    """
    limit_names = set(Limits.__dataclass_fields__)
    limit_kwargs = {k: options.pop(k) for k in list(options) if k in limit_names}
    if limits is not None and limit_kwargs:
        raise TypeError("pass either limits=Limits(...) or limit keywords, not both")
    limits = limits or Limits(**limit_kwargs)
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    session: ReplSession
    if backend == "auto":
        from .bubblewrap import bubblewrap_available
        from .docker import docker_available

        if docker_available():
            backend = "docker"
            why_not = _docker_image_problem(options)
            if why_not is not None and bubblewrap_available():
                log.warning("python runs under bubblewrap: Docker answers, but %s", why_not)
                backend = "bubblewrap"
        elif bubblewrap_available():
            backend = "bubblewrap"
        else:
            raise SandboxError(HOW_TO)
        if backend != "docker":  # Docker's own options mean nothing to bubblewrap
            options = {k: v for k, v in options.items() if k not in ("image", "build", "progress")}
    if backend == "docker":
        from .docker import DockerSession

        session = DockerSession(limits, **options)
    elif backend == "bubblewrap":
        from .bubblewrap import BubblewrapSession

        session = BubblewrapSession(limits, **options)
    else:
        from .local import DangerousLocalSession

        session = DangerousLocalSession(limits, **options)
    if start:
        try:
            session.start()
        except BaseException:
            session.close()
            raise
    return session
