"""The run's driver lock: one `archlab run` drives a run directory at a time, and readers (status,
the web UI) can tell whether one is driving it now, so a node left `evaluating` by a stopped run is
shown as interrupted rather than as in progress."""

import fcntl
import os
from pathlib import Path

from archlab.errors import UserError

LOCK_FILE = "driver.lock"


def hold_driver_lock(run_dir: Path):
    """Take the run's driver lock and return it; keep the returned file open for as long as the run
    goes. The kernel drops the lock when the process ends, however it ends, so a crash never leaves
    a stale lock behind."""
    lock = open(Path(run_dir) / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        raise UserError(f"{run_dir} is already being run by {holder}; wait for it or stop it first") from None
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    return lock


def driver_pid(run_dir: Path) -> int | None:
    """The process driving this run now, or None. Read from the kernel's table of locks
    (/proc/locks), which takes no lock itself: trying the lock to see would make an `archlab run`
    started at that moment fail as "already being run"."""
    try:
        st = (Path(run_dir) / LOCK_FILE).stat()
        with open("/proc/locks") as table:
            rows = table.read().splitlines()
    except OSError:  # no lock file (never driven), or no /proc (not Linux): nobody is driving it that we can see
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for row in rows:  # "3: FLOCK  ADVISORY  WRITE 2148 fe:00:5472917 0 EOF" ("->" marks a waiter)
        fields = row.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None
