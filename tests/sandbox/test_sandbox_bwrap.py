"""The bubblewrap backend under attack: sessions started from short-lived threads, memory
outside the limits (/dev/shm, /dev), the system calls Docker's profile denies, the cgroup
limits, and what a user without root gets (as an unused uid, through setpriv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from _sandbox_support import SMALL, MiB, assert_answers, open_backend

pytestmark = pytest.mark.bwrap
ROOT = Path(__file__).resolve().parents[2]


def in_thread(fn):
    """``fn()`` in a thread that has ended when this returns (a tool call's worker)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


def test_sessions_outlive_the_threads_that_started_and_restarted_them():
    session = in_thread(lambda: open_backend("bubblewrap"))
    try:
        assert in_thread(lambda: session.run("x = 41").error) is None
        ex = in_thread(lambda: session.run("x + 1"))
        assert ex.value == "42" and not ex.restarted, ex.output
        ex = in_thread(lambda: session.run("while True:\n    pass", timeout=1))
        assert ex.timed_out and ex.restarted
        in_thread(lambda: session.run("y = 'after the restart'"))
        ex = session.run("y")
        assert ex.value == "'after the restart'" and not ex.restarted, ex.output
    finally:
        session.close()


def test_a_dropped_session_takes_its_sandbox_with_it():
    import gc

    session = in_thread(lambda: open_backend("bubblewrap"))
    process = session._process
    assert session.run("1").value == "1"
    del session
    gc.collect()
    assert process.wait(timeout=10) is not None  # killed by the session's finalizer


def test_the_agents_python_tool_keeps_state_without_a_docker_engine(monkeypatch):
    import gptoss_agent.sandbox.docker as dk
    from _sandbox_support import bwrap_ready
    from gptoss_agent.agent import Agent
    from gptoss_agent.agent.scripted import ScriptedEngine
    from gptoss_agent.tools import Python

    if bwrap_ready():
        pytest.skip(bwrap_ready())
    monkeypatch.setattr(dk, "docker_available", lambda: False)  # "auto" must pick bubblewrap
    call = "<|channel|>analysis<|message|>Compute.<|end|><|start|>assistant to=python<|channel|>analysis<|message|>{}<|call|>"
    engine = ScriptedEngine(
        [
            call.format("x = 41\nprint('set')"),
            call.format("x + 1"),
            call.format("while True:\n    pass"),
            call.format("x = 7"),
            call.format("x * 6"),
            "<|channel|>final<|message|>42<|return|>",
        ]
    )
    with Python(timeout=3) as tool:
        result = Agent(engine, tools=[tool], max_steps=8).run("What is 41 + 1?")
        assert tool.session.backend == "bubblewrap"
    outputs = [c.output for c in result.tool_calls]
    assert outputs[:2] == ["set\n", "42"], outputs
    assert "Timed out after 3 s" in outputs[2]
    assert outputs[3:] == ["", "42"], outputs
    assert result.answer == "42"


FILL_SHM = (
    "n = 0\ntry:\n    for i in range(10**6):\n        with open(f'/dev/shm/fill{i}', 'wb') as f:\n"
    "            for _ in range(4):\n                f.write(b'x' * 2**20); f.flush(); n += 1\n"
    "except OSError as e:\n    err = e\nerr.errno, n"
)
"""Fills /dev/shm with files of 4 MiB (each under RLIMIT_FSIZE): (errno, MiB written)."""


def test_dev_shm_and_dev_hold_no_memory_beyond_the_limits(session_bw):
    ex = session_bw.run(FILL_SHM)
    assert ex.value and ex.value.startswith("(28,"), ex.output  # ENOSPC
    assert int(ex.value.split(",")[1].strip(" )")) <= SMALL.shm_size // MiB
    ex = session_bw.run(
        "import os\n[os.remove(f'/dev/shm/{f}') for f in os.listdir('/dev/shm')]\nres = []\nfor p in ('/dev/fill', '/dev/shm/ok'):\n"
        "    try:\n        open(p, 'w').write('x')\n        res.append('wrote')\n    except OSError as e:\n"
        "        res.append(e.errno)\nopen('/dev/null', 'w').write('fine'), res"
    )
    assert ex.value == "(4, [30, 'wrote'])", ex.output  # /dev read-only (EROFS), /dev/shm writable
    assert_answers(session_bw)


DENIED_CALLS = {
    # name: (x86-64 number, arguments); each would succeed for an unprivileged process without
    # the filter, or fail with another errno than EPERM.
    "keyctl": (250, (0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (248, (b"user", b"k", b"v", 1, -3)),
    "ptrace": (101, (0, 0, 0, 0)),  # PTRACE_TRACEME
    "userfaultfd": (323, (1,)),  # UFFD_USER_MODE_ONLY
    "perf_event_open": (298, (0, 0, -1, -1, 0)),
    "bpf": (321, (0, 0, 0)),
    "unshare": (272, (0x20000,)),  # CLONE_NEWNS
    "mount": (165, (b"none", b"/tmp", b"tmpfs", 0, 0)),
    "io_uring_setup": (425, (1, 0)),
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0)),
    "clone": (56, (0x10000000 | 17, 0, 0, 0, 0)),  # CLONE_NEWUSER | SIGCHLD
}


def test_seccomp_denies_what_dockers_default_profile_denies(session_bw):
    if os.uname().machine != "x86_64":
        pytest.skip("the attack's system call numbers are x86-64's")
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
        f"calls = {DENIED_CALLS!r}\nres = {{}}\nfor name, (nr, args) in calls.items():\n"
        "    ctypes.set_errno(0)\n    rc = libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])\n"
        "    res[name] = (rc, ctypes.get_errno())\n"
        "ctypes.set_errno(0)\nres['clone3'] = (libc.syscall(435, 0, 0), ctypes.get_errno())\nres"
    )
    ex = session_bw.run(code)
    results = eval(ex.value or "{}")  # a dict literal of ints
    assert results == {**{name: (-1, 1) for name in DENIED_CALLS}, "clone3": (-1, 38)}, ex.output
    ex = session_bw.run(
        "import subprocess, threading, os\nt = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "subprocess.run(['sh', '-c', 'echo child'], capture_output=True, text=True).stdout, os.fork() and os.wait()[1]"
    )
    assert ex.value == "('child\\n', 0)", ex.output  # threads, fork and exec still work
    assert_answers(session_bw)


@pytest.mark.skipif(os.geteuid() != 0, reason="the cgroup limits need root or a delegated cgroup")
def test_every_limit_holds_as_root(session_bw):
    assert session_bw.unenforced == [], session_bw.unenforced
    cgroup = session_bw._cgroup
    assert cgroup is not None and cgroup.enforced == {"memory", "pids", "cpu"}
    pid = session_bw._process.pid
    mine = Path(f"/proc/{pid}/cgroup").read_text()
    for path in cgroup.dirs:
        assert path.name in mine  # bwrap (and so everything in the sandbox) is in the session's cgroup
        files = {f.name: f for f in path.iterdir()}
        for key in ("memory.max", "memory.limit_in_bytes"):
            if key in files:
                assert int(files[key].read_text()) == SMALL.memory
        if "pids.max" in files:
            assert files["pids.max"].read_text().strip() == str(SMALL.pids)


AS_UNUSED_UID = ["setpriv", "--reuid", "64999", "--regid", "64999", "--clear-groups"]
USER_SCRIPT = r"""
import json, logging, sys
logging.basicConfig(format="%(message)s")
from gptoss_agent.sandbox import Limits, SandboxError, open_sandbox
limits = Limits(**json.loads(sys.argv[1]))
try:
    open_sandbox("bubblewrap", limits=limits, strict=True).close()
    strict = "started"
except SandboxError as exc:
    strict = str(exc)
with open_sandbox("bubblewrap", limits=limits) as s:
    fill = s.run(sys.argv[2]).value
    big = s.run("x = bytearray(2 * 2**30)").error or ""
    print(json.dumps({"strict": strict, "unenforced": s.unenforced, "fill": fill, "big": big[-60:]}))
"""


def test_as_a_user_the_missing_limits_are_said_and_strict_refuses():
    """bubblewrap as an unprivileged user (an unused uid through setpriv): no cgroup here, so the
    memory and CPU limits do not hold for the session; one warning line says so, strict=True
    refuses, and /dev/shm stays within its size."""
    from _sandbox_support import bwrap_ready

    if bwrap_ready():
        pytest.skip(bwrap_ready())
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to become an unused uid")
    limits = {"memory": 384 * MiB, "timeout": 20, "data_disk": 16 * MiB, "tmp_disk": 16 * MiB}
    # The package (standard library only) copied where that uid can read it: a checkout or a
    # virtual environment under /root would not be.
    readable = Path(tempfile.mkdtemp(prefix="gptoss-as-user-"))
    try:
        readable.chmod(0o755)
        shutil.copytree(ROOT / "sandbox", readable / "gptoss_agent" / "sandbox")
        (readable / "gptoss_agent" / "__init__.py").touch()
        python = (
            "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
        )
        done = subprocess.run(
            [*AS_UNUSED_UID, python, "-c", USER_SCRIPT, json.dumps(limits), FILL_SHM],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": str(readable)},
        )
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    warnings = [line for line in done.stderr.splitlines() if line.startswith("bubblewrap sandbox as uid")]
    if report["unenforced"]:
        assert all(u in report["strict"] for u in report["unenforced"]) and "strict" in report["strict"]
        assert len(warnings) == 1 and all(u in warnings[0] for u in report["unenforced"]), done.stderr
    else:
        assert report["strict"] == "started" and warnings == []
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # cgroup v1: nothing for a user
        assert "memory=384 MiB holds per process (RLIMIT_AS), not for the session" in report["unenforced"]
        assert "cpus=1 is not enforced" in report["unenforced"]
    assert report["fill"].startswith("(28,") and int(report["fill"].split(",")[1].strip(" )")) <= 48
    assert "MemoryError" in report["big"], report


def fake_cgroup2(root: Path, busy: set[str]):
    """A cgroup v2 tree as the kernel shows it to a process in /user.slice/app.scope (the root
    hands down memory and pids, not cpu), and a ``_write`` that acts like the kernel's on its
    files: ``+controller`` in cgroup.subtree_control makes it available to the children (EBUSY
    for a cgroup in ``busy``: one with processes of its own); a limit file exists only where the
    parent enabled its controller."""
    tree = ("", "user.slice", "user.slice/app.scope", "user.slice/gptoss-sandbox")
    for rel in tree:
        (root / rel).mkdir(exist_ok=True)
        (root / rel / "cgroup.controllers").write_text("cpuset cpu io memory pids" if not rel else "")
        (root / rel / "cgroup.subtree_control").write_text("")
    writes: list[tuple[str, str]] = []

    def write(path: Path, text: str) -> None:
        rel = str(path.parent.relative_to(root)).strip(".")
        if path.name == "cgroup.subtree_control":
            controller = text.lstrip("+")
            available = (path.parent / "cgroup.controllers").read_text().split()
            if rel in busy or controller not in available:
                raise OSError(16 if rel in busy else 2, "refused")
            path.write_text(" ".join([*path.read_text().split(), controller]))
            for child in path.parent.iterdir():
                if child.is_dir():
                    have = (child / "cgroup.controllers").read_text().split()
                    (child / "cgroup.controllers").write_text(" ".join([*have, controller]))
        elif path.name.startswith(("memory.", "pids.", "cpu.")):
            enabled = (path.parent.parent / "cgroup.subtree_control").read_text().split()
            if path.name.split(".")[0] not in enabled:
                raise OSError(13, "Permission denied")
            path.write_text(text)
        writes.append((f"{rel}/{path.name}".lstrip("/"), text))

    write(root / "cgroup.subtree_control", "+memory")
    write(root / "cgroup.subtree_control", "+pids")
    writes.clear()
    return writes, write


def test_cgroup_v2_enables_the_controllers_down_to_the_session(tmp_path, monkeypatch):
    """The seam that cannot run on this host (its controllers sit in cgroup v1 hierarchies):
    writes into a cgroup v2 tree, in the kernel's file format."""
    import gptoss_agent.sandbox.bubblewrap as bw

    writes, write = fake_cgroup2(tmp_path, busy=set())
    monkeypatch.setattr(bw, "_write", write)
    cgroup = bw._Cgroup("123-s-0", SMALL, root=tmp_path, own="0::/user.slice/app.scope\n")
    assert cgroup.version == 2 and cgroup.enforced == {"memory", "pids", "cpu"}
    assert cgroup.dirs == [tmp_path / "user.slice/gptoss-sandbox/123-s-0"]
    for rel in (".", "user.slice", "user.slice/gptoss-sandbox"):
        assert sorted((tmp_path / rel / "cgroup.subtree_control").read_text().split()) == [
            "cpu",
            "memory",
            "pids",
        ]
    assert ("cgroup.subtree_control", "+cpu") in writes and (
        "cgroup.subtree_control",
        "+memory",
    ) not in writes
    limits = {w for w in writes if w[0].startswith("user.slice/gptoss-sandbox/123-s-0/")}
    prefix = "user.slice/gptoss-sandbox/123-s-0/"
    assert {
        (prefix + "memory.max", str(SMALL.memory)),
        (prefix + "pids.max", str(SMALL.pids)),
        (prefix + "cpu.max", "100000 100000"),
    } <= limits


def test_cgroup_v2_without_delegation_says_what_does_not_hold(tmp_path, monkeypatch):
    import gptoss_agent.sandbox.bubblewrap as bw

    _, write = fake_cgroup2(tmp_path, busy={"user.slice"})  # processes live in user.slice itself
    monkeypatch.setattr(bw, "_write", write)
    cgroup = bw._Cgroup("123-s-1", SMALL, root=tmp_path, own="0::/user.slice/app.scope\n")
    assert cgroup.enforced == set()
    session = bw.BubblewrapSession(SMALL)
    assert session._shortfalls(None, seccomp=True) == [
        "memory=384 MiB holds per process (RLIMIT_AS), not for the session",
        "cpus=1 is not enforced",
    ]


def test_orphans_are_reaped_by_the_supervisor_as_pid_1(session_bw):
    """bwrap --as-pid-1 makes the driver's supervisor the namespace's init: orphans end up as its
    children, and it must collect them (zombies would count against the pids limit)."""
    code = (
        "import os, time\nfor _ in range(20):\n    pid = os.fork()\n    if pid == 0:\n"
        "        if os.fork() == 0:\n            time.sleep(0.2)\n            os._exit(0)\n        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "def zombies():\n    n = 0\n    for p in os.listdir('/proc'):\n        if p.isdigit():\n"
        "            try:\n                n += open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z'\n"
        "            except OSError:\n                pass\n    return n\n"
        "deadline = time.monotonic() + 10\nwhile zombies() and time.monotonic() < deadline:\n    time.sleep(0.1)\n"
        "open('/proc/1/comm').read().strip(), zombies()"
    )
    ex = session_bw.run(code, timeout=20)
    assert ex.value == "('python3', 0)", ex.output


OWNER = """
import threading, time
from gptoss_agent.sandbox import open_sandbox
box = []
t = threading.Thread(target=lambda: box.append(open_sandbox("bubblewrap", timeout=10)))
t.start(); t.join()
ex = box[0].run("import subprocess\\nsubprocess.Popen(['sleep', '%s'], start_new_session=True)")
assert ex.error is None, ex.output
print("ready", flush=True)
time.sleep(600)
"""


def test_the_sandbox_dies_with_its_sigkilled_owner():
    """The owner opened its session from a thread that has ended, then is SIGKILLed: bwrap, the
    driver and the model's background process are gone within seconds."""
    import random
    import time

    from _sandbox_support import bwrap_ready, host_processes_matching

    if bwrap_ready():
        pytest.skip(bwrap_ready())
    marker = str(random.randint(10**8, 10**9))
    owner = subprocess.Popen([sys.executable, "-c", OWNER % marker], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while not host_processes_matching(marker) and time.monotonic() < deadline:
            time.sleep(0.05)  # the Popen returned before its exec of sleep
        assert host_processes_matching(marker)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host_processes_matching(marker) == []
