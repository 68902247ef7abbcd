"""The bubblewrap backend, for machines without a Docker engine.

Each driver runs in ``bwrap`` with every namespace unshared (no network, its own PIDs, IPC,
hostname, user and cgroup namespaces), a clean environment, a filesystem that holds only a
read-only Python runtime (the debootstrap root filesystem of the Docker image when it was built
here, else the host's ``/usr``), size-limited tmpfs at ``/tmp`` and ``/mnt/data``, no capabilities
and no nested user namespaces. Limits come from rlimits set before ``bwrap`` starts and, when the
host lets us create them (root), from cgroups (memory, pids, CPU).

When started as root, each session runs under its own unused host uid, so that RLIMIT_NPROC
counts exactly the session's processes. A timeout kills ``bwrap``; ``--die-with-parent`` then
kills the PID namespace's init, and the kernel kills everything left in that namespace.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from .base import SandboxError
from .image import rootfs_dir
from .limits import Limits
from .repl import Channel, PipeChannel, ReplSession, describe_exit, driver_source, sandbox_env

__all__ = ["BubblewrapSession", "bubblewrap_available"]

_uids = itertools.count()
ETC_FILES = ("ld.so.cache", "alternatives", "matplotlibrc", "fonts", "mime.types", "localtime")


@functools.cache
def _bwrap_options(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows (--disable-userns and --size are recent)."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def bubblewrap_available() -> bool:
    """Whether ``bwrap`` is installed and can create its namespaces here."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    try:
        probe = subprocess.run(
            [
                bwrap,
                "--unshare-all",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/lib",
                "/lib",
                "--symlink",
                "usr/lib64",
                "/lib64",
                "--",
                "/usr/bin/true",
            ],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


class _Cgroup:
    """A cgroup (v1 or v2) with the session's memory, pids and CPU limits, when one can be made."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.dirs: list[Path] = []
        self.controls: list[str] = []
        root = Path("/sys/fs/cgroup")
        quota = int(limits.cpus * 100_000)
        if (root / "cgroup.controllers").exists():  # v2
            wanted = {
                "memory.max": str(limits.memory),
                "memory.swap.max": "0",
                "pids.max": str(limits.pids),
                "cpu.max": f"{quota} 100000",
            }
            self._make(root / "gptoss-sandbox" / name, wanted)
        else:  # v1: one hierarchy per controller
            for controller, wanted in (
                (
                    "memory",
                    {
                        "memory.limit_in_bytes": str(limits.memory),
                        "memory.memsw.limit_in_bytes": str(limits.memory),
                    },
                ),
                ("pids", {"pids.max": str(limits.pids)}),
                ("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(quota)}),
            ):
                if (root / controller).is_dir():
                    self._make(root / controller / "gptoss-sandbox" / name, wanted)

    def _make(self, path: Path, wanted: dict[str, str]) -> None:
        _reap_cgroups(path.parent)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        self.dirs.append(path)
        for key, value in wanted.items():
            with contextlib.suppress(OSError):
                (path / key).write_text(value)
                self.controls.append(key)

    def join(self) -> None:
        """Move the calling process in (called in the child before it execs bwrap)."""
        for path in self.dirs:
            with contextlib.suppress(OSError):
                (path / "cgroup.procs").write_text(str(os.getpid()))

    def kill_all(self) -> None:
        for path in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        for path in self.dirs:
            for _ in range(100):  # the killed processes leave the cgroup as they are reaped
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        self.dirs = []


class BubblewrapSession(ReplSession):
    """A session in bubblewrap namespaces; see the module docstring for what is isolated."""

    backend = "bubblewrap"

    def __init__(self, limits: Limits | None = None, *, root: str | Path | None = None) -> None:
        super().__init__(limits or Limits())
        self.bwrap = shutil.which("bwrap")
        if not self.bwrap:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        found = Path(root) if root else rootfs_dir()
        self.root = found or Path("/")
        if not (self.root / "usr" / "bin" / "python3").exists():
            raise SandboxError(
                f"no Python runtime at {self.root / 'usr/bin/python3'} for the bubblewrap sandbox"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._cgroup: _Cgroup | None = None
        self._uid = os.getuid()
        self.isolation: list[str] = []
        """What enforces the limits here (rlimits, cgroup files), for diagnostics."""

    def _argv(self) -> list[str]:
        lim, root = self.limits, self.root
        known = _bwrap_options(str(self.bwrap))
        argv = [str(self.bwrap), "--unshare-all", "--unshare-user", "--die-with-parent"]
        if "--disable-userns" in known:
            argv.append("--disable-userns")  # no nested user namespaces for the code
        argv += ["--new-session", "--clearenv", "--hostname", "sandbox", "--cap-drop", "ALL"]
        for key, value in sandbox_env(lim).items():
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", str(root / "usr"), "/usr"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            path = root / name
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), f"/{name}"]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), f"/{name}"]
        if root != Path("/"):
            argv += ["--ro-bind", str(root / "etc"), "/etc"]  # the image's own /etc (no secrets)
        else:
            for name in ETC_FILES:  # of the host's /etc, only what the runtime reads
                argv += ["--ro-bind-try", str(root / "etc" / name), f"/etc/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for size, mount in ((lim.tmp_disk, "/tmp"), (lim.data_disk, "/mnt/data")):
            if "--size" in known:  # without it (bwrap < 0.7) only RLIMIT_FSIZE bounds each file
                argv += ["--size", str(size)]
            argv += ["--perms", "1777", "--tmpfs", mount]
        argv += ["--remount-ro", "/", "--chdir", "/mnt/data", "--uid", "65534", "--gid", "65534"]
        argv += ["--", "/usr/bin/python3", "-I", "-c", driver_source()]
        return argv

    def _spawn(self) -> Channel:
        lim = self.limits
        as_root = os.geteuid() == 0
        name = f"{os.getpid()}-{id(self):x}-{next(_uids)}"
        self._cgroup = _Cgroup(name, lim) if as_root else None
        self.isolation = ["rlimits"] + (self._cgroup.controls if self._cgroup else [])
        # As root: a fresh, unused host uid per driver, so RLIMIT_NPROC counts only this session.
        uid = 1_500_000_000 + (os.getpid() * 4096 + next(_uids)) % 500_000_000 if as_root else os.getuid()
        self._uid = uid
        nproc = lim.pids if as_root else _count_processes(uid) + lim.pids
        cgroup = self._cgroup
        # Address space is a crude stand-in for memory (OpenBLAS, for one, reserves far more than
        # it touches and spins when a reservation fails): only without a memory cgroup.
        has_memory_cgroup = bool(cgroup and any(c.startswith("memory.") for c in cgroup.controls))
        address_space = resource.RLIM_INFINITY if has_memory_cgroup else lim.memory

        def preexec() -> None:
            if cgroup:
                cgroup.join()
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim.open_files, lim.open_files))
            resource.setrlimit(resource.RLIMIT_FSIZE, (lim.max_file, lim.max_file))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            if as_root:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        try:
            process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},
                cwd=tempfile.gettempdir(),
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start bubblewrap: {exc}") from exc
        self._process = process
        self._finalizer = weakref.finalize(self, _cleanup, process, cgroup)
        return PipeChannel(process)

    def _death_reason(self) -> str:
        if self._process is None:
            return "the Python process exited"
        try:
            code = self._process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "the Python process stopped answering"
        return describe_exit(code)

    def _kill(self) -> bool:
        # bwrap's --die-with-parent takes the PID namespace's init with it, and the kernel then
        # kills everything left in that namespace; the cgroup catches any straggler.
        finalizer, self._finalizer = self._finalizer, None
        self._process = self._cgroup = None
        if finalizer is not None:
            finalizer()
        return False  # /mnt/data lived in bwrap's mount namespace

    def _teardown(self) -> None:
        self._kill()


def _cleanup(process: subprocess.Popen[bytes], cgroup: _Cgroup | None) -> None:
    """What a session dropped without ``close()`` leaves: its bwrap and its cgroup."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait(timeout=5)
    if cgroup is not None:
        cgroup.kill_all()
        cgroup.remove()


def _reap_cgroups(parent: Path) -> None:
    """Remove the empty cgroups that sessions of processes now gone left behind."""
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            owner = child.name.split("-", 1)[0]
            if child.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
                with contextlib.suppress(OSError):
                    child.rmdir()


def _count_processes(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(entry / "task"))
    return count
