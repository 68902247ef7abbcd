"""The bubblewrap backend, for machines without a Docker engine.

Each driver runs in ``bwrap`` with every namespace unshared (no network, its own PIDs, IPC,
hostname, user and cgroup namespaces), a clean environment, a filesystem that holds only a
read-only Python runtime (the debootstrap root filesystem of the Docker image when it was built
here, else the host's ``/usr``), size-limited tmpfs at ``/tmp``, ``/mnt/data`` and ``/dev/shm``
(the rest of ``/dev`` read-only), no capabilities, no nested user namespaces, and a seccomp
filter like Docker's default profile (``seccomp.py``). Limits come from rlimits set before
``bwrap`` starts and from a cgroup (memory, pids, CPU) where the host lets us make one: as root,
or in a cgroup v2 subtree delegated to the user. What cannot be applied is said in one warning
line at start, or refused with ``strict=True``.

When started as root, each session runs under its own unused host uid, so that RLIMIT_NPROC
counts exactly the session's processes. Every bwrap is started from one long-lived thread
(``_Launcher``): ``--die-with-parent`` then ties it to this process, whichever thread opened the
session. A timeout kills ``bwrap``; ``--die-with-parent`` then kills the PID namespace's init,
and the kernel kills everything left in that namespace.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .base import SandboxError
from .image import rootfs_dir
from .limits import Limits, MiB
from .repl import Channel, PipeChannel, ReplSession, describe_exit, driver_source, sandbox_env
from .seccomp import seccomp_program

__all__ = ["BubblewrapSession", "bubblewrap_available"]

log = logging.getLogger(__name__)
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


CONTROLLERS = ("memory", "pids", "cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroups(text: str | None = None) -> dict[str, str]:
    """This process's cgroup per hierarchy, from /proc/self/cgroup: ``{"memory": "/a/b", "": "/"}``
    ("" is the unified (v2) hierarchy)."""
    if text is None:
        try:
            text = Path("/proc/self/cgroup").read_text()
        except OSError:
            return {}
    own = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    return own


class _Cgroup:
    """A cgroup (v1 or v2) with the session's memory, pids and CPU limits, where one can be made.

    v2: a subtree ``gptoss-sandbox`` beside this process's own cgroup (a cgroup with processes
    cannot hand controllers to children), with ``+memory +pids +cpu`` written into the
    ``cgroup.subtree_control`` of every cgroup on the way down, then one child per session.
    v1: a child of this process's own cgroup in each controller's hierarchy. ``enforced`` says
    which of memory, pids and cpu were really applied."""

    def __init__(self, name: str, limits: Limits, root: Path = CGROUP_ROOT, own: str | None = None) -> None:
        self.dirs: list[Path] = []
        self.controls: list[str] = []
        self.enforced: set[str] = set()
        self.version = 0
        quota = int(limits.cpus * 100_000)
        mine = _own_cgroups(own)
        if (root / "cgroup.controllers").exists():  # v2 only
            self.version = 2
            self._make_v2(root, mine.get("", "/"), name, limits, quota)
            return
        for controller, wanted in (
            (
                "memory",
                {
                    "memory.limit_in_bytes": str(limits.memory),
                    "memory.memsw.limit_in_bytes": str(limits.memory),
                },
            ),
            ("pids", {"pids.max": str(limits.pids)}),
            ("cpu", {"cpu.cfs_quota_us": str(quota), "cpu.cfs_period_us": "100000"}),
        ):
            hierarchy = root / controller
            if not hierarchy.is_dir():
                continue
            self.version = 1
            base = hierarchy / mine.get(controller, "/").lstrip("/") / "gptoss-sandbox"
            if self._make(base, name, wanted):
                self.enforced.add(controller)

    def _make_v2(self, root: Path, own: str, name: str, limits: Limits, quota: int) -> None:
        own_dir = root / own.lstrip("/")
        parent = own_dir if own_dir == root else own_dir.parent
        base = parent / "gptoss-sandbox"
        with contextlib.suppress(OSError):
            base.mkdir(exist_ok=True)
        path = root
        for part in [*base.relative_to(root).parts, None]:
            _enable_controllers(path)
            if part is None:
                break
            path = path / part
        wanted = {
            "memory.max": str(limits.memory),
            "memory.swap.max": "0",
            "pids.max": str(limits.pids),
            "cpu.max": f"{quota} 100000",
        }
        if self._make(base, name, wanted):
            self.enforced = {c for c in CONTROLLERS if f"{c}.max" in self.controls}

    def _make(self, base: Path, name: str, wanted: dict[str, str]) -> bool:
        """Create ``base/name`` and write ``wanted`` into it; True when the first file took."""
        _reap_cgroups(base)
        path = base / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False
        self.dirs.append(path)
        for key, value in wanted.items():
            with contextlib.suppress(OSError):
                _write(path / key, value)
                self.controls.append(key)
        return next(iter(wanted)) in self.controls

    def join(self) -> None:
        """Move the calling process in (called in the child before it execs bwrap); raises
        OSError when the kernel refuses, so that the session never believes a limit it lacks."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int | None:
        """How many processes the memory limit killed (None where the cgroup cannot say)."""
        for path in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError, ValueError):
                    for line in (path / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return None

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


def _write(path: Path, text: str) -> None:
    """One write to a cgroup file (the kernel answers each with success or an errno)."""
    with open(path, "w") as f:
        f.write(text)


def _enable_controllers(path: Path) -> None:
    """Hand memory, pids and cpu down from a v2 cgroup to its children, one at a time (one that
    is unavailable or refused leaves the others)."""
    try:
        available = set((path / "cgroup.controllers").read_text().split())
        enabled = set((path / "cgroup.subtree_control").read_text().split())
    except OSError:
        return
    for controller in CONTROLLERS:
        if controller in available and controller not in enabled:
            with contextlib.suppress(OSError):
                _write(path / "cgroup.subtree_control", f"+{controller}")


class _Launcher:
    """Starts every bwrap from one thread that lives as long as the process.

    ``--die-with-parent`` is ``PR_SET_PDEATHSIG``, which fires when the *thread* that forked bwrap
    ends, not the process: a session started from a short-lived thread (a tool call's worker)
    would be killed as soon as that thread returned. From this thread, bwrap dies with the
    process (however it ends, SIGKILL included) and with nothing else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[Any]]] = queue.SimpleQueue()
        self._pid = 0

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (which has no such thread)
                self._requests = queue.SimpleQueue()
                threading.Thread(
                    target=self._serve, args=(self._requests,), name="gptoss-bwrap-launcher", daemon=True
                ).start()
                self._pid = os.getpid()
            requests = self._requests
        future: Future[subprocess.Popen[bytes]] = Future()
        requests.put((argv, kwargs, future))
        try:
            return future.result()
        except BaseException:  # interrupted while waiting: a bwrap started for nobody is killed
            future.add_done_callback(_kill_abandoned)
            raise

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[Any]]]) -> None:
        while True:
            argv, kwargs, future = requests.get()
            try:
                future.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)


def _kill_abandoned(future: Future[subprocess.Popen[bytes]]) -> None:
    if not future.cancelled() and future.exception() is None:
        process = future.result()
        process.kill()
        process.wait()


_launcher = _Launcher()


class BubblewrapSession(ReplSession):
    """A session in bubblewrap namespaces; see the module docstring for what is isolated.

    ``strict=True`` refuses to start where a limit cannot be applied as asked (a memory or CPU
    limit without a cgroup, or no seccomp filter); otherwise one warning line says what is
    missing when the session starts."""

    backend = "bubblewrap"

    def __init__(
        self, limits: Limits | None = None, *, root: str | Path | None = None, strict: bool = False
    ) -> None:
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
        self.strict = strict
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._cgroup: _Cgroup | None = None
        self._uid = os.getuid()
        self._warned = False
        self.isolation: list[str] = []
        """What enforces the limits here (rlimits, cgroup files, seccomp), for diagnostics."""
        self.unenforced: list[str] = []
        """The limits that do not hold here as asked, in words (empty when all do)."""

    def _argv(self, seccomp_fd: int | None) -> list[str]:
        lim, root = self.limits, self.root
        known = _bwrap_options(str(self.bwrap))
        # --as-pid-1: bwrap's own init would hold the host's pipes where the sandbox can open them
        # (/proc/1/fd); the driver's supervisor is PID 1 instead, non-dumpable and unsignalable.
        argv = [str(self.bwrap), "--unshare-all", "--unshare-user", "--die-with-parent", "--as-pid-1"]
        if "--disable-userns" in known:
            argv.append("--disable-userns")  # no nested user namespaces for the code
        argv += ["--new-session", "--clearenv", "--hostname", "sandbox", "--cap-drop", "ALL"]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
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
        # /dev is a tmpfs the sandbox's user owns and /dev/shm has no size: both would be memory
        # outside every limit. /dev becomes read-only and /dev/shm a sized tmpfs of its own.
        argv += ["--proc", "/proc", "--dev", "/dev"]
        for size, mount in ((lim.tmp_disk, "/tmp"), (lim.data_disk, "/mnt/data"), (lim.shm_size, "/dev/shm")):
            if "--size" in known:  # without it (bwrap < 0.7) only RLIMIT_FSIZE bounds each file
                argv += ["--size", str(size)]
            argv += ["--perms", "1777", "--tmpfs", mount]
        argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
        argv += ["--chdir", "/mnt/data", "--uid", "65534", "--gid", "65534"]
        argv += ["--", "/usr/bin/python3", "-I", "-c", driver_source()]
        return argv

    def _shortfalls(self, cgroup: _Cgroup | None, seccomp: bool) -> list[str]:
        """The limits that do not hold as asked, in words."""
        lim = self.limits
        enforced = cgroup.enforced if cgroup else set()
        missing = []
        if "memory" not in enforced:
            missing.append(
                f"memory={lim.memory // MiB} MiB holds per process (RLIMIT_AS), not for the session"
            )
        if "cpu" not in enforced:
            missing.append(f"cpus={lim.cpus:g} is not enforced")
        if not seccomp:
            missing.append(f"no seccomp filter (no table for {os.uname().machine})")
        if "--size" not in _bwrap_options(str(self.bwrap)):
            missing.append("tmpfs sizes are not enforced (bwrap < 0.7 has no --size)")
        return missing

    def _spawn(self) -> Channel:
        lim = self.limits
        as_root = os.geteuid() == 0
        name = f"{os.getpid()}-{id(self):x}-{next(_uids)}"
        cgroup: _Cgroup | None = _Cgroup(name, lim)
        assert cgroup is not None
        if not cgroup.enforced:
            cgroup.remove()
            cgroup = None
        program = seccomp_program()
        # As root: a fresh, unused host uid per driver, so RLIMIT_NPROC counts only this session.
        uid = 1_500_000_000 + (os.getpid() * 4096 + next(_uids)) % 500_000_000 if as_root else os.getuid()
        self._uid = uid
        nproc = lim.pids if as_root else _count_processes(uid) + lim.pids
        try:
            process = self._start(cgroup, program, uid, nproc, as_root)
        except subprocess.SubprocessError:
            if cgroup is None:
                raise SandboxError("cannot start bubblewrap: its limits could not be set") from None
            # The kernel refused to move the new process into the cgroup: go on without it.
            cgroup.remove()
            cgroup = None
            try:
                process = self._start(cgroup, program, uid, nproc, as_root)
            except subprocess.SubprocessError:
                raise SandboxError("cannot start bubblewrap: its limits could not be set") from None
        self._cgroup = cgroup
        self.isolation = ["rlimits"] + (cgroup.controls if cgroup else []) + (["seccomp"] if program else [])
        self.unenforced = self._shortfalls(cgroup, program is not None)
        self._process = process
        self._finalizer = weakref.finalize(self, _cleanup, process, cgroup)
        if self.unenforced and self.strict:
            self._kill()
            raise SandboxError(
                f"bubblewrap cannot apply every limit here ({'; '.join(self.unenforced)}), "
                "and strict limits were asked for"
            )
        if self.unenforced and not self._warned:
            self._warned = True
            who = "root" if as_root else f"uid {os.getuid()}"
            log.warning("bubblewrap sandbox as %s: %s", who, "; ".join(self.unenforced))
        return PipeChannel(process)

    def _start(
        self, cgroup: _Cgroup | None, program: bytes | None, uid: int, nproc: int, as_root: bool
    ) -> subprocess.Popen[bytes]:
        lim = self.limits
        # Address space is a crude stand-in for memory (OpenBLAS, for one, reserves far more than
        # it touches and spins when a reservation fails): only without a memory cgroup.
        address_space = resource.RLIM_INFINITY if cgroup and "memory" in cgroup.enforced else lim.memory

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

        seccomp_fd = None
        if program is not None:  # bwrap reads the compiled filter from a descriptor
            seccomp_fd, w = os.pipe()
            os.write(w, program)  # a few hundred bytes: the pipe holds them
            os.close(w)
        try:
            return _launcher.popen(
                self._argv(seccomp_fd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},
                cwd=tempfile.gettempdir(),
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
                pass_fds=() if seccomp_fd is None else (seccomp_fd,),
            )
        except OSError as exc:
            raise SandboxError(f"cannot start bubblewrap: {exc}") from exc
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

    def _death_reason(self) -> str:
        if self._process is None:
            return "the Python process exited"
        try:
            code = self._process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "the Python process stopped answering"
        oom = self._cgroup.oom_kills() if self._cgroup else None
        return describe_exit(code, memory_killed=None if oom is None else oom > 0)

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
