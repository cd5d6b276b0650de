"""The child-process side of the sandbox: `python -m archlab.sandbox.worker JOB.json`.

One evaluation is two processes (runner.py starts them; see protections.py for the layers):
- phase "train": static checks (before torch is even imported), then the harness is imported
  and warmed up, the result and weights files are opened, privileges are dropped, the audit
  hook is installed and only then the candidate is loaded; contract, causality, complexity,
  step() and parameter checks; training on the training split only (the validation text is
  not in this process and, under bubblewrap, not even visible); the trained weights go to
  the pre-opened weights file.
- phase "eval": a fresh process loads the candidate again (same guards), builds the model
  from the saved weights and measures validation loss (re-checking causality on the trained
  model with real text), length extrapolation, probes, latency, memory, FLOPs, int8 loss.
The harness's functions and torch's global state are verified after every stage ("tamper").
"""

import json
import os
import platform
import sys
import time
import traceback


def run(job: dict, out_files: dict) -> dict:
    started = time.perf_counter()
    metrics: dict = {}
    ok, reason, detail, env = False, None, None, {"python": platform.python_version()}
    guard = None
    try:
        from archlab.sandbox.errors import CandidateError
        from archlab.sandbox.static import static_check

        source = open(job["candidate"], encoding="utf-8").read()
        if not job.get("skip_static"):
            static_check(source)  # no torch yet: a forbidden file is rejected in milliseconds
        ok, metrics, env, guard = _run_phase(job, source, out_files, metrics, env)
    except BaseException as e:  # noqa: BLE001  (SystemExit from candidate code is a rejection too)
        from archlab.sandbox.errors import CandidateError, out_of_memory

        if isinstance(e, CandidateError):
            reason, detail = e.reason, e.detail
            if e.__cause__ is not None:
                traceback.print_exception(e.__cause__)
        elif out_of_memory(e):
            reason, detail = "memory", ("ran out of memory" + (f": {e}" if str(e) else ""))[:600]
        elif type(e).__name__ == "DataError":
            reason, detail = "data", str(e)
        elif isinstance(e, SystemExit | KeyboardInterrupt | GeneratorExit):
            reason, detail = "error", f"the candidate tried to leave the interpreter ({type(e).__name__})"
        else:  # a failure the harness did not foresee: still a data point
            traceback.print_exc()
            reason, detail = "error", f"{type(e).__name__}: {e}"
    guard = guard or _GUARD.get("guard")
    if guard is not None and guard.violations:  # a blocked operation decides the reason, caught or not
        ok, reason, detail = False, "forbidden", guard.summary()
        for violation in dict.fromkeys(guard.violations):  # all of them in the log: one run shows every fault
            _mark(f"blocked: {violation}")
    metrics["phase_wall_s"] = time.perf_counter() - started
    return {"ok": ok, "reason": None if ok else reason, "detail": None if ok else detail, "metrics": metrics, "env": env}


_GUARD: dict = {}


def _mark(what: str) -> None:
    """Progress lines in the sandbox log, with seconds since the process started."""
    print(f"[sandbox] {time.monotonic() - _T0:7.2f}s {what}", flush=True)


_T0 = time.monotonic()


def _run_phase(job: dict, source: str, out_files: dict, metrics: dict, env: dict):
    import torch

    from archlab.sandbox import checks, contract, harness, protections
    from archlab.sandbox.data import Corpus
    from archlab.sandbox.errors import CandidateError
    from archlab.sandbox.tiers import Tier

    tier = Tier.model_validate(job["tier"])
    threads = job.get("threads", 1)
    torch.set_num_threads(threads)
    device = harness.pick_device(job.get("device"))
    env.update(torch=torch.__version__, device=device.type, threads=threads,
               cuda=torch.version.cuda if device.type == "cuda" else None,
               gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    phase = job.get("phase", "train")
    seed = job.get("seed", 0)
    torch.manual_seed(seed)

    # Everything the harness needs exists before the candidate's code does.
    if phase == "train":
        corpus = Corpus.from_train_file(job["train_data"]) if tier.steps else None
        limit = job.get("param_limit")
        limit = root_param_limit(tier, job.get("param_ratio", 1.2)) if limit is None else limit
        weights = None
    else:
        corpus = Corpus.load(job.get("data"), train=False)
        limit = job.get("param_limit")
    _mark("harness imported")
    harness.warm_up(device, train=phase == "train" and tier.steps > 0, counters=phase == "train" or tier.hardware,
                    compiler=phase == "eval" and tier.hardware)  # only evaluate_trained compiles
    _mark("warmed up")
    if phase == "eval":
        if job.get("wait_for_go") and sys.stdin.readline().strip() != "go":  # started early: wait for the weights
            os._exit(0)
        _mark("weights are ready")
        weights = torch.load(job["weights"], map_location="cpu", weights_only=True)
    rng = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)  # unknown to the candidate
    integrity = protections.Integrity(_guarded_modules(), _guarded_classes(), threads=threads)
    guard = protections.AuditGuard(
        writable=[os.path.join(os.path.dirname(job["result"]), protections.CACHE_DIR)],
        hidden=[p for p in (job.get("data"), job.get("builtin_data"), job.get("train_data") if phase == "eval" else None) if p],
        cuda=device.type == "cuda",
    )
    _GUARD["guard"] = guard
    protections.drop_privileges(job.get("uid"))
    guard.install()

    _mark("guards installed; loading the candidate")
    shared = checks.SharedState.start()  # before the candidate's code first runs
    candidate = contract.load(source)
    integrity.verify("after importing the candidate")
    shared.verify()
    guard.check()
    if phase == "train":
        metrics.update(harness.check_candidate(candidate, tier, None if limit < 0 else limit,
                                               allow_quadratic=job.get("allow_quadratic", False), device=device))
        integrity.verify("after the checks")
        guard.check()
        _mark("checks passed")
        if tier.steps:
            model, train_metrics = harness.train_lm(candidate, tier, corpus, seed, device,
                                                    on_step=lambda step: _mark(f"step {step + 1}/{tier.steps}"))
            metrics.update(train_metrics)
            saved = {"lm": _tensors(model.state_dict())}
            if tier.probes is not None:
                _mark("training the probe model")
                probe_model, probe_metrics = harness.train_probes(candidate, tier, seed, device)
                metrics.update(probe_metrics)
                saved["probe"] = _tensors(probe_model.state_dict())
            integrity.verify("after training")
            guard.check()
            _mark("trained")
            torch.save(saved, out_files["weights"])
            out_files["weights"].flush()
    else:
        _mark("candidate loaded")
        metrics.update(harness.evaluate_trained(candidate, tier, corpus, weights, device, rng=rng, seed=seed,
                                                recheck=job.get("recheck", False)))
        if limit is not None and limit >= 0:
            harness.model_budget(harness.load_trained(candidate, tier, weights["lm"], device), limit)
        integrity.verify("after evaluation")
        guard.check()
        _mark("evaluated")
    if not all(isinstance(v, int | float | str | bool | type(None)) for v in metrics.values()):
        raise CandidateError("error", "internal: a metric is not a plain value")
    return True, metrics, env, guard


def _tensors(state: dict) -> dict:
    """A trained model's state_dict as CPU tensors; anything else in it (extra state that is not
    a tensor) breaks the contract: only tensors travel to the evaluation process."""
    import torch

    from archlab.sandbox.errors import CandidateError

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CandidateError("contract", f"state_dict entry {key!r} is a {type(value).__name__}: a part's state "
                                 "(parameters, buffers, get_extra_state) must be tensors")
    return {key: value.detach().cpu() for key, value in state.items()}


def root_param_limit(tier, ratio: float) -> int:
    import math

    from archlab.sandbox import checks, contract
    from archlab.templates import render_root

    root = contract.load(render_root("deltanet"), name="root_deltanet")
    return math.floor(checks.count_params(contract.build_mixer(root, tier.d_model, tier.n_heads)) * ratio)


def _guarded_modules() -> list:
    import json as json_mod
    import math
    import time as time_mod

    import torch
    import torch.nn.functional as F
    import torch.nn.utils.clip_grad
    import torch.utils.flop_counter

    from archlab.sandbox import checks, contract, data, errors, harness, protections, static

    names = ["torch.optim.adamw", "torch.optim.adam", "torch.optim.optimizer", "torch.optim.lr_scheduler",
             "torch.nn.utils.clip_grad", "torch.nn.modules.module", "torch.nn.modules.linear", "torch.nn.modules.sparse",
             "torch.nn.modules.normalization", "torch.autograd.grad_mode"]
    return [torch, torch.nn, F, torch.nn.init, torch.nn.utils, torch.optim, torch.autograd, torch.linalg,
            torch.utils.flop_counter, torch.serialization, math, time_mod, json_mod, os, checks, contract, data, errors,
            harness, protections, static, sys.modules[__name__]] + [sys.modules[n] for n in names if n in sys.modules]


def _guarded_classes() -> list:
    import torch
    import torch.nn as nn

    from archlab.sandbox import data, harness, protections

    import torch.optim.lr_scheduler

    return [torch.Tensor, nn.Parameter, nn.Module, nn.Linear, nn.Embedding, nn.RMSNorm, nn.ModuleList,
            torch.optim.Optimizer, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR,
            torch.optim.lr_scheduler.LRScheduler, torch.Generator, torch.utils.flop_counter.FlopCounterMode,
            harness.LM, harness.Block, harness.SwiGLU, harness.Attention, data.Corpus, protections.AuditGuard,
            protections.Integrity]


def main() -> None:
    job = json.load(open(sys.argv[1]))
    from archlab.sandbox import protections

    protections.apply_limits(job.get("memory_gb"), job.get("nproc", protections.DEFAULT_NPROC), job.get("cpu_s"))
    protections.start_parent_watchdog()
    out_files = {"result": open(job["result"], "w")}  # opened before the candidate exists
    if job.get("phase", "train") == "train" and job.get("weights"):
        out_files["weights"] = open(job["weights"], "wb")
    result = run(job, out_files)
    print(f"[sandbox] {job.get('phase', 'train')}: {'accepted' if result['ok'] else 'rejected: ' + str(result['reason'])}: "
          f"{result['detail'] or ''}", flush=True)
    json.dump(result, out_files["result"])
    for f in out_files.values():
        f.close()
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: nothing of the candidate runs after the result is written


if __name__ == "__main__":
    main()
