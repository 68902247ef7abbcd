"""``open_sandbox``: pick a backend and start a session."""

from __future__ import annotations

from typing import Any

from .base import SandboxError
from .limits import Limits
from .repl import ReplSession

__all__ = ["BACKENDS", "open_sandbox"]

BACKENDS = ("auto", "docker", "bubblewrap", "dangerous-local")

HOW_TO = (
    "no sandbox is available: neither a Docker engine answers nor can bubblewrap run here. "
    "Either start Docker (Debian: `apt-get install docker.io && dockerd &`, or Docker Desktop) — the image "
    "builds on first use, or ahead with `python -m gptoss_agent.sandbox build-image` — or install "
    "bubblewrap (`apt-get install bubblewrap`) on a kernel that allows user namespaces."
)


def open_sandbox(
    backend: str = "auto", *, limits: Limits | None = None, start: bool = True, **options: Any
) -> ReplSession:
    """Open a stateful Python session.

    ``backend``: ``auto`` (Docker when an engine answers, else bubblewrap), ``docker``,
    ``bubblewrap``, or ``dangerous-local`` (no isolation at all). Keyword arguments are the fields
    of ``Limits`` (``timeout=30, memory=512 * 2**20``...) or a whole ``limits=Limits(...)``, plus
    backend options (Docker: ``image``, ``build``, ``progress``; bubblewrap: ``root``). The session
    is started at once unless ``start=False`` (then the first ``run`` starts it).
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
        elif bubblewrap_available():
            backend = "bubblewrap"
        else:
            raise SandboxError(HOW_TO)
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
