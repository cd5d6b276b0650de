"""A diagnostic, not a boundary: an audit hook that names an honest mistake fast.

The model server installs it (unless diagnostics are switched off) once its libraries are
imported, before the candidate's file runs. It refuses, when the candidate's own code is the
caller, what the contract forbids: opening files, importing modules outside the allowlist,
sockets, starting processes, ctypes, frame introspection, exec/compile. Library code (torch's
compilers spawning a C compiler, Triton loading what it built) is never judged: the operating
system (launch.py) contains it. A candidate can walk around this hook (by calling library code
that does the forbidden thing for it); that only loses it the fast, readable reason: the
boundary is launch.py, and the score is computed by a process that never runs its code.
"""

import sys
import threading

RUNTIME_MODULES = {
    "torch",
    "math",
    "einops",
    "typing",
    "typing_extensions",
    "functools",
    "fla",
    "triton",
    "numpy",
    "sympy",
    "opt_einsum",
    "archlab",
}
DENIED_PREFIXES = (
    "socket.",
    "ctypes.",
    "subprocess.",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.system",
    "pty.",
    "shutil.",
    "tempfile.",
    "urllib.",
    "http.",
    "mmap.",
)
DENIED = {
    "open",
    "exec",
    "compile",
    "sys._getframe",
    "sys._getframemodulename",
    "marshal.loads",
    "marshal.load",
    "sys.settrace",
    "sys.setprofile",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "os.kill",
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.chmod",
    "os.listdir",
    "os.scandir",
    "sys.addaudithook",
    "object.__setattr__",
    "object.__delattr__",
    "pickle.find_class",
}
TRANSPARENT_FILES = ("inspect.py", "traceback.py", "functools.py", "contextlib.py")  # callers seen through


class AuditGuard:
    def __init__(self, candidate_files=("candidate.py",)):
        self.candidate_files = set(candidate_files)
        self.violations: list[str] = []
        self._local = threading.local()
        self._stdlib = set(sys.stdlib_module_names)

    def install(self) -> None:
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        local = self._local
        if getattr(local, "busy", False):
            return
        local.busy = True
        try:
            why = self._judge(event, args)
        finally:
            local.busy = False
        if why:
            if len(self.violations) < 50:
                self.violations.append(why)
            raise PermissionError(f"archlab sandbox: {why} is not allowed")

    def _judge(self, event: str, args: tuple) -> str | None:
        if event == "import":
            top = str(args[0]).split(".")[0]
            if top in RUNTIME_MODULES or top == "candidate" or not self._from_candidate():
                return None
            return f"import {args[0]}" if top not in self._stdlib or top in ("os", "sys", "io", "builtins") else None
        if event in DENIED or event.startswith(DENIED_PREFIXES):
            if self._from_candidate():
                what = f"{event} {args[0]!r}" if event == "open" and args else event
                return f"{what} from candidate code"
        return None

    def _from_candidate(self) -> bool:
        """Is the code that raised the event the candidate's (or code it generated)?"""
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not AuditGuard._hook.__code__:
            frame = frame.f_back
        frame = frame.f_back if frame is not None else None
        while frame is not None and frame.f_code.co_filename.endswith(TRANSPARENT_FILES):
            frame = frame.f_back
        if frame is None:
            return False
        name = frame.f_code.co_filename
        return name in self.candidate_files or (name.startswith("<") and not name.startswith("<frozen"))

    def summary(self) -> str | None:
        if not self.violations:
            return None
        more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
        return f"the sandbox blocked {self.violations[0]}{more}"
