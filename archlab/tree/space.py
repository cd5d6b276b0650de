"""Free space on a run's disk.

A run stops (resumably) when its disk runs low, rather than let a full disk break a write
halfway or pass for a candidate's own failure (a sandbox that cannot write its log dies).
"""

import errno
import shutil
from pathlib import Path

MIN_FREE_BYTES = 64 * 2**20


class DiskFull(OSError):
    pass


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def ensure_free(path: Path) -> None:
    free = free_bytes(path)
    if free < MIN_FREE_BYTES:
        raise DiskFull(
            errno.ENOSPC,
            f"{free / 2**20:.0f} MiB left on the disk of {path}; archlab stops below {MIN_FREE_BYTES >> 20} MiB",
        )
