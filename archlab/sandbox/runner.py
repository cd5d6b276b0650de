"""The parent side of the sandbox: run one evaluation and collect its result.

An evaluation is one scorer.Evaluation per seed: two model servers of the candidate, each in
its own sandbox (launch.py), and the trusted scorer in this process, which computes every
metric and verdict from what the servers return (scorer.py). A validation loss implausibly far
below the root's (`reference`) is kept but flagged (`metrics["flagged"]`), and fitness does not
crown it: every validation window was already checked for causality on the scored server.
"""

import os
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path

from pydantic import BaseModel

from archlab.sandbox import launch
from archlab.sandbox.averaging import average
from archlab.sandbox.errors import DETAIL_LIMIT, CandidateError, rejected
from archlab.sandbox.request import EvaluationRequest, default_threads
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


def evaluate(request: "EvaluationRequest | str", tier: "str | Tier | None" = None, **options) -> Result:
    """Evaluate candidate source code at a tier in sandboxed model servers, as `request` says.

    `evaluate(source, tier, **options)` is shorthand for `evaluate(EvaluationRequest(source=source,
    tier=tier, **options))`. The request's fields:
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
    if not isinstance(request, EvaluationRequest):
        request = EvaluationRequest(source=request, **({} if tier is None else {"tier": tier}), **options)
    elif tier is not None or options:
        raise TypeError("evaluate(request) takes no more arguments: the request holds them all")
    try:
        spec = resolve(request.tier, request.tier_overrides)
    except TierError as e:
        return Result(ok=False, reason="config", detail=str(e))
    opt = dict(
        data=request.data,
        param_limit=request.param_limit,
        param_ratio=request.param_ratio,
        threads=request.threads or default_threads(),
        timeout_s=request.timeout_s,
        memory_gb=request.memory_gb,
        allow_quadratic=request.allow_quadratic,
        device=request.device,
        skip_static_checks=request.skip_static_checks,
    )
    seed, seeds, log_path = request.seed, request.seeds, request.log_path
    results = []
    for i in range(seeds or 1):
        log_i = Path(f"{log_path}.seed{seed + i}") if log_path and i else log_path
        result = _evaluate_seed(request.source, spec, seed + i, opt, log_i, request.weights_out)
        if not result.ok:
            if seeds and seeds > 1:
                result.detail = f"seed {seed + i}: {result.detail}"
            return result
        ref = (request.reference or {}).get("val_loss")
        val = result.metrics.get("val_loss")
        if ref and val is not None and val < (1 - request.implausible_gain) * ref:
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
    launch.launcher()  # a forced launcher that cannot start stops the caller here, never blamed on a candidate
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
                detail=e.detail[:DETAIL_LIMIT],
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
            error = rejected(e, "the scorer, reading what a server sent,", "crash", memory=False)
            result = Result(
                ok=False,
                reason=error.reason,
                detail=error.detail,
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
    metrics = {"seeds": seeds, **average([r.metrics for r in results])}
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


__all__ = ["EvaluationRequest", "Result", "evaluate", "tail", "TIERS"]
