"""Isolated, stateful Python sessions (Docker and bubblewrap backends)."""

from .base import Execution, SandboxError, Session
from .limits import Limits
from .open import BACKENDS, open_sandbox

__all__ = ["BACKENDS", "Execution", "Limits", "SandboxError", "Session", "open_sandbox"]
