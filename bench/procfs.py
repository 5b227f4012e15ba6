"""What /proc says about a process and about the machine: the one place the
benchmarks read it (CPU time, in clock ticks or in ns, RSS, PSS, open
sockets, read/write system calls, the process tree, the kernel's limits and
usage)."""

from __future__ import annotations

import os
from typing import Any, Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold
    spaces and parentheses): [0] is the state, [1] the parent pid."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of ``pid`` (its threads included)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_ns(pid: int) -> int:
    """CPU time of ``pid`` in ns, summed over its threads' ``schedstat``
    (the scheduler's runtime, which ``stat``'s user+sys is scaled from and
    rounds to clock ticks: 10 ms, 10-20 % of a process's CPU per
    publication at a few publications a second). A thread that ended
    takes its time with it: read it over an interval in which the process
    keeps its threads (a server's event loop, nats-server's goroutine
    threads)."""
    task_dir = f"/proc/{pid}/task"
    total = 0
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            continue  # a thread that ended while we looked: its time is gone from /proc with it
    return total


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def pss_bytes(pid: int) -> Optional[int]:
    """Proportional set size: shared pages divided among the processes sharing
    them (the interpreter and libraries the workers share count once in all);
    None where the kernel has no smaps_rollup."""
    for line in proc_lines(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def open_sockets(pid: int) -> int:
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return 0  # the process ended: it holds none
    n = 0
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}").startswith("socket:"):
                n += 1
        except OSError:
            continue  # closed while we looked
    return n


def rw_syscalls(pid: int) -> int:
    """Read and write system calls so far (read, recv, write, writev, send...)."""
    n = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith(("syscr:", "syscw:")):
                n += int(line.split()[1])
    return n


def write_syscalls(pid: int) -> int:
    """Write system calls so far (write, writev, send...): to a server
    fanning out, about one per socket written."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscw:"):
                return int(line.split()[1])
    return 0


def alive(pid: int) -> bool:
    try:
        return stat_fields(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> Optional[list[bytes]]:
    """The argv of ``pid``, None once it has ended."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def proc_lines(path: str) -> list[str]:
    """The lines of a /proc file, none if this kernel has no such file (no
    conntrack module, a container hiding /proc/sys): the report leaves that
    key out rather than fail a benchmark over it."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return " ".join(proc_lines("/proc/loadavg")).split()[:3]


_KERNEL_FILES = (
    ("conntrack", "/proc/sys/net/netfilter/nf_conntrack_count"),
    ("conntrack_max", "/proc/sys/net/netfilter/nf_conntrack_max"),
    ("somaxconn", "/proc/sys/net/core/somaxconn"),
    ("tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    ("netdev_max_backlog", "/proc/sys/net/core/netdev_max_backlog"),
    ("ip_local_port_range", "/proc/sys/net/ipv4/ip_local_port_range"),
    ("file_nr", "/proc/sys/fs/file-nr"), ("file_max", "/proc/sys/fs/file-max"),
    ("tcp_mem", "/proc/sys/net/ipv4/tcp_mem"),
)


def kernel_state() -> dict[str, Any]:
    """What the kernel holds and allows, machine-wide: TCP sockets in use,
    conntrack entries, open files, memory available, the limits that matter."""
    out: dict[str, Any] = {}
    for line in proc_lines("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            out["tcp"] = {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    for key, path in _KERNEL_FILES:
        # these files hold whitespace-separated integers: anything else is a
        # kernel we do not know, and the ValueError says so
        text = " ".join(proc_lines(path)).split()
        if text:
            out[key] = int(text[0]) if len(text) == 1 else [int(x) for x in text]
    for line in proc_lines("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            out["mem_available"] = int(line.split()[1]) * 1024
    return out
