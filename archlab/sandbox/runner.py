"""The parent side of the sandbox: run one evaluation and collect its result.

An evaluation is one scorer.Evaluation per seed: two model servers of the candidate, each in
its own sandbox (launch.py), and the trusted scorer in this process, which computes every
metric and verdict from what the servers return (scorer.py). A validation loss implausibly far
below the root's (`reference`) is kept but flagged (`metrics["flagged"]`), and fitness does not
crown it: every validation window was already checked for causality on the scored server.
"""

import os
import shutil
import statistics
import tempfile
import threading
import time
import traceback
from pathlib import Path

from pydantic import BaseModel

from archlab.sandbox import launch
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.tiers import TIERS, Tier, TierError, resolve

LOG_LIMIT = 8 * 2**20  # a log longer than this keeps its first and last MiB

# Evaluations running in this process, so a stopping run can kill them all at once.
_live: set = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


class Interrupted(Exception):
    """The run is stopping (Ctrl-C, SIGTERM): the evaluation was abandoned, not failed."""


def stop_all() -> None:
    """Kill every sandbox this process started; evaluations in flight raise Interrupted."""
    with _live_lock:
        _stopping.set()
        for evaluation in list(_live):
            evaluation.close()


class Result(BaseModel):
    ok: bool
    reason: str | None = None
    detail: str | None = None
    metrics: dict = {}
    env: dict = {}
    curves: list[dict] = []  # loss curves, one per seed (curves.py): shown, never scored

    def as_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail, "metrics": self.metrics, "env": self.env}


def evaluate(
    source: str,
    tier: "str | Tier" = "smoke",
    *,
    seed: int = 0,
    data: str | None = None,
    param_limit: int | None = None,
    param_ratio: float = 1.2,
    threads: int | None = None,
    timeout_s: float | None = None,
    memory_gb: float = 12.0,
    log_path: Path | None = None,
    tier_overrides: dict | None = None,
    allow_quadratic: bool = False,
    reference: dict | None = None,
    implausible_gain: float = 0.25,
    seeds: int | None = None,
    device: str | None = None,
    skip_static_checks: bool = False,
    weights_out: Path | None = None,
) -> Result:
    """Evaluate candidate source code at a tier in sandboxed model servers.

    tier: a tier name (see tiers.py) or a Tier; tier_overrides: fields to change (a run's config).
    param_limit: the budget per block (mixer + FFN beyond the harness MLP); None = param_ratio x the
        DeltaNet root mixer's; -1 = none.
    timeout_s: the tier's time (default tier.timeout_s): each server gets that many CPU-seconds per
        thread (x1.5 + 20), and the whole evaluation a wall-clock backstop of 3x + 60 s.
    allow_quadratic: accept mixers whose cost grows faster than linearly with sequence length.
    reference: the root's metrics; a val_loss more than `implausible_gain` below its val_loss is
        flagged. seeds: how many seeds to run here, counting up from `seed` (default 1); several
        give mean metrics with `*_std` beside them. device: "cpu" or "cuda" (default: cuda when present).
    skip_static_checks: switch the diagnostics off (static checks and the audit hook): the hostile
        suite shows that the boundary holds without them.
    weights_out: where to keep the trained weights (safetensors; `lm.*` and `probe.*`; with several
        seeds, the last seed's).
    """
    try:
        spec = resolve(tier, tier_overrides)
    except TierError as e:
        return Result(ok=False, reason="config", detail=str(e))
    opt = dict(
        data=data,
        param_limit=param_limit,
        param_ratio=param_ratio,
        threads=threads or min(os.cpu_count() or 1, 4),
        timeout_s=timeout_s,
        memory_gb=memory_gb,
        allow_quadratic=allow_quadratic,
        device=device,
        skip_static_checks=skip_static_checks,
    )
    results = []
    for i in range(seeds or 1):
        log_i = Path(f"{log_path}.seed{seed + i}") if log_path and i else log_path
        result = _evaluate_seed(source, spec, seed + i, opt, log_i, weights_out)
        if not result.ok:
            if seeds and seeds > 1:
                result.detail = f"seed {seed + i}: {result.detail}"
            return result
        ref = (reference or {}).get("val_loss")
        val = result.metrics.get("val_loss")
        if ref and val is not None and val < (1 - implausible_gain) * ref:
            result.metrics.update(
                flagged="implausible_gain",
                flag_detail=(
                    f"val_loss {1 - val / ref:.1%} below the root's; every validation window was checked for causality"
                ),
            )
        results.append(result)
    return results[0] if len(results) == 1 else _aggregate(results, [seed + i for i in range(len(results))])


def _evaluate_seed(
    source: str, tier: Tier, seed: int, opt: dict, log_path: Path | None, weights_out: Path | None
) -> Result:
    from archlab.sandbox.data import DataError
    from archlab.sandbox.scorer import Evaluation
    from archlab.sandbox.static import static_check

    started = time.monotonic()
    host_dir = Path(tempfile.mkdtemp(prefix="archlab-sandbox-"))
    os.chmod(host_dir, 0o711)  # the unshare and plain launchers: a dropped uid reaches its scratch below
    log = Path(log_path).resolve() if log_path else host_dir / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    evaluation = None
    try:  # host_dir holds the log when no log_path is given: removed only once the log is written
        try:
            if _stopping.is_set():
                raise Interrupted("the run is stopping")
            if not opt["skip_static_checks"]:
                static_check(source)  # a diagnostic, pure AST work: an honest mistake's reason in milliseconds
            evaluation = Evaluation(source, tier, seed, opt, host_dir, log)
            with _live_lock:
                _live.add(evaluation)
            metrics = evaluation.run()
            if weights_out and evaluation.weights:
                evaluation.save_weights(Path(weights_out))
            lx = launch.launcher()
            result = Result(
                ok=True,
                metrics=metrics,
                env={**evaluation.env, "tier": tier.name, "launcher": lx.kind},
                curves=_curves(evaluation),
            )
        except CandidateError as e:
            if _stopping.is_set():
                raise Interrupted("the run is stopping") from None
            result = Result(
                ok=False,
                reason=e.reason,
                detail=e.detail[:2000],
                metrics=dict(evaluation.metrics) if evaluation else {},
                env={**evaluation.env, "tier": tier.name, "launcher": launch.launcher().kind} if evaluation else {},
                curves=_curves(evaluation),
            )
        except DataError as e:
            result = Result(ok=False, reason="data", detail=str(e))
        except OSError:
            raise  # this machine's fault (a full disk): the run stops and says so, the candidate is not blamed
        except Exception as e:  # noqa: BLE001  (whatever a server sent must not stop the run: a crash of the candidate)
            if _stopping.is_set():
                raise Interrupted("the run is stopping") from None
            with open(log, "a") as f:
                traceback.print_exc(file=f)
            result = Result(
                ok=False,
                reason="crash",
                detail=f"the scorer could not use what a server sent: {type(e).__name__}: {e}"[:2000],
                metrics=dict(evaluation.metrics) if evaluation else {},
                curves=_curves(evaluation),
            )
        finally:
            if evaluation is not None:
                evaluation.close()
                evaluation.progress.end()
                with _live_lock:
                    _live.discard(evaluation)
        result.metrics["wall_s"] = time.monotonic() - started
        with open(log, "a") as f:
            f.write(
                f"[sandbox] {'accepted' if result.ok else 'rejected: ' + str(result.reason)}: {result.detail or ''}\n"
            )
        _cap_log(log)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    return result


def _aggregate(results: list[Result], seeds: list[int]) -> Result:
    metrics: dict = {"seeds": seeds}
    keys = [
        k
        for k in results[0].metrics
        if all(isinstance(r.metrics.get(k), int | float) and not isinstance(r.metrics.get(k), bool) for r in results)
    ]
    for key in keys:
        values = [r.metrics[key] for r in results]
        metrics[key] = statistics.fmean(values)
        if key in ("val_loss", "val_bpb", "tokens_per_s", "mqar_acc", "selcopy_acc", "val_loss_2x", "quant_loss"):
            metrics[f"{key}_std"] = statistics.stdev(values)
    for key, value in results[0].metrics.items():
        metrics.setdefault(key, value)
    if any(r.metrics.get("flagged") for r in results):
        metrics["flagged"] = next(r.metrics["flagged"] for r in results if r.metrics.get("flagged"))
    metrics["wall_s"] = sum(r.metrics.get("wall_s", 0.0) for r in results)
    return Result(ok=True, metrics=metrics, env=results[0].env, curves=[c for r in results for c in r.curves])


def _curves(evaluation) -> list[dict]:
    """The evaluation's loss curves as far as training got (a failed one's too: where it diverged)."""
    return [evaluation.curves.as_dict()] if evaluation is not None and evaluation.curves is not None else []


def _cap_log(path: Path) -> None:
    try:
        size = path.stat().st_size
        if size > LOG_LIMIT:
            with open(path, "rb") as f:
                head = f.read(2**20)
                f.seek(-(2**20), os.SEEK_END)
                end = f.read()
            path.write_bytes(head + f"\n[sandbox] ... {size - 2 * 2**20:,} bytes of log left out ...\n".encode() + end)
    except OSError:
        pass


def tail(path, size: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


__all__ = ["Result", "evaluate", "tail", "TIERS"]
