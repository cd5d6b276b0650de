"""What a candidate cannot do, layer by layer; and a report of which layers are active here.

Parent side (runner.py uses `launcher()`):
- every child runs in its own session/process group with a wall-clock timeout (runner.py);
- bubblewrap (`bwrap`, Debian package `bubblewrap`) when it works on this machine: new PID,
  network, IPC and UTS namespaces, the whole file system mounted read-only, a private /tmp,
  the scratch directory bound read-write as the only writable place, the evaluation data
  hidden, killed with its parent; else `unshare` (util-linux) for the network and PID
  namespaces; else nothing at this layer;
- when archlab runs as root, the child runs as a fresh unprivileged uid (one per evaluation),
  so RLIMIT_NPROC really limits its processes (the kernel ignores it for root) and it cannot
  write files that belong to anyone else;
- an environment stripped to a few harmless variables (API keys never reach the child).

Child side (worker.py calls these before the candidate's code is loaded):
- `apply_limits`: RLIMIT_AS (memory), RLIMIT_NPROC (processes and threads), RLIMIT_CPU (a
  backstop when the parent is gone), RLIMIT_FSIZE, RLIMIT_CORE; a watchdog that exits when
  the parent dies; torch's CPU threads capped;
- `AuditGuard`: a `sys.addaudithook` hook installed after the harness is imported and warmed
  up, before the candidate is loaded. It blocks opening files for writing outside the
  sandbox's cache directory, reading the evaluation data, sockets, subprocesses, fork/exec,
  signals to other processes, ctypes, importing modules outside an allowlist, and — when the
  candidate's own code is the caller — frame and code-object introspection, exec/compile
  and setting attributes on classes. Violations are recorded: a candidate that catches the
  PermissionError is still rejected ("forbidden").
- `Integrity`: a snapshot of the identity of every function and class attribute the harness
  relies on (torch, torch.nn.functional, Tensor methods, optimizers, the harness itself,
  time/math/json), of torch's global state (default dtype, threads, function/dispatch mode
  stacks, global module hooks), compared after the candidate is imported, after the checks,
  after training and after evaluation ("tamper" when anything changed).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")
UID_BASE, UID_SPAN = 1_600_000, 400_000  # unprivileged uids for sandboxes started by root
DEFAULT_NPROC = 256  # processes + threads of the child (torch's thread pools included)
CACHE_DIR = "cache"  # scratch/cache: HOME, TMPDIR and compiler caches; the only place the hook lets anyone write


# ---------------------------------------------------------------------------------------------
# parent side: how to launch a child
# ---------------------------------------------------------------------------------------------
@dataclass
class Protection:
    name: str
    active: bool
    detail: str


@dataclass
class Launcher:
    """How children are started on this machine (chosen once per process by probing)."""

    kind: str  # "bwrap" | "unshare" | "plain"
    drop_uid: bool  # running as root: the child drops to its own unprivileged uid once the harness is loaded
    facts: dict = field(default_factory=dict)  # what the probe observed inside the sandbox

    def prepare(self, scratch: Path, kernel_cache: Path | None = None) -> int | None:
        """Make the scratch directory (and its cache dir) the child's; returns the uid the child must drop to.
        kernel_cache: a trusted evaluation's cache dir, copied in first (see runner.evaluate)."""
        cache = scratch / CACHE_DIR
        if kernel_cache is not None and Path(kernel_cache).is_dir():
            shutil.copytree(kernel_cache, cache, symlinks=True, dirs_exist_ok=True)
        cache.mkdir(exist_ok=True)
        if not self.drop_uid:
            return None
        uid = _next_uid()
        for parent, dirs, files in os.walk(scratch):
            os.chown(parent, uid, uid)
            for name in dirs + files:
                os.lchown(os.path.join(parent, name), uid, uid)
        return uid

    def command(self, argv: list[str], scratch: Path, *, hide: list[str] = (), read: list[str] = (),
                cuda: bool = False) -> list[str]:
        """The child's argv. `read`: paths it must be able to read (data that may live under /tmp,
        which bwrap replaces by an empty one); `hide`: paths it must not see (applied after)."""
        scratch = Path(scratch).resolve()
        if self.kind == "bwrap":
            return _bwrap_argv(scratch, hide, read, cuda, as_root=os.getuid() == 0) + argv
        # Without bwrap's --die-with-parent: the kernel kills the launcher when the driver dies (a
        # SIGKILLed driver cannot clean up), and unshare --kill-child takes the worker with it.
        deathsig = [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        if self.kind == "unshare":
            return deathsig + _unshare_argv(as_root=os.getuid() == 0) + argv
        return deathsig + list(argv)

    def popen_kwargs(self) -> dict:
        return {"start_new_session": True}


def environment(scratch: Path, threads: int, extra: dict | None = None) -> dict:
    """The child's whole environment: nothing secret, everything writable inside the scratch dir."""
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    cache = str(Path(scratch).resolve() / CACHE_DIR)
    env.update(
        HOME=cache, TMPDIR=cache, TRITON_CACHE_DIR=cache, TORCHINDUCTOR_CACHE_DIR=cache, XDG_CACHE_HOME=cache,
        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
        PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1",
        # The compile check's inductor (on a GPU) compiles in-process, without its caches: the worker
        # pool's results and the FX-graph and AOT-autograd cache entries are pickles, and the audit
        # hook refuses unpickling classes (pickle.find_class), for the library as for the candidate.
        TORCHINDUCTOR_COMPILE_THREADS="1", TORCHINDUCTOR_FX_GRAPH_CACHE="0", TORCHINDUCTOR_AUTOGRAD_CACHE="0",
    )
    if extra:
        env.update(extra)
    return env


_launcher: Launcher | None = None
_launcher_lock = threading.Lock()
_uid_counter = 0
_uid_lock = threading.Lock()


def launcher(refresh: bool = False) -> Launcher:
    """The strongest way of starting children that works here (probed once, ~0.1 s)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None or refresh:
            _launcher = _choose_launcher()
        return _launcher


def _next_uid() -> int:
    """A uid no other sandbox of this process uses at the same time (processes rarely collide;
    when they do, two sandboxes merely share one process budget)."""
    global _uid_counter
    with _uid_lock:
        _uid_counter += 1
        return UID_BASE + (os.getpid() * 97 + _uid_counter) % UID_SPAN


def _choose_launcher() -> Launcher:
    forced = os.environ.get("ARCHLAB_SANDBOX")  # "bwrap" | "unshare" | "plain": for tests and doctor
    drop = hasattr(os, "getuid") and os.getuid() == 0 and os.environ.get("ARCHLAB_SANDBOX_UID", "1") != "0"
    kinds = [forced] if forced else ["bwrap", "unshare", "plain"]
    for kind in kinds:
        for drop_uid in ([True, False] if drop else [False]):
            candidate = Launcher(kind, drop_uid)
            facts = _probe(candidate)
            if facts.get("ok"):
                candidate.facts = facts
                return candidate
    return Launcher("plain", False, {"ok": False, "error": "even a plain child failed to start"})


_PROBE = r"""
import json, os, resource, socket, sys
facts = {"ok": True, "pid": os.getpid()}
import importlib.util
spec = importlib.util.find_spec("torch")
facts["torch_readable"] = bool(spec and spec.origin and os.access(spec.origin, os.R_OK))
import archlab.sandbox.static
uid = int(sys.argv[1])
if uid >= 0:  # what the worker does once the harness is loaded
    resource.setrlimit(resource.RLIMIT_NPROC, (4, 4))
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
    facts["stdlib_readable"] = os.access(os.__file__, os.R_OK)
    pids = []
    try:
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                os.read(os.open("/dev/null", os.O_RDONLY), 1); os._exit(0)
            pids.append(pid)
    except OSError:
        pass
    for pid in pids:
        os.waitpid(pid, 0)
    facts["nproc_enforced"] = len(pids) < 8
facts["uid"] = os.getuid()
try:
    facts["interfaces"] = [name for _, name in socket.if_nameindex()]
except OSError:
    facts["interfaces"] = []
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(0.5)
    s.connect(("1.1.1.1", 53)); s.close(); facts["network"] = True
except Exception:
    facts["network"] = False
def writable(path):
    try:
        with open(os.path.join(path, ".archlab-probe"), "w"):
            pass
        os.remove(os.path.join(path, ".archlab-probe"))
        return True
    except OSError:
        return False
facts["cwd_writable"] = writable(os.path.join(os.getcwd(), "cache"))
facts["outside_writable"] = [p for p in sys.argv[2:] if writable(p)]
print(json.dumps(facts))
"""


def _probe(cand: Launcher) -> dict:
    """Start a tiny child the way `cand` would and report what it could do."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="archlab-probe-"))
    try:
        uid = cand.prepare(scratch)
        outside = [str(Path(__file__).resolve().parent), "/tmp", "/var/tmp"]  # must not be writable
        argv = cand.command([sys.executable, "-c", _PROBE, str(-1 if uid is None else uid), *outside], scratch)
        proc = subprocess.run(argv, cwd=scratch, env=environment(scratch, 1), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60, **cand.popen_kwargs())
        if proc.returncode != 0:
            return {"ok": False, "error": proc.stderr.decode(errors="replace")[-500:]}
        facts = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        if not facts.get("torch_readable") or not facts.get("cwd_writable"):
            return {"ok": False, "error": "the child cannot read torch or write its scratch directory", **facts}
        if uid is not None and not facts.get("nproc_enforced"):
            return {"ok": False, "error": "RLIMIT_NPROC did not hold after dropping the uid", **facts}
        facts["uid_dropped"] = uid is not None
        return facts
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bwrap_argv(scratch: Path, hide: list[str], read: list[str], cuda: bool, as_root: bool) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:  # keep only what the worker needs to drop to its own uid; it loses those too when it does
        argv += ["--cap-drop", "ALL"] + [a for cap in ("SETUID", "SETGID", "DAC_OVERRIDE", "DAC_READ_SEARCH")
                                         for a in ("--cap-add", f"CAP_{cap}")]
    else:
        argv.append("--unshare-user")
    argv += ["--ro-bind", "/", "/", "--proc", "/proc"]
    argv += ["--dev-bind", "/dev", "/dev"] if cuda else ["--dev", "/dev"]
    argv += ["--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    for path in _under_tmp([*_install_paths(), *read]):  # Python, torch and archlab installed under /tmp stay readable
        argv += ["--ro-bind", path, path]
    argv += ["--bind", str(scratch), str(scratch)]
    for path in hide:  # the evaluation data: invisible to the training child
        p = Path(path)
        if p.is_dir():
            argv += ["--tmpfs", str(p.resolve())]
        elif p.exists():
            argv += ["--ro-bind", "/dev/null", str(p.resolve())]
    argv += ["--chdir", str(scratch), "--"]
    return argv


def _install_paths() -> list[str]:
    import archlab

    return [sys.prefix, sys.exec_prefix, sys.base_prefix, *sysconfig.get_paths().values(),
            str(Path(archlab.__file__).resolve().parents[1])]


def _under_tmp(paths) -> list[str]:
    """The existing paths below /tmp or /var/tmp (never those two themselves), outermost only."""
    found = set()
    for p in paths:
        if not p or not os.path.exists(p):
            continue
        real = os.path.realpath(p)
        if any(real.startswith(t + "/") for t in ("/tmp", "/var/tmp")):
            found.add(real)
    return [p for p in sorted(found) if not any(p.startswith(q + "/") for q in found)]


def _unshare_argv(as_root: bool) -> list[str]:
    argv = [shutil.which("unshare") or "unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not as_root:
        argv[1:1] = ["--user", "--map-current-user"]
    return argv + ["--"]


def drop_privileges(uid: int | None) -> None:
    """Become the evaluation's own unprivileged uid (root only; called once the harness is loaded)."""
    if uid is None or os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def run_contained(code: str, *, timeout: float = 60, nproc: int = 32, memory_gb: float = 4.0,
                  preimport: tuple[str, ...] = ("os", "socket", "subprocess", "time", "encodings.idna")) -> subprocess.CompletedProcess:
    """Run Python `code` the way the sandbox runs a worker, minus the audit hook: launcher,
    stripped environment, resource limits and the uid drop. For tests and `archlab doctor`:
    it shows what the operating-system layers alone stop."""
    import tempfile

    lx = launcher()
    scratch = Path(tempfile.mkdtemp(prefix="archlab-contained-"))
    try:
        uid = lx.prepare(scratch)
        prelude = (f"import {', '.join(preimport)}\n" if preimport else "") + (
                   f"from archlab.sandbox import protections as _p\n_p.apply_limits({memory_gb}, {nproc})\n"
                   f"_p.drop_privileges({uid})\ndel _p\n")
        argv = lx.command([sys.executable, "-c", prelude + code], scratch)
        return subprocess.run(argv, cwd=scratch, env=environment(scratch, 1), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, **lx.popen_kwargs())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(refresh: bool = False) -> list[Protection]:
    """Every protection and whether it is active on this machine (what `archlab doctor` prints)."""
    lx = launcher(refresh)
    f = lx.facts
    bwrap = lx.kind == "bwrap"
    namespaces = lx.kind in ("bwrap", "unshare")
    root = hasattr(os, "getuid") and os.getuid() == 0
    why_not_bwrap = "" if bwrap else (" (bwrap not installed: apt-get install bubblewrap)" if not shutil.which("bwrap")
                                      else " (bwrap is installed but failed to start here)")
    out = [
        Protection("process group + wall-clock timeout", True, "own session; the whole group is killed at the deadline"),
        Protection("launcher", True, f"{lx.kind}" + ("" if bwrap else why_not_bwrap)),
        Protection("memory limit (RLIMIT_AS)", True, "per child, 12 GiB unless the caller says (none on a GPU, where the "
                   "CUDA driver maps more address space than there is memory)"),
        Protection("process/thread limit (RLIMIT_NPROC)", lx.drop_uid or not root,
                   f"{DEFAULT_NPROC} tasks; " + ("the child runs as its own unprivileged uid, so the limit holds" if lx.drop_uid
                                                 else "not enforced for root: no unprivileged uid could be used" if root
                                                 else "counted for your user")),
        Protection("unprivileged uid", lx.drop_uid or not root,
                   (f"child drops to uid {f.get('uid')} once the harness is loaded"
                    + ("" if f.get("stdlib_readable", True) else " (the standard library is unreadable to it: the harness pre-imports)"))
                   if lx.drop_uid else "runs as your user" if not root else "child runs as root"),
        Protection("PID namespace", namespaces and f.get("pid", 99) < 10, f"child sees itself as pid {f.get('pid')}"),
        Protection("no network (network namespace)", namespaces and not f.get("network") and set(f.get("interfaces", [])) <= {"lo"},
                   f"interfaces inside: {', '.join(f.get('interfaces', [])) or 'none'}"),
        Protection("read-only file system, scratch dir writable", bwrap and not f.get("outside_writable"),
                   "bubblewrap read-only bind of /, private /tmp" if bwrap else
                   "only file permissions" + (" of the unprivileged uid" if lx.drop_uid else "")),
        Protection("evaluation data hidden from training", bwrap, "bind-mounted away in the training child" if bwrap
                   else "audit hook only"),
        Protection("killed with its parent", True, "bwrap --die-with-parent" if bwrap else
                   ("setpriv --pdeathsig KILL + " if shutil.which("setpriv") else "")
                   + ("unshare --kill-child" if lx.kind == "unshare" else "watchdog thread + RLIMIT_CPU")),
        Protection("stripped environment", True, f"only {', '.join(KEEP_ENV)} are passed"),
        Protection("CPU thread cap", True, "torch.set_num_threads + OMP/MKL_NUM_THREADS"),
        Protection("audit hook (sys.addaudithook)", hasattr(sys, "addaudithook"),
                   "files, sockets, subprocess, fork/exec, ctypes, imports, frame introspection"),
        Protection("static checks (AST)", True, "import allowlist, no dunder walking, no monkeypatching"),
        Protection("integrity checks (tamper)", True, "harness functions, Tensor methods, optimizers, torch global state"),
        Protection("validation in a separate process", True, "trained weights are scored by a fresh process; training never sees validation data"),
    ]
    return out


def report_json(refresh: bool = False) -> dict:
    lx = launcher(refresh)
    return {"launcher": lx.kind, "uid_dropped": lx.drop_uid, "probe": lx.facts,
            "protections": [asdict(p) for p in report()]}


# ---------------------------------------------------------------------------------------------
# child side: limits, audit hook, integrity
# ---------------------------------------------------------------------------------------------
def apply_limits(memory_gb: float | None, nproc: int = DEFAULT_NPROC, cpu_s: float | None = None, fsize_mb: int = 256) -> None:
    """Resource limits of the child, set by the worker before anything of the candidate exists.
    memory_gb None: no address-space limit (on a GPU, where the driver maps huge address ranges)."""

    def cap(which: int, value: int) -> None:
        try:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass

    if memory_gb:
        cap(resource.RLIMIT_AS, int(memory_gb * 2**30))
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, fsize_mb * 2**20)
    cap(resource.RLIMIT_NPROC, nproc + (0 if os.getuid() == 0 else _tasks_of_user()))
    if cpu_s:
        cap(resource.RLIMIT_CPU, int(cpu_s))


def _tasks_of_user() -> int:
    """Processes + threads the current (non-root) user already has: RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    try:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    st = os.stat(f"/proc/{pid}")
                    if st.st_uid == uid:
                        count += len(os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    pass
    except OSError:
        return 4096
    return count


def start_parent_watchdog(interval_s: float = 1.0) -> None:
    """Exit when the parent process is gone (bwrap/unshare do this too; this covers 'plain')."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, name="archlab-watchdog", daemon=True).start()


# Top-level modules that may still be imported once the candidate is loaded (torch imports some
# lazily). Everything else in the standard library is allowed too, except DENIED_MODULES.
RUNTIME_MODULES = {
    "torch", "torchgen", "functorch", "math", "einops", "typing", "typing_extensions", "functools", "fla", "triton",
    "numpy", "sympy", "mpmath", "opt_einsum", "networkx", "jinja2", "markupsafe", "filelock", "fsspec", "packaging",
    "archlab",
}
DENIED_MODULES = {
    "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess", "multiprocessing",
    "_multiprocessing", "pty", "tty", "urllib", "http", "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib",
    "xmlrpc", "webbrowser", "socketserver", "asyncio", "mmap", "sqlite3", "_sqlite3", "shelve", "dbm", "code", "codeop",
    "pdb", "bdb", "cProfile", "profile", "trace", "runpy", "zipimport", "resource", "fcntl", "pwd", "grp", "spwd",
    "crypt", "termios", "readline", "curses", "venv", "ensurepip", "idlelib", "tkinter", "turtle", "wsgiref", "_thread",
    "threading", "concurrent", "signal", "faulthandler", "tracemalloc", "gc", "inspect", "importlib",
}
# Triton compiles a small C launcher for each new kernel (runtime/build.py: cc, then an import of
# the .so from its cache); with cuda=True that import is allowed when library code asked for it.
TRITON_PACKAGE = os.sep + "triton" + os.sep
TRITON_BUILD = os.path.join("triton", "runtime", "build.py")
# Tools that GPU compilers legitimately start (triton calls ptxas and ldconfig).
TOOLCHAIN = {"ptxas", "ldconfig", "ldconfig.real", "nvcc", "nvdisasm", "cuobjdump", "gcc", "cc", "g++", "c++", "clang", "ld"}
SPAWN_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
                "pty.spawn", "os.startfile"}
FS_CHANGE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
                    "os.truncate", "os.utime", "os.chflags", "os.lchflags", "shutil.copyfile", "shutil.copymode",
                    "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.chown",
                    "shutil.make_archive", "shutil.unpack_archive", "tempfile.mkstemp", "tempfile.mkdtemp"}
# Events whose path may be relative to a directory fd: {event: {index of a path: index of its dir_fd}}.
# shutil.rmtree removes a tree that way (os.remove('name', dir_fd)): Triton's build directory, for one.
DIR_FD_ARGS = {"os.remove": {0: 1}, "os.rmdir": {0: 1}, "shutil.rmtree": {0: 1}, "os.mkdir": {0: 2},
               "os.chmod": {0: 2}, "os.chown": {0: 3}, "os.utime": {0: 3}, "os.rename": {0: 2, 1: 3},
               "os.link": {0: 2, 1: 3}, "os.symlink": {0: 2, 1: 2}}
ALWAYS_DENIED = {"sys.addaudithook", "code.__new__", "function.__new__", "cpython._PySys_ClearAuditHooks",
                 "cpython.run_command", "cpython.run_file", "cpython.run_module", "cpython.run_startup",
                 "cpython.run_interactivehook", "cpython.run_stdin", "os.kill", "os.killpg", "signal.pthread_kill",
                 "os.setuid", "resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers",
                 "gc.get_referents", "pickle.find_class", "urllib.Request", "http.client.connect", "ftplib.connect",
                 "smtplib.connect", "webbrowser.open", "os.add_dll_directory", "sys._current_frames",
                 "sys._current_exceptions", "sys.setprofile", "sys.settrace", "sys.monitoring.register_callback",
                 "os.chdir", "os.fchdir", "os.chroot", "os.setns", "os.unshare"}
# Denied when the candidate's own code (or code it generated) is the caller.
DENIED_FROM_CANDIDATE = {"sys._getframe", "sys._getframemodulename", "object.__getattr__", "object.__setattr__",
                         "object.__delattr__", "exec", "compile", "marshal.loads", "marshal.load", "marshal.dumps",
                         "mmap.__new__", "os.putenv", "os.unsetenv", "builtins.input", "sys.excepthook"}
TRANSPARENT_FILES = ("inspect.py", "traceback.py", "functools.py", "contextlib.py")  # callers seen through
# The compile check (harness.compile_metrics) runs TorchDynamo, which rewrites bytecode: it may make
# code objects and functions, nobody else may. A candidate cannot forge these file names (it can
# neither compile() nor write files outside its scratch directory).
# Code that TorchDynamo generates itself (guards are eval()'d strings) is judged as TorchDynamo's.
COMPILER_EVENTS = {"code.__new__", "function.__new__"}
COMPILER_DIRS = ("/torch/_dynamo/", "/torch/fx/", "/torch/_guards.py")


class AuditGuard:
    """The child's audit hook. Install once, after the harness is imported and warmed up."""

    def __init__(self, *, writable: list[str], hidden: list[str] = (), candidate_files=("candidate.py",),
                 cuda: bool = False):
        self.writable = [os.path.realpath(p) for p in writable]
        self.hidden = [os.path.realpath(p) for p in hidden if p]
        self.candidate_files = set(candidate_files)
        self.cuda = cuda
        self.violations: list[str] = []
        self.installed = False
        self._local = threading.local()
        self._stdlib = set(getattr(sys, "stdlib_module_names", ()))

    def install(self) -> None:
        if hasattr(sys, "addaudithook") and not self.installed:
            sys.addaudithook(self._hook)
            self.installed = True

    # -- the hook ------------------------------------------------------------------------------
    def _hook(self, event: str, args: tuple) -> None:
        local = self._local
        if getattr(local, "busy", False):
            return
        local.busy = True
        try:
            why = self._judge(event, args)
        except Exception as e:  # a bug in a rule must fail closed, with a readable reason
            why = f"{event}: audit rule failed ({type(e).__name__}: {e})"
        finally:
            local.busy = False
        if why:
            if len(self.violations) < 50:
                self.violations.append(why)
            raise PermissionError(f"archlab sandbox: {why} is not allowed")

    def _judge(self, event: str, args: tuple) -> str | None:
        if event == "open":
            return self._judge_open(args)
        if event == "import":
            return self._judge_import(args)
        if event in SPAWN_EVENTS:
            return self._judge_spawn(event, args)
        if event.startswith("socket."):
            return f"{event} (no network in the sandbox)"
        if event.startswith("ctypes."):
            if not self.cuda or self._untrusted_caller():
                return f"{event} (ctypes)"
            return None
        if event in FS_CHANGE_EVENTS:
            paths = self._changed_paths(event, args)
            if paths and all(p is not None and self._is_writable(p) for p in paths):
                return None
            return f"{event} {[a for a in args if isinstance(a, str | bytes)][:2]!r}"
        if event in COMPILER_EVENTS and any(d in (self._caller_file() or "") for d in COMPILER_DIRS):
            return None
        if event in ALWAYS_DENIED:
            return event
        if event in DENIED_FROM_CANDIDATE and self._untrusted_caller():
            what = f"{event} {args[1]!r}" if event.startswith("object.") and len(args) > 1 else event
            return f"{what} from candidate code"
        return None

    def _judge_open(self, args: tuple) -> str | None:
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if isinstance(path, int):
            return f"open(fd {path}) (re-opening a file descriptor)" if self._writes(mode, flags) else None
        if path is None:
            return None
        real = os.path.realpath(os.fsdecode(path))
        if self._writes(mode, flags):
            # /dev/null swallows what is written (subprocess opens it for stdout=DEVNULL: Triton's cc call)
            return None if real == os.devnull or self._is_writable(real) else f"open {real!r} for writing"
        if any(real == h or real.startswith(h.rstrip("/") + "/") for h in self.hidden):
            return f"reading {real!r} (evaluation data)"
        if real.startswith("/proc/") and real.endswith(("/mem", "/environ", "/maps", "/pagemap")):
            return f"reading {real!r}"
        return None

    @staticmethod
    def _writes(mode, flags) -> bool:
        if isinstance(mode, str):
            return any(c in mode for c in "wax+")
        if isinstance(flags, int):
            return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        return False

    @staticmethod
    def _changed_paths(event: str, args: tuple) -> list[str | None]:
        """The event's paths, a relative one joined to the directory its dir_fd is open on
        (None where that directory cannot be told: the change is then refused)."""
        fds = DIR_FD_ARGS.get(event, {})
        paths = []
        for i, arg in enumerate(args):
            if not isinstance(arg, str | bytes):
                continue
            path, fd = os.fsdecode(arg), args[fds[i]] if i in fds and fds[i] < len(args) else None
            if isinstance(fd, int) and fd >= 0 and not os.path.isabs(path):
                try:
                    path = os.path.join(os.readlink(f"/proc/self/fd/{fd}"), path)
                except OSError:
                    path = None
            paths.append(path)
        return paths

    def _is_writable(self, path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return any(real == w or real.startswith(w.rstrip("/") + "/") for w in self.writable)

    def _judge_import(self, args: tuple) -> str | None:
        name, path = (tuple(args) + (None, None))[:2]
        top = str(name).split(".")[0]
        if top in RUNTIME_MODULES:
            return None
        if self.cuda and isinstance(path, str) and self._is_writable(path) and self._built_by_triton():
            return None  # the launcher Triton just compiled for a kernel, loaded from its cache
        if top in DENIED_MODULES or top not in self._stdlib:
            return f"import {name}"
        return None

    def _built_by_triton(self) -> bool:
        """Is Triton's build step (runtime/build.py) on the stack, reached from library code (fla,
        torch), not called by the candidate itself?"""
        frame = sys._getframe(1)
        while frame is not None and not frame.f_code.co_filename.endswith(TRITON_BUILD):
            frame = frame.f_back
        while frame is not None and TRITON_PACKAGE in frame.f_code.co_filename:
            frame = frame.f_back
        return frame is not None and not self._untrusted(frame.f_code.co_filename)

    def _judge_spawn(self, event: str, args: tuple) -> str | None:
        local = self._local
        if self.cuda and event == "subprocess.Popen" and not self._untrusted_caller():
            exe = args[0] or (args[1][0] if args[1] else "")
            if os.path.basename(os.fsdecode(exe)) in TOOLCHAIN:
                local.toolchain = os.fsdecode(exe)  # the spawn that this Popen makes next is that tool
                return None
        # Popen then starts the process with os.posix_spawn (Triton's ptxas call on Python 3.12): allowed
        # once, for the very tool that the Popen just allowed, in the same thread.
        allowed, local.toolchain = getattr(local, "toolchain", None), None
        if (event == "os.posix_spawn" and allowed and os.path.basename(allowed) == os.path.basename(os.fsdecode(args[0]))
                and (self._caller_file() or "").endswith("subprocess.py")):
            return None
        return f"{event} (no processes in the sandbox)"

    def _untrusted_caller(self) -> bool:
        """Is the code that triggered the event the candidate's (or code it generated)?"""
        name = self._caller_file()
        return name is not None and self._untrusted(name)

    def _untrusted(self, filename: str) -> bool:
        return filename in self.candidate_files or (filename.startswith("<") and not filename.startswith("<frozen"))

    @staticmethod
    def _caller_file() -> str | None:
        """The file of the code that raised the event being judged (library helpers seen through)."""
        hook = AuditGuard._hook.__code__
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not hook:
            frame = frame.f_back
        frame = frame.f_back if frame is not None else None  # the code that raised the event
        while frame is not None and frame.f_code.co_filename.endswith(TRANSPARENT_FILES):
            frame = frame.f_back
        if frame is None:
            return None
        name = frame.f_code.co_filename
        maker = frame.f_back.f_code.co_filename if frame.f_back is not None else ""
        if name.startswith("<") and any(d in maker for d in COMPILER_DIRS):
            return maker
        return name

    def summary(self) -> str:
        """The rejection's detail: the first violation, and how many followed."""
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        return f"the sandbox blocked {self.violations[0]}{more}"

    def check(self) -> None:
        """Raise the candidate rejection for the first violation, caught or not."""
        if self.violations:
            from archlab.sandbox.errors import CandidateError

            raise CandidateError("forbidden", self.summary())


class Integrity:
    """Identity snapshot of what the harness relies on; `verify()` names what changed."""

    def __init__(self, modules: list[types.ModuleType], classes: list[type], threads: int | None = None):
        self.modules = {m.__name__: (m, dict(vars(m))) for m in modules}
        self.classes = {f"{c.__module__}.{c.__qualname__}": (c, dict(vars(c))) for c in classes}
        self.threads = threads
        self.state = self._global_state()

    def verify(self, when: str) -> None:
        problems = []
        for name, (module, snap) in self.modules.items():
            now = vars(module)
            for key, value in snap.items():
                if key in ("__builtins__", "__loader__", "__spec__", "__warningregistry__"):
                    continue
                if now.get(key, _MISSING) is not value and not _benign_module_change(key, value, now.get(key, _MISSING)):
                    problems.append(f"{name}.{key}")
        for name, (cls, snap) in self.classes.items():
            now = vars(cls)
            for key, value in snap.items():
                if now.get(key, _MISSING) is not value and key not in ("__dict__", "__weakref__", "_abc_impl"):
                    problems.append(f"{name}.{key}")
            for key in now.keys() - snap.keys():
                if key not in ("__abstractmethods__", "_abc_impl") and not key.startswith("__annotations"):
                    problems.append(f"{name}.{key} (added)")
        state = self._global_state()
        for key, value in self.state.items():
            if state.get(key) != value:
                problems.append(f"torch global state {key}: {value!r} -> {state.get(key)!r}")
        if problems:
            from archlab.sandbox.errors import CandidateError

            raise CandidateError("tamper", f"{when}: the harness's own code or state was changed: {', '.join(problems[:8])}"
                                 + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))

    def _global_state(self) -> dict:
        import torch
        import torch.nn.modules.module as module_mod

        state = {
            "default_dtype": str(torch.get_default_dtype()),
            "function_modes": torch._C._len_torch_function_stack(),
            "dispatch_modes": torch._C._len_torch_dispatch_stack(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "anomaly": torch.is_anomaly_enabled(),
        }
        if self.threads is not None:
            state["threads"] = torch.get_num_threads()
        for name in dir(module_mod):
            if name.startswith("_global_") and isinstance(getattr(module_mod, name), dict):
                state[name] = len(getattr(module_mod, name))
        return state


_MISSING = object()


def _benign_module_change(key: str, old, new) -> bool:
    """torch replaces a few module attributes lazily by itself (lazy submodules, caches)."""
    return isinstance(old, types.ModuleType) and isinstance(new, types.ModuleType) and old.__name__ == new.__name__
