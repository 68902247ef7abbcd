"""Isolated, stateful Python sessions (Docker and bubblewrap backends)."""

from .base import Execution, SandboxError, Session
from .bubblewrap import BubblewrapSession
from .docker import DockerSession
from .image import DEFAULT_IMAGE, build_image
from .limits import Limits
from .local import DangerousLocalSession
from .open import BACKENDS, open_sandbox

__all__ = [
    "BACKENDS",
    "DEFAULT_IMAGE",
    "BubblewrapSession",
    "DangerousLocalSession",
    "DockerSession",
    "Execution",
    "Limits",
    "SandboxError",
    "Session",
    "build_image",
    "open_sandbox",
]
