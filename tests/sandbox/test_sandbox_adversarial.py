"""Hostile code, on both backends: each case checks the host is unharmed and the session answers."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from _sandbox_support import SMALL, assert_answers, assert_host_fine, host_processes_matching

ROOT = Path(__file__).resolve().parents[2]


def test_fork_bomb(session):
    ex = session.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert ex.timed_out and ex.restarted
    assert_host_fine()
    assert_answers(session)


def test_memory_bomb(session):
    ex = session.run("blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))")
    assert ("MemoryError" in (ex.error or "")) or ex.restarted, ex.output
    assert_host_fine()
    assert_answers(session)


def test_filling_the_disk(session):
    code = (
        "n = 0\ntry:\n    with open('/mnt/data/fill', 'wb') as f:\n        while True:\n"
        "            f.write(b'x' * 2**20); f.flush(); n += 1\nexcept OSError as e:\n    err = e\nerr.errno, n"
    )
    ex = session.run(code)
    assert ex.value and ex.value.startswith(("(28,", "(27,")), ex.output  # ENOSPC or EFBIG
    assert int(ex.value.split(",")[1].strip(" )")) <= SMALL.data_disk // 2**20
    ex = session.run("import os\nos.remove('/mnt/data/fill')\nopen('/mnt/data/ok', 'w').write('fine')")
    assert ex.value == "4", ex.output
    assert_answers(session)


def test_one_huge_file(session):
    ex = session.run("f = open('/tmp/huge', 'wb', buffering=0)\nf.seek(10**12)\nf.write(b'x')")
    assert ex.error and ("File too large" in ex.error or "No space left" in ex.error), ex.output
    assert_host_fine()
    assert_answers(session)


def test_infinite_loop_times_out_and_says_state_is_lost(session):
    session.run("x = 1\nopen('/mnt/data/saved', 'w').write('1')")
    started = time.monotonic()
    ex = session.run("while True:\n    pass", timeout=2)
    assert ex.timed_out and ex.restarted
    assert time.monotonic() - started < 15
    assert "Timed out after 2 s" in ex.output and "variables, imports and definitions were lost" in ex.output
    assert "NameError" in (session.run("x").error or "")
    kept = session.run("import os; os.path.exists('/mnt/data/saved')").value == "True"
    assert ("files in /mnt/data were kept" in ex.output) == kept
    assert_answers(session)


def test_setsid_child_dies_with_the_timeout(session):
    marker = str(random.randint(10**8, 10**9))
    code = (
        "import subprocess, os, time\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{marker}1'])\n"
        "    os._exit(0)\n"
        "print('started', flush=True)\n"
        "time.sleep(1000)"
    )
    ex = session.run(code, timeout=2)
    assert ex.timed_out and ex.output.startswith("started")
    deadline = time.monotonic() + 5
    while host_processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host_processes_matching(marker) == []
    assert_answers(session)


def test_stdout_flood(session):
    ex = session.run("while True:\n    print('x' * 1000)", timeout=2)
    assert ex.timed_out and ex.output.startswith("x" * 1000)
    assert len(ex.output) < SMALL.output_chars + 400
    ex = session.run("import sys\nsys.stdout.write('y' * 10**7)\n'end'")
    assert ex.value == "'end'" and "characters of output cut" in ex.output
    assert_answers(session)


def test_invalid_utf8(session):
    ex = session.run("import os\nos.write(1, b'\\xff\\xc0\\x80 raw\\n')\nb'\\xff'.decode('latin-1')")
    assert "\\xff\\xc0\\x80 raw" in ex.output and ex.value == "'ÿ'"
    assert_answers(session)


def test_closing_stdout(session):
    session.run(
        "import sys, os\nsys.stdout.close()\nsys.stderr.close()\nos.close(0)\nos.close(1)\nos.close(2)"
    )
    ex = session.run("import os\nprint('back')\nrc = os.system('echo shell')")
    assert ex.output == "back\nshell\n"
    assert_answers(session)


def test_network_is_unreachable(session):
    ex = session.run(
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    r1 = 'connected'\n"
        "except OSError as e:\n    r1 = 'failed'\ntry:\n    socket.getaddrinfo('example.com', 80)\n    r2 = 'resolved'\n"
        "except OSError as e:\n    r2 = 'failed'\n(r1, r2)"
    )
    assert ex.value == "('failed', 'failed')", ex.output
    ex = session.run("import socket\n[name for _, name in socket.if_nameindex()]")
    assert ex.value in ("['lo']", "[]"), ex.output


def test_host_secrets_are_absent(backend, monkeypatch):
    from _sandbox_support import open_backend

    monkeypatch.setenv("GPTOSS_TEST_SECRET", "hunter2")
    with open_backend(backend) as s:
        ex = s.run("import os\n'hunter2' in str(os.environ), sorted(os.environ)")
        assert ex.value and ex.value.startswith("(False,"), ex.output
        ex = s.run(
            "import os\n"
            "def readable(p):\n    try:\n        open(p, 'rb').read(1)\n        return True\n    except OSError:\n        return False\n"
            f"readable('/etc/shadow'), os.path.exists({str(Path.home())!r} + '/.cache'), "
            f"os.path.exists({str(ROOT / 'sandbox' / 'driver.py')!r}), os.path.exists({str(ROOT / '.venv')!r}), "
            f"os.path.exists({os.environ.get('VIRTUAL_ENV', '/nonexistent-venv')!r} + '/bin')"
        )
        assert ex.value == "(False, False, False, False, False)", ex.output
    assert_host_fine()


def test_writes_outside_data_and_tmp_fail(session):
    code = (
        "results = []\nfor path in ['/x', '/etc/passwd', '/usr/bin/evil', '/usr/lib/x', '/var/x', '/mnt/x', '/proc/sys/kernel/hostname']:\n"
        "    try:\n        open(path, 'a').write('x')\n        results.append(path)\n    except OSError:\n        pass\n"
        "open('/tmp/ok', 'w').write('1'), open('/mnt/data/ok', 'w').write('1'), results"
    )
    assert session.run(code).value == "(1, 1, [])"


def test_killing_pid1_and_the_driver(session):
    ex = session.run(
        "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM):\n    try:\n        os.kill(1, sig)\n    except OSError:\n        pass\n'tried'"
    )
    assert ex.value == "'tried'" or ex.restarted
    assert_answers(session)
    session.run("x = 1")
    ex = session.run("import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)")
    assert ex.restarted and not ex.timed_out
    assert "The Python process died" in ex.output and "lost" in ex.output
    assert "NameError" in (session.run("x").error or "")
    ex = session.run("import os\nos._exit(3)")
    assert ex.restarted and "exit status 3" in ex.output
    ex = session.run("import ctypes\nctypes.string_at(0)")  # a segfault of the interpreter
    assert ex.restarted and "SIGSEGV" in ex.output, ex.output
    assert_answers(session)


def test_raising_privileges_fails(session):
    code = (
        "import os, subprocess\nres = []\nfor f in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chroot('/tmp')):\n"
        "    try:\n        f()\n        res.append('raised')\n    except OSError:\n        res.append('denied')\n"
        "status = open('/proc/self/status').read()\n"
        "caps = [l.split()[1] for l in status.splitlines() if l.startswith(('CapEff', 'CapPrm', 'CapBnd'))]\n"
        "nnp = [l.split()[1] for l in status.splitlines() if l.startswith('NoNewPrivs')]\n"
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "res.append('userns' if libc.unshare(0x10000000) == 0 else 'no userns')  # CLONE_NEWUSER\n"
        "res, os.getuid(), set(caps[:2]), nnp"
    )
    ex = session.run(code)
    assert ex.value == "(['denied', 'denied', 'denied', 'no userns'], 65534, {'0000000000000000'}, ['1'])", (
        ex.output
    )
    assert_answers(session)


FORGE = r"""
import json, os, struct
def frame(message):
    body = json.dumps(message).encode()
    return struct.pack('>I', len(body)) + body
forged = b''.join(frame(m) for m in [
    {'type': 'done', 'tail': [], 'cut': 0, 'value': "'forged'", 'error': None},
    {'type': 'done', 'id': None, 'value': "'forged'"},
    {'type': 'out', 'stream': 'stdout', 'text': 'forged'},
    {'type': 'start'},
    {'type': 'ready', 'python': '0'},
    {'type': 'run', 'code': 'pass', 'output_chars': 100},
])
supervisor = {}
for pid in ('1', str(os.getppid())):
    try:
        supervisor[pid] = os.listdir(f'/proc/{pid}/fd')
    except OSError as e:
        supervisor[pid] = e.errno
written = []
for name in os.listdir('/proc/self/fd'):
    try:
        fd = os.open(f'/proc/self/fd/{name}', os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        continue
    try:
        os.write(fd, forged)
        written.append(int(name))
    except OSError:
        pass
    finally:
        os.close(fd)
"""


def test_forged_frames_from_a_cell_leave_the_session_in_step(session):
    """A cell writes well-formed frames of the protocol (results, output, a request) into every
    descriptor it has, its own channel to the driver included; the driver's end towards the host
    is out of its reach (other processes' /proc/PID/fd: EACCES or EPERM, or no such process)."""
    session.run("x = 1")
    ex = session.run(FORGE + "sorted(written), supervisor, 'attacked'")
    assert ex.value and ex.value.endswith("'attacked')"), ex.output
    written, supervisor, _ = eval(ex.value)  # a tuple of lists, dicts and ints
    assert len([fd for fd in written if fd > 2]) >= 2  # its channel to the driver: both pipes
    assert all(isinstance(v, int) for v in supervisor.values()), supervisor  # an errno each
    for code, value in (("x", "1"), ("6 * 7", "42"), ("'b'", "'b'")):
        ex = session.run(code)
        assert ex.value == value and not ex.restarted, ex.output
    assert_answers(session)


def test_garbage_in_the_driver_channel_restarts_the_session_cleanly(session):
    code = (
        "import os\nfor name in os.listdir('/proc/self/fd'):\n    try:\n"
        "        fd = os.open(f'/proc/self/fd/{name}', os.O_WRONLY | os.O_NONBLOCK)\n"
        "        os.write(fd, b'\\xff' * 64)\n        os.close(fd)\n    except OSError:\n        pass\n'sent'"
    )
    ex = session.run(code)
    assert ex.restarted and not ex.timed_out, ex.output
    assert "too large" in ex.output and "The session was restarted" in ex.output
    for value in ("1", "2"):
        assert session.run(value).value == value
    assert_answers(session)


def test_a_thread_reading_the_requests_costs_one_restart_not_a_timeout(session):
    """A thread left running reads every descriptor the kernel has (its request pipe included):
    the next call ends when the kernel does not take its code, the one after works."""
    code = (
        "import os, threading\ndef steal(fd):\n    while True:\n        try:\n"
        "            if not os.read(fd, 65536):\n                return\n        except OSError:\n            return\n"
        "for name in os.listdir('/proc/self/fd'):\n    if int(name) > 2:\n"
        "        threading.Thread(target=steal, args=(int(name),), daemon=True).start()\n'stealing'"
    )
    assert session.run(code).value == "'stealing'"
    session.start_grace = 1.0
    started = time.monotonic()
    ex = session.run("1 + 1", timeout=60)
    assert ex.restarted and not ex.timed_out, ex.output
    assert "did not take the code within 1 s" in ex.output
    assert time.monotonic() - started < 30
    assert session.run("2 + 2").value == "4"
    assert_answers(session)
