"""The scorer's checks with both model servers in this process (fast unit tests of scorer.py).

A Loopback is a real `server.Server` holding its own copy of the candidate (each one executes
the candidate's file again, as two server processes would); a request reaches the same method
the pipe would, and the reply comes back as numpy arrays and a JSON-clean header, as over the
wire. The Evaluation is the real scorer.Evaluation, built without starting processes. Only
the checks run this way (training talks over the pipe): the whole pipeline with real
processes is test_sandbox.py's.
"""

import json
import time

import numpy as np
import torch

from archlab.sandbox import contract, scorer, server
from archlab.sandbox.tiers import Tier


class Loopback:
    def __init__(self, name: str, source: str, tier: Tier, seed: int = 0):
        self.name = name
        self.server = server.Server(
            {"tier": tier.model_dump(mode="json"), "seed": seed, "device": "cpu", "threads": torch.get_num_threads()}
        )
        self.server.candidate = contract.load(source)
        self.requests: list[tuple[str, dict]] = []
        self.busy_s = 0.0  # time a test says a busy machine added

    def start(self) -> dict:
        s = self.server
        return {
            "ready": True,
            "has_step": callable(getattr(s.candidate.Mixer, "step", None)),
            "has_ffn": getattr(s.candidate, "FFN", None) is not None,
            "dtype": s.widest_dtype(),
            "env": {},
        }

    def ask(self, op: str, arrays: dict | None = None, **fields) -> tuple[dict, dict]:
        assert op in server.Server.OPS, op
        arrays = arrays or {}
        self.requests.append((op, {k: v.shape for k, v in arrays.items()}))
        header, out = getattr(self.server, op)({"op": op, **fields}, arrays)
        return json.loads(json.dumps(header)), {k: v.detach().cpu().numpy() for k, v in out.items()}

    def host_pid(self) -> None:
        return None

    def used_cpu_s(self) -> float:
        """The scorer's clock on this server: this process's CPU time (it runs here)."""
        return time.process_time() + self.busy_s

    def close(self) -> None:
        pass


def evaluation(source: str, tier: Tier, *, seed: int = 0, rng: int = 0, **opt) -> scorer.Evaluation:
    """A scorer.Evaluation of `source` whose servers A and B are Loopbacks (checks only); `ev.a` and
    `ev.b` are the two, for the tests to look at the requests each got."""
    ev = object.__new__(scorer.Evaluation)
    ev.source, ev.tier, ev.seed, ev.opt = source, tier, seed, {"threads": 1, "param_limit": -1, **opt}
    ev.rng = np.random.default_rng(rng)
    ev.cuda, ev.device = False, "cpu"
    ev.a, ev.b = (Loopback(name, source, tier, seed) for name in ("A", "B"))
    ev.servers = {"A": ev.a, "B": ev.b}
    ev._start = lambda name: ev.servers.setdefault(name, Loopback(name, source, tier, seed))  # a fresh server
    ev._end = lambda name: None
    ev.metrics, ev.env, ev.weights, ev.pending, ev.taken = {}, {}, {}, [], []
    ready = ev.a.start()
    assert ev.b.start() == ready
    ev.has_step, ev.has_ffn = bool(ready["has_step"]), bool(ready["has_ffn"])
    ev.dtype = ready["dtype"]
    return ev


def causality(ev: scorer.Evaluation, part: str = "Mixer") -> None:
    """The check tier's causality comparisons of one part: first passes in A, perturbed copies in B."""
    plan = [p for p in ev.check_plan() if p[4]["part"] == part]
    ev.compare(ev.b, plan, ev.first_passes(ev.a, plan))


def step_agreement(ev: scorer.Evaluation, length: int = 40) -> None:
    ev.step_compare(ev.b, *ev.step_first(ev.a, length))


def checks(ev: scorer.Evaluation) -> None:
    """Everything the check tier runs, A then B."""
    plan = ev.check_plan()
    ev.checks_in_b(ev.b, plan, ev.checks_in_a(ev.a, plan))
