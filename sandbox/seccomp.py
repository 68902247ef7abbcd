"""A seccomp filter for the bubblewrap backend, in the spirit of Docker's default profile.

``bwrap --seccomp FD`` loads a compiled classic-BPF program read from a descriptor just before it
runs the driver. The program is small enough to write out here without libseccomp: it denies the
system calls that Docker's default profile leaves out (kernel keyrings, BPF, ptrace and the
cross-process memory calls, userfaultfd, perf events, mounting and the new mount API, namespaces
through ``unshare``/``setns`` or namespace flags of ``clone``, io_uring, kernel modules, clocks,
reboot and swap), answers ``clone3`` with ENOSYS so that the C library falls back to ``clone``
(whose flags a classic filter can see), and refuses every system call of another ABI (i386 or
x32 on an x86-64 kernel), where the numbers of the table would not mean the same calls.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["DENIED", "seccomp_program"]

# Numbers from the kernel's tables: x86-64 (asm/unistd_64.h) and the generic table of arm64.
_X86_64 = dict(
    acct=163, add_key=248, bpf=321, chroot=161, clock_adjtime=305, clock_settime=227,
    delete_module=176, fanotify_init=300, finit_module=313, get_mempolicy=239, init_module=175,
    kcmp=312, kexec_file_load=320, kexec_load=246, keyctl=250, lookup_dcookie=212, mbind=237,
    mount=165, move_pages=279, name_to_handle_at=303, nfsservctl=180, open_by_handle_at=304,
    perf_event_open=298, pivot_root=155, process_vm_readv=310, process_vm_writev=311, ptrace=101,
    quotactl=179, reboot=169, request_key=249, set_mempolicy=238, setns=308, settimeofday=164,
    swapoff=168, swapon=167, syslog=103, umount2=166, unshare=272, userfaultfd=323, vhangup=153,
    # x86-64 only: port I/O and the calls of long-gone module loaders.
    iopl=172, ioperm=173, create_module=174, get_kernel_syms=177, query_module=178, uselib=134,
    clone=56,
)  # fmt: skip
_AARCH64 = dict(
    acct=89, add_key=217, bpf=280, chroot=51, clock_adjtime=266, clock_settime=112,
    delete_module=106, fanotify_init=262, finit_module=273, get_mempolicy=236, init_module=105,
    kcmp=272, kexec_file_load=294, kexec_load=104, keyctl=219, lookup_dcookie=18, mbind=235,
    mount=40, move_pages=239, name_to_handle_at=264, nfsservctl=42, open_by_handle_at=265,
    perf_event_open=241, pivot_root=41, process_vm_readv=270, process_vm_writev=271, ptrace=117,
    quotactl=60, reboot=142, request_key=218, set_mempolicy=237, setns=268, settimeofday=170,
    swapoff=225, swapon=224, syslog=116, umount2=39, unshare=97, userfaultfd=282, vhangup=58,
    clone=220,
)  # fmt: skip
_COMMON = dict(
    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, open_tree=428, move_mount=429,
    fsopen=430, fsconfig=431, fsmount=432, fspick=433, pidfd_getfd=438, process_madvise=440,
    mount_setattr=442, quotactl_fd=443,
)  # fmt: skip
"""Calls added since Linux 5.1 have one number on every architecture."""
DENIED = tuple(sorted((set(_AARCH64) | set(_COMMON)) - {"clone"}))
"""The calls that fail with EPERM on every architecture (x86-64 also denies iopl, ioperm and
the calls of long-gone module loaders)."""
CLONE3 = 435
X32_BIT = 0x40000000
ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}
"""``os.uname().machine`` -> (AUDIT_ARCH_*, numbers)."""

CLONE_NAMESPACES = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NAMESPACES |= 0x20000000 | 0x40000000
"""CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET."""

# Classic BPF: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, over struct seccomp_data
# {int nr; u32 arch; u64 instruction_pointer; u64 args[6]}.
_LOAD = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_NR, _ARCH, _ARG0 = 0, 4, 16
ALLOW = 0x7FFF0000
ERRNO = 0x00050000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The compiled filter for this machine's architecture (None where there is no table)."""
    machine = machine or os.uname().machine
    if machine not in ARCHES:
        return None
    arch, table = ARCHES[machine]
    numbers = {**table, **_COMMON}
    deny = ERRNO | errno.EPERM
    program = [
        _insn(_LOAD, _ARCH),
        _insn(_JEQ, arch, jt=1),
        _insn(_RET, ERRNO | errno.ENOSYS),  # another ABI (i386 through int 0x80, ...)
        _insn(_LOAD, _NR),
    ]
    if machine == "x86_64":
        program += [_insn(_JGE, X32_BIT, jf=1), _insn(_RET, ERRNO | errno.ENOSYS)]
    program += [_insn(_JEQ, CLONE3, jf=1), _insn(_RET, ERRNO | errno.ENOSYS)]
    for name in sorted(set(numbers) - {"clone"}):
        program += [_insn(_JEQ, numbers[name], jf=1), _insn(_RET, deny)]
    # clone with a namespace flag (flags are the first argument on both architectures).
    program += [
        _insn(_JEQ, numbers["clone"], jf=3),
        _insn(_LOAD, _ARG0),
        _insn(_JSET, CLONE_NAMESPACES, jf=1),
        _insn(_RET, deny),
        _insn(_RET, ALLOW),
    ]
    return b"".join(program)
