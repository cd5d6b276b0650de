"""The scorer's clock on a model server: the CPU time its whole process tree has used, read from
this machine's kernel. A candidate can spend more of it but never report less (its own figures of
its cost are only what it chooses to say), and work moved to threads or child processes is counted
too: each living process's CPU clock (every thread it ever ran, in nanoseconds: the threads' own
/proc schedstat loses those that exited, and a thread per request hid a whole forward from it),
plus what reaped children left their parents."""

import os
import time

from archlab.sandbox import zygote

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
CPUCLOCK_SCHED = 2  # the kernel's process CPU clock ids: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root` and every process below it, living or reaped."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += _own_s(pid) + _reaped_s(pid)
        todo += zygote.children(pid)
    return total


def _own_s(pid: int) -> float:
    """The process's CPU clock (all its threads, living or exited); a zombie's from its stat line."""
    try:
        return time.clock_gettime(~pid << 3 | CPUCLOCK_SCHED)
    except OSError:
        fields = _stat(pid)
        return (int(fields[11]) + int(fields[12])) * TICK_S if len(fields) > 14 else 0.0


def _reaped_s(pid: int) -> float:
    """cutime + cstime: the children it has waited for, and theirs."""
    fields = _stat(pid)
    return (int(fields[13]) + int(fields[14])) * TICK_S if len(fields) > 14 else 0.0


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces): state is [0]."""
    line = zygote.read(f"/proc/{pid}/stat")
    return line[line.rfind(b")") + 2 :].split()
