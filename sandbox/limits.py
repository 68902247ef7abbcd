"""Resource limits of a sandbox session, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-call and per-session limits, each backend enforcing them by its own means (Docker:
    cgroups and tmpfs sizes; bubblewrap: rlimits, tmpfs sizes, and cgroups where the host lets us
    create them). Where bubblewrap cannot apply one as asked (``memory`` for the whole session and
    ``cpus`` need a cgroup), the session says so at start, or refuses with ``strict=True``."""

    timeout: float = 120.0
    """Wall-clock limit of one ``run`` in seconds (gpt-oss was trained with 120 s)."""
    memory: int = 2048 * MiB
    """Memory of the whole session in bytes (no swap on top)."""
    cpus: float = 1.0
    """CPU quota in cores."""
    pids: int = 256
    """Processes and threads the session may have at once."""
    data_disk: int = 512 * MiB
    """Size of ``/mnt/data`` in bytes (it persists across calls, not across sessions)."""
    tmp_disk: int = 256 * MiB
    """Size of ``/tmp`` in bytes."""
    open_files: int = 1024
    """Open file descriptors per process."""
    output_chars: int = 20_000
    """Characters of output a call returns; longer output keeps its head and tail."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")

    @property
    def shm_size(self) -> int:
        """Size of ``/dev/shm`` in bytes: Docker's 64 MiB, or an eighth of ``memory`` if less."""
        return min(64 * MiB, int(self.memory) // 8)

    @property
    def max_file(self) -> int:
        """The largest file a process may write (RLIMIT_FSIZE): the larger of the two disks."""
        return max(self.data_disk, self.tmp_disk)
