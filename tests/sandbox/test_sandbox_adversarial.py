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
