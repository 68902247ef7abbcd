"""The Docker backend: one locked-down container per session, the driver in an attached exec.

The container's main process (under Docker's init) is ``sleep infinity`` running as uid 65533;
drivers run as ``nobody`` (65534) through ``docker exec``, so the model's code can neither signal
PID 1 nor its keeper. On a timeout every process of that user dies (by host PID, when the engine
runs on this machine and we may signal its processes), children that started new sessions or
daemonized included, and /mnt/data survives; otherwise the whole container is replaced.

The container dies with its owner: PID 1's stdin is attached to this process alone and PID 1
exits when it ends (``REAPER``), and the container removes itself then (``auto_remove``);
``reap_leftovers`` removes what an engine that was down at that moment kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import SandboxError
from .image import DEFAULT_IMAGE, ensure_image
from .limits import Limits
from .repl import Channel, ReplSession, SocketChannel, describe_exit, driver_source, sandbox_env

__all__ = ["DockerSession", "docker_available", "reap_leftovers"]

LABEL = "gptoss-agent.sandbox"
KEEPER_USER = "65533:65533"
CODE_USER = "65534:65534"

REAPER = """
import os, threading, time
def liveness():
    while os.read(0, 65536):
        pass
    os._exit(0)
threading.Thread(target=liveness, daemon=True).start()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""
"""The container's main process: reaps orphans (Docker's init runs it when the engine has one),
and exits when its stdin ends, which stops the container and everything in it. The owning
process holds the only attachment to that stdin (``StdinOnce``): the engine closes it when the
owner's connection goes, however the owner ended (SIGKILL included), and ``auto_remove`` then
removes the container."""


def _client(timeout: float = 60) -> Any:
    import docker

    return docker.from_env(timeout=timeout)


def docker_available() -> bool:
    """Whether a Docker engine answers (within a few seconds)."""
    try:
        client = _client(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def reap_leftovers(client: Any) -> int:
    """Remove sandbox containers whose owning process (on this host) is gone. Returns how many."""
    removed = 0
    host = socket.gethostname()
    # The low-level list: the high-level one inspects each container it lists, and one that another
    # session removes in between (a concurrent close, auto_remove) made it raise NotFound.
    for container in client.api.containers(all=True, filters={"label": LABEL}):
        labels = container.get("Labels") or {}
        if labels.get(f"{LABEL}.host") != host:
            continue
        try:
            pid = int(labels.get(f"{LABEL}.pid", "0"))
        except ValueError:
            pid = 0
        if pid > 0 and _alive(pid):
            continue
        with contextlib.suppress(Exception):
            client.api.remove_container(container["Id"], force=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(client: Any, container_id: str, liveness: Any = None) -> None:
    if liveness is not None:
        with contextlib.suppress(Exception):
            liveness.close()
    with contextlib.suppress(Exception):
        client.api.remove_container(container_id, force=True)


class DockerSession(ReplSession):
    """A session in its own container (no network, read-only root, limits, non-root, no mounts)."""

    backend = "docker"

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        build: bool = True,
        progress: Callable[[str], None] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__(limits or Limits())
        self.strict = strict  # every limit holds in a container: nothing to refuse
        import docker.errors

        self._errors = docker.errors
        try:
            self.client = _client()
            self.client.ping()
        except Exception as exc:
            raise SandboxError(
                f"no Docker engine answers ({exc}); start one (dockerd) or use bubblewrap"
            ) from exc
        self.image = image
        reap_leftovers(self.client)
        ensure_image(self.client, image, build=build, progress=progress)
        self.container_id: str | None = None
        self._exec_id: str | None = None
        self._finalizer: weakref.finalize | None = None

    # -- the container -------------------------------------------------------------------------

    def _create_container(self) -> str:
        try:
            return self._run_container(init=True)
        except self._errors.APIError as exc:
            if "docker-init" not in str(exc):
                raise SandboxError(f"cannot start the sandbox container: {exc}") from exc
        # An engine without its init binary (Debian's tini): the reaper alone is PID 1.
        return self._run_container(init=False)

    def _run_container(self, *, init: bool) -> str:
        from docker.types import Ulimit

        lim = self.limits
        container = liveness = None
        try:
            container = self.client.containers.create(
                self.image,
                ["python3", "-I", "-c", REAPER],
                user=KEEPER_USER,
                init=init,
                stdin_open=True,
                detach=False,  # with stdin_open: StdinOnce, the stdin ends when our attachment does
                network_mode="none",
                read_only=True,
                tmpfs={
                    "/tmp": f"rw,nosuid,nodev,size={lim.tmp_disk},mode=1777",
                    "/mnt/data": f"rw,nosuid,nodev,size={lim.data_disk},mode=1777",
                },
                mem_limit=lim.memory,
                memswap_limit=lim.memory,
                nano_cpus=int(lim.cpus * 1e9),
                pids_limit=lim.pids,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ulimits=[
                    Ulimit(name="nofile", soft=lim.open_files, hard=lim.open_files),
                    Ulimit(name="fsize", soft=lim.max_file, hard=lim.max_file),
                    Ulimit(name="core", soft=0, hard=0),
                ],
                environment={},
                hostname="sandbox",
                working_dir="/mnt/data",
                labels={
                    LABEL: "1",
                    f"{LABEL}.host": socket.gethostname(),
                    f"{LABEL}.pid": str(os.getpid()),
                },
                ipc_mode="private",
                shm_size=lim.shm_size,
                auto_remove=True,
            )
            liveness = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
            container.start()
        except self._errors.APIError:
            if container is not None:
                _remove(self.client, container.id, liveness)
            raise
        except self._errors.DockerException as exc:
            if container is not None:
                _remove(self.client, container.id, liveness)
            raise SandboxError(f"cannot start the sandbox container: {exc}") from exc
        self._finalizer = weakref.finalize(self, _remove, self.client, container.id, liveness)
        return str(container.id)

    def _running(self) -> bool:
        if not self.container_id:
            return False
        try:
            state = self.client.api.inspect_container(self.container_id)["State"]
        except self._errors.DockerException:
            return False
        return bool(state.get("Running"))

    def _spawn(self) -> Channel:
        if self.container_id and not self._running():
            self._teardown()
        if not self.container_id:
            self.container_id = self._create_container()
        api = self.client.api
        try:
            self._exec_id = api.exec_create(
                self.container_id,
                ["python3", "-I", "-c", driver_source()],
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                user=CODE_USER,
                environment=sandbox_env(self.limits),
                workdir="/mnt/data",
            )["Id"]
            sock = api.exec_start(self._exec_id, socket=True)
        except self._errors.DockerException as exc:
            raise SandboxError(f"cannot start Python in the sandbox container: {exc}") from exc
        raw = getattr(sock, "_sock", sock)
        if not isinstance(raw, socket.socket):
            raise SandboxError(
                "the Docker engine's connection is not a socket (remote engines over ssh are unsupported)"
            )
        # Keep the HTTP response alive with the socket it owns.
        self._sock_owner = sock
        return SocketChannel(raw)

    def _death_reason(self) -> str:
        code = None
        deadline = time.monotonic() + 1.0
        while self._exec_id and code is None and time.monotonic() < deadline:
            try:
                code = self.client.api.exec_inspect(self._exec_id).get("ExitCode")
            except self._errors.DockerException:
                break
            if code is None:
                time.sleep(0.02)
        return describe_exit(code)

    def _kill(self) -> bool:
        if not self.container_id:
            return True
        if self._running() and self._kill_from_host():
            return True
        self._teardown()  # no way to reach the processes one by one: replace the container
        return False

    def _kill_from_host(self) -> bool:
        """SIGSTOP then SIGKILL every process of the code's user, by host PID, until none is
        left: fast even against a fork bomb, and /mnt/data survives. Only for an engine on this
        machine, and only PIDs whose cgroup names this container."""
        container_id = self.container_id
        if not container_id:
            return False
        for _ in range(100):
            try:
                listing = self.client.api.top(container_id, ps_args="-o pid,uid")
            except self._errors.DockerException:
                return False
            victims = [
                int(row[0]) for row in listing.get("Processes") or [] if row[1] == CODE_USER.split(":")[0]
            ]
            if not victims:
                return True
            for pid in victims:
                try:
                    if container_id not in Path(f"/proc/{pid}/cgroup").read_text():
                        return False  # not our kernel's process: the engine is elsewhere
                except FileNotFoundError:
                    continue  # already gone
                except OSError:
                    return False
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in victims:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                    except PermissionError:
                        return False
            time.sleep(0.005)
        return False

    def _teardown(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.container_id = None
        self._exec_id = None
