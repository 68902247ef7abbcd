"""What the Docker backend asks of the engine: the container's lockdown, labels and cleanup."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time

import docker
import pytest
from _sandbox_support import SMALL, docker_ready, host_processes_matching, open_backend
from gptoss_agent.sandbox import SandboxError

pytestmark = pytest.mark.docker


@pytest.fixture
def client():
    reason = docker_ready()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    import docker

    return docker.from_env()


def test_container_is_locked_down(client):
    with open_backend("docker") as s:
        info = client.api.inspect_container(s.container_id)
        host, config = info["HostConfig"], info["Config"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False
        assert host["Memory"] == SMALL.memory and host["MemorySwap"] == SMALL.memory
        assert host["NanoCpus"] == int(SMALL.cpus * 1e9) and host["PidsLimit"] == SMALL.pids
        assert set(host["Tmpfs"]) == {"/tmp", "/mnt/data"} and host["ShmSize"] == SMALL.shm_size
        assert host["AutoRemove"] is True and config["OpenStdin"] and config["StdinOnce"]  # liveness link
        assert f"size={SMALL.data_disk}" in host["Tmpfs"]["/mnt/data"]
        assert not host["Binds"] and not info["Mounts"] and not host["PortBindings"]
        assert host["Init"] is True or config["Cmd"][:2] == ["python3", "-I"]
        assert config["User"] == "65533:65533"
        assert all(e.startswith("PATH=") for e in config["Env"] or [])
        assert config["Labels"]["gptoss-agent.sandbox.host"] == socket.gethostname()
        assert s.run("import os; os.getuid(), os.getgid()").value == "(65534, 65534)"
        container_id = s.container_id
    with pytest.raises(Exception, match="No such container"):
        client.api.inspect_container(container_id)


def test_reaping_survives_a_container_removed_while_it_lists(client):
    """Another session's container can go between the engine's list and a look at it (a concurrent
    close, auto_remove): a new session must still open (seen as NotFound from an MCP server's second
    HTTP session)."""
    from gptoss_agent.sandbox.docker import LABEL, reap_leftovers
    from gptoss_agent.sandbox.image import DEFAULT_IMAGE

    labels = {LABEL: "1", f"{LABEL}.host": socket.gethostname(), f"{LABEL}.pid": str(os.getpid())}
    gone = client.containers.create(DEFAULT_IMAGE, ["true"], labels=labels, network_mode="none").id
    listed = client.api.containers(all=True, filters={"label": LABEL})
    client.api.remove_container(gone, force=True)
    original = client.api.containers
    client.api.containers = lambda *a, **kw: listed  # the list as it was before the removal
    try:
        reap_leftovers(client)  # raised docker.errors.NotFound when it inspected each listed container
    finally:
        client.api.containers = original


def test_leftovers_of_dead_owners_are_reaped(client):
    from gptoss_agent.sandbox.docker import LABEL, reap_leftovers
    from gptoss_agent.sandbox.image import DEFAULT_IMAGE

    dead = subprocess.Popen(["true"])
    dead.wait()
    made = {}
    for owner, pid in (("dead", dead.pid), ("alive", os.getpid())):
        labels = {LABEL: "1", f"{LABEL}.host": socket.gethostname(), f"{LABEL}.pid": str(pid)}
        made[owner] = client.containers.create(DEFAULT_IMAGE, ["true"], labels=labels, network_mode="none").id
    try:
        assert reap_leftovers(client) >= 1
        remaining = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert made["dead"] not in remaining and made["alive"] in remaining
    finally:
        for cid in made.values():
            with contextlib.suppress(Exception):
                client.api.remove_container(cid, force=True)


def test_missing_image_is_a_clear_error(client):
    from gptoss_agent.sandbox.docker import DockerSession

    with pytest.raises(SandboxError, match="build-image"):
        DockerSession(SMALL, image="gptoss-agent-sandbox:no-such-version", build=False)


def test_build_image_command_is_quick_when_the_image_exists(client):
    done = subprocess.run(
        [sys.executable, "-m", "gptoss_agent.sandbox", "build-image"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "exists" in done.stderr


OWNER = """
import sys, time
from gptoss_agent.sandbox import open_sandbox
s = open_sandbox("docker", timeout=10, memory=256 * 2**20)
ex = s.run("import subprocess\\nsubprocess.Popen(['sleep', '%s'], start_new_session=True)")
assert ex.error is None, ex.output
print(s.container_id, flush=True)
time.sleep(600)
"""


def _poll(probe, seconds: float):
    """``probe()``'s first truthy result within ``seconds`` (its last result otherwise)."""
    deadline = time.monotonic() + seconds
    while not (result := probe()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_the_container_dies_with_its_sigkilled_owner(client):
    """No close(), no finalizer, no atexit: the owner is SIGKILLed with a background process of
    the model running in its container; container and process are gone within seconds."""
    marker = str(random.randint(10**8, 10**9))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER % marker], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        container_id = owner.stdout.readline().strip()
        assert container_id, owner.stderr.read() if owner.stderr else ""
        assert client.api.inspect_container(container_id)["State"]["Running"]
        # Polled: one full run (load ~2) found no such process in the first `ps`, with the
        # container running; what the container runs is shown if it never appears.
        seen = _poll(lambda: host_processes_matching(marker), 10)
        assert seen, f"no host process runs sleep {marker}; the container runs {client.api.top(container_id)}"
    finally:
        owner.kill()
        owner.wait()
    def gone() -> bool:
        try:
            client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return True
        return False

    _poll(gone, 15)
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(container_id)
    assert host_processes_matching(marker) == []
