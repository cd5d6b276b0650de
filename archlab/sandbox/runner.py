"""The parent side of the sandbox: run one evaluation in a child process and collect its result.

The child gets its own session (so a timeout kills the whole process group, grandchildren
included), resource limits, a scratch directory as its working directory and an
environment stripped to a few harmless variables (API keys never reach candidate code).
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from archlab.sandbox.tiers import TIERS

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")


class Result(BaseModel):
    ok: bool
    reason: str | None = None
    detail: str | None = None
    metrics: dict = {}
    env: dict = {}

    def as_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail, "metrics": self.metrics}


def evaluate(
    source: str,
    tier: str = "smoke",
    *,
    seed: int = 0,
    data: str | None = None,
    param_limit: int | None = None,
    param_ratio: float = 1.2,
    threads: int | None = None,
    timeout_s: float | None = None,
    memory_gb: float = 12.0,
    log_path: Path | None = None,
) -> Result:
    """Evaluate candidate source code at a tier in a sandboxed child process.

    param_limit: the mixer's parameter budget; None = param_ratio x the DeltaNet root's; -1 = none.
    """
    threads = threads or min(os.cpu_count() or 1, 4)
    timeout_s = timeout_s or TIERS[tier].timeout_s
    scratch = Path(tempfile.mkdtemp(prefix="archlab-sandbox-"))
    try:
        (scratch / "candidate.py").write_text(source, encoding="utf-8")
        job = {
            "candidate": str(scratch / "candidate.py"), "result": str(scratch / "result.json"), "tier": tier,
            "seed": seed, "data": str(Path(data).resolve()) if data else None, "param_limit": param_limit,
            "param_ratio": param_ratio, "threads": threads,
        }
        (scratch / "job.json").write_text(json.dumps(job))
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        env.update(HOME=str(scratch), TMPDIR=str(scratch), OMP_NUM_THREADS=str(threads), PYTHONDONTWRITEBYTECODE="1")
        log = open(log_path, "wb") if log_path else open(scratch / "log.txt", "wb")
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "archlab.sandbox.worker", str(scratch / "job.json")],
                cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=lambda: _limit_resources(memory_gb),
            )
            started = time.monotonic()
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)  # also reaps anything the candidate left running
        return _collect(scratch, proc.returncode, timed_out, timeout_s, time.monotonic() - started, log.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _limit_resources(memory_gb: float) -> None:
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 2**20, 256 * 2**20))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _collect(scratch: Path, returncode: int, timed_out: bool, timeout_s: float, wall: float, log_name: str) -> Result:
    if timed_out:
        return Result(ok=False, reason="timeout", detail=f"killed after {timeout_s:.0f} s", metrics={"wall_s": wall})
    try:
        result = Result.model_validate_json((scratch / "result.json").read_text())
    except (OSError, ValueError):
        tail_text = tail(log_name)
        if returncode == -signal.SIGKILL or "MemoryError" in tail_text or "std::bad_alloc" in tail_text:
            reason = "memory"
        else:
            reason = "crash"
        return Result(ok=False, reason=reason, detail=f"child exited with {returncode} and no result; {tail_text}", metrics={"wall_s": wall})
    result.metrics["wall_s"] = wall
    if not result.ok and result.detail:
        result.detail = result.detail[:2000]
    return result


def tail(path, size: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
