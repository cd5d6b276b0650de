"""The child-process side of the sandbox: `python -m archlab.sandbox.worker JOB.json`.

Runs inside its own process group with resource limits (see runner.py). Everything the
harness needs (data, the root's parameter count, the result file) is prepared before the
candidate's code is imported, so the candidate finds nothing of the harness to reach.
"""

import json
import math
import platform
import sys
import time
import traceback

import torch

from archlab.sandbox import checks, contract, harness
from archlab.sandbox.contract import CandidateError
from archlab.sandbox.data import Corpus, DataError
from archlab.sandbox.tiers import TIERS


def root_param_limit(tier, ratio: float) -> int:
    from archlab.templates import render_root

    root = contract.load(render_root("deltanet"))
    return math.floor(checks.count_params(contract.build_mixer(root, tier.d_model, tier.n_heads)) * ratio)


def run(job: dict) -> dict:
    started = time.perf_counter()
    metrics: dict = {}
    ok, reason, detail = False, None, None
    try:
        tier = TIERS[job["tier"]]
        torch.manual_seed(job.get("seed", 0))
        source = open(job["candidate"], encoding="utf-8").read()
        checks.static_check(source)
        corpus = Corpus.load(job.get("data")) if tier.steps else None
        limit = job.get("param_limit")
        limit = root_param_limit(tier, job.get("param_ratio", 1.2)) if limit is None else limit
        candidate = contract.load(source)
        metrics.update(harness.check_candidate(candidate, tier, None if limit < 0 else limit))
        if tier.steps:
            metrics.update(harness.train_and_evaluate(candidate, tier, corpus, job.get("seed", 0)))
        ok = True
    except CandidateError as e:
        reason, detail = e.reason, e.detail
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
    except DataError as e:
        reason, detail = "data", str(e)
    except MemoryError:
        reason, detail = "memory", "ran out of memory"
    except Exception as e:  # a failure the harness did not foresee: still a data point
        traceback.print_exc()
        reason, detail = "error", f"{type(e).__name__}: {e}"
    metrics["wall_s"] = time.perf_counter() - started
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": "cpu", "threads": torch.get_num_threads()}
    return {"ok": ok, "reason": reason, "detail": detail, "metrics": metrics, "env": env}


def main() -> None:
    job = json.load(open(sys.argv[1]))
    torch.set_num_threads(job.get("threads", 1))
    out = open(job["result"], "w")  # opened before the candidate runs
    result = run(job)
    print(f"[sandbox] {'accepted' if result['ok'] else 'rejected: ' + str(result['reason'])}: {result['detail'] or ''}", flush=True)
    json.dump(result, out)
    out.close()


if __name__ == "__main__":
    main()
