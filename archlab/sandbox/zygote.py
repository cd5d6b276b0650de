"""The launch pad of model servers: `python -m archlab.sandbox.zygote`, one per sandbox.

Importing torch and running its paths once costs a model server seconds of CPU: most of a micro
evaluation. The launch pad pays that once. Started inside the launcher (launch.py) as a server
would be, it imports and warms up (trusted code only, on the CPU: CUDA is never initialised
here, a forked child could not use it), makes itself undumpable (no process of the same user
can read or write its memory through /proc), then forks every model server the scorer asks for.
A fork isolates itself before anything else runs (`launch.isolate`: its own user, mount, PID,
network, IPC and UTS namespaces; fresh private /tmp, /var/tmp, /dev/shm and scratch; everything
else read-only), so servers forked from one launch pad share nothing writable and cannot see or
signal each other or the launch pad. The launch pad never runs candidate code and never reads
what a server sends, so it may serve every evaluation of a run (the scorer keeps a pool).

A server is three processes: the bridge (in the launch pad's namespaces: it isolates, then waits
and passes the exit status on), an init (PID 1 of the server's namespace: killing it from outside
ends everything the candidate started) and the model server itself (server.py). Where the kernel
refuses nested namespaces the bridge forks the server directly, and the scorer gives each server
a launch pad of its own (as isolated from the others as separate launches are).

The scorer talks to it over fd 0, a SOCK_SEQPACKET socket, one JSON object per packet:
  {"threads": n}                                        -> {"warm": true}
  {"fork": title, "uid", "scratch", "isolate", "threads"} + the server's stdin, stdout and stderr
                                                        -> {"pid": the bridge's pid}
  {"wait": pid, "timeout": s}                           -> {"code": its exit status, or null}
"""

import atexit
import ctypes
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from setproctitle import setproctitle

from archlab.sandbox import launch

PACKET = 1 << 16
ISOLATION_FAILED = 71  # a bridge's exit status when the kernel refused the namespaces it was asked for


# -- the scorer's side ---------------------------------------------------------------------------
class LaunchPadError(OSError):
    """The launch pad died or did not start (where servers are isolated from it: this machine's fault)."""


class LaunchPad:
    """A launch pad, seen from the scorer: started in the launcher, then asked for forks."""

    def __init__(self, cuda: bool, threads: int, hide: tuple, host_dir: Path | None = None):
        self.key = (cuda, threads, hide)
        lx = launch.launcher()
        # The fallback launchers work in a host directory (bubblewrap's scratch is a tmpfs of its own):
        # a pooled launch pad gets one of its own, which a dropped uid can write.
        self.own_dir = host_dir is None and lx.kind != "bwrap"
        self.host_dir = Path(tempfile.mkdtemp(prefix="archlab-launchpad-")) if self.own_dir else host_dir
        if self.own_dir:
            os.chmod(self.host_dir, 0o777)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = lx.command([sys.executable, "-m", "archlab.sandbox.zygote"], cuda=cuda, hide=hide)
        self.proc = subprocess.Popen(
            argv,
            stdin=theirs,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.host_dir if lx.kind != "bwrap" else None,
            start_new_session=True,
            env=launch.environment(lx.scratch(self.host_dir), 1),
        )
        theirs.close()
        self.tail = b""
        threading.Thread(target=self._drain, daemon=True, name="archlab-launchpad-log").start()
        self._lock = threading.Lock()
        self.warm = False
        self._send({"threads": threads})

    def wait_warm(self, deadline: float) -> None:
        if not self.warm:
            if self._reply(deadline).get("warm") is not True:
                raise self._error("did not warm up")
            self.warm = True

    def fork(self, title: str, uid: int | None, scratch: str, isolate: bool, fds: list[int], deadline: float) -> int:
        """A new model server on the given stdin, stdout and stderr; returns its bridge's pid (as the
        launch pad sees it)."""
        with self._lock:
            self.wait_warm(deadline)
            try:
                socket.send_fds(
                    self.sock,
                    [
                        json.dumps(
                            {"fork": title, "uid": uid, "scratch": scratch, "isolate": isolate, "threads": self.key[1]}
                        ).encode()
                    ],
                    fds,
                )
            except OSError:
                raise self._error("is gone") from None
            pid = self._reply(deadline).get("pid")
            if not isinstance(pid, int):
                raise self._error("did not fork")
            return pid

    def wait(self, pid: int, timeout: float) -> int | None:
        """The exit status of a server's bridge (None if it is still running after `timeout`)."""
        with self._lock:
            try:
                self._send({"wait": pid, "timeout": timeout})
                return self._reply(time.monotonic() + timeout + 30).get("code")
            except LaunchPadError:
                return None

    def host_pid(self) -> int | None:
        """The launch pad's pid as this machine sees it (below bwrap or setpriv)."""
        return _find(
            self.proc.pid,
            lambda pid: read(f"/proc/{pid}/cmdline").split(b"\0")[1:3] == [b"-m", b"archlab.sandbox.zygote"],
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.sock.close()
        self.proc.wait()
        if self.own_dir:
            shutil.rmtree(self.host_dir, ignore_errors=True)

    def _send(self, message: dict) -> None:
        try:
            self.sock.send(json.dumps(message).encode())
        except OSError:
            raise self._error("is gone") from None

    def _reply(self, deadline: float) -> dict:
        if not select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise self._error("did not answer in time")
        data = self.sock.recv(PACKET)
        if not data:
            raise self._error("is gone")
        return json.loads(data)

    def _error(self, what: str) -> LaunchPadError:
        tail = self.tail.decode("utf-8", "replace").strip()[-1500:]
        return LaunchPadError(f"the sandbox's launch pad {what}" + (f": {tail}" if tail else ""))

    def _drain(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.tail = (self.tail + line)[-4000:]


_idle: list[LaunchPad] = []
_idle_lock = threading.Lock()


def take(cuda: bool, threads: int, hide: tuple) -> LaunchPad:
    """A warm launch pad from this process's pool, or a new one (warming up as it is returned)."""
    with _idle_lock:
        for pad in list(_idle):
            _idle.remove(pad)
            if pad.key == (cuda, threads, hide) and pad.alive():
                return pad
            pad.close()
    return LaunchPad(cuda, threads, hide)


def give_back(pad: LaunchPad) -> None:
    with _idle_lock:
        if pad.alive():
            _idle.append(pad)


@atexit.register
def close_all() -> None:
    with _idle_lock:
        for pad in _idle:
            pad.close()
        _idle.clear()


def children(pid: int) -> list[int]:
    out = []
    for task in _listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in read(f"/proc/{pid}/task/{task}/children").split()]
    return out


def nspid(pid: int) -> list[int]:
    """The pid in every PID namespace it belongs to, outermost first (/proc/PID/status NSpid)."""
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"NSpid:"):
            return [int(p) for p in line.split()[1:]]
    return []


def _find(root: int, predicate) -> int | None:
    todo = [root]
    while todo:
        pid = todo.pop()
        if predicate(pid):
            return pid
        todo += children(pid)
    return None


def read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# -- the launch pad's side -----------------------------------------------------------------------


def main() -> None:
    sock = socket.socket(fileno=0)
    job = json.loads(sock.recv(PACKET))
    started = time.monotonic()
    import torch

    from archlab.sandbox.server import warm_up

    # One thread while warming: no OpenMP pool exists at fork time, each server starts its own.
    torch.set_num_threads(1)
    warm_up(torch.device("cpu"), train=True, count=True)
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: inherited by every fork
    print(f"[launch pad] {time.monotonic() - started:.2f}s warm ({job.get('threads')} threads per server)", flush=True)
    sock.send(json.dumps({"warm": True}).encode())
    statuses: dict[int, int] = {}
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, PACKET, 3)
        except OSError:
            break
        if not data:
            break  # the scorer is gone: bwrap ends the PID namespace, and every server with it
        req = json.loads(data)
        _reap(statuses)
        if "fork" in req:
            pid = os.fork()
            if pid == 0:
                _bridge(req, fds, sock)
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"pid": pid}).encode())
        elif "wait" in req:
            sock.send(json.dumps({"code": _wait(int(req["wait"]), float(req["timeout"]), statuses)}).encode())
    os._exit(0)


def _reap(statuses: dict) -> None:
    """Collect finished bridges (their exit statuses wait here until the scorer asks)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = os.waitstatus_to_exitcode(status)


def _wait(pid: int, timeout: float, statuses: dict) -> int | None:
    deadline = time.monotonic() + timeout
    while pid not in statuses:
        _reap(statuses)
        if pid in statuses or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return statuses.pop(pid, None)


def _bridge(req: dict, fds: list[int], sock: socket.socket) -> None:
    """The forked child: take the server's pipes, isolate, start the server, pass its status on."""
    try:
        sock.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        setproctitle(req["fork"])  # the evaluation it serves, in `ps` (and for the tests)
        launch.die_with_parent()
        scratch = req["scratch"]
        launch.drop_uid(req.get("uid"))
        isolated = req["isolate"] and launch.isolate(scratch)
        if req["isolate"] and not isolated:
            print("[launch pad] the kernel refused the server's namespaces", file=sys.stderr, flush=True)
            os._exit(ISOLATION_FAILED)
        os.chdir(scratch)
        env = launch.environment(scratch, int(req["threads"]))  # every cache in the server's own scratch
        os.environ.clear()
        os.environ.update(env)
        child = os.fork()
        if child == 0:
            if isolated:  # PID 1 of the new namespace: the model server is its only child
                launch.die_with_parent()
                server = os.fork()
                if server == 0:
                    _run_server()
                os._exit(_exit_status(server))
            _run_server()
        os._exit(_exit_status(child))
    except BaseException:  # noqa: BLE001  (a bridge never returns into the launch pad's loop)
        import traceback

        traceback.print_exc()
        os._exit(70)


def _run_server() -> None:
    from archlab.sandbox import server

    try:
        server.main()
    finally:
        os._exit(70)


def _exit_status(pid: int) -> int:
    """Wait for `pid` (an init also collects the orphans the candidate leaves); its status as an
    exit code: 128 + the signal that killed it."""
    while True:
        done, status = os.waitpid(-1, 0)
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    main()
