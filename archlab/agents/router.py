"""Several models for one role, chosen by value: a bandit rewarded with fitness gain per dollar.

With `--researcher-model a,b,c` (or --engineer-model, --analyst-model; the judge shares the
analyst's models) the router picks the model of a node's calls of that role when the node makes
its first one; the node's later calls of that role (re-asks, repairs) keep it, so a conversation
stays with one model and its reward belongs to one arm. The rule (`choose`):

- an arm never chosen is chosen first (several: the seeded rng draws one);
- otherwise every arm gets the index (mean_gain / scale + sqrt(2 ln N / n)) / relative_cost
  (UCB1 on gain, divided by cost), the highest index wins, ties drawn by the seeded rng. A node's
  gain is max(0, fitness - parent fitness) once it is recorded (a failed or discarded node gains
  0); n is the arm's recorded nodes (at least 1: a choice still in flight counts as one pull of
  gain 0) and N their sum; scale is the largest gain of any node so far (gains then lie in
  [0, 1], as UCB1 assumes; before any gain every mean is 0 and cost decides); relative_cost is
  the arm's mean cost per node (what that role's calls for the node cost, from `prices`) over
  the cheapest arm's (an arm not yet priced counts as the cheapest; when the cheapest is free,
  the other free arms count 1 and priced ones are never preferred).

Nothing is kept in memory: the statistics are read from the store (the "router" choice traces,
the role's LLM traces and the nodes' fitness) before every choice, so a resumed run continues
with what it knew and a crash loses nothing. Each choice is a trace (role "router", kind
"choice": the arms' statistics and indexes, the chosen model); each recorded node gets one of
kind "reward" ({"role", "model", "gain", "cost", "reward"}, reward = gain / cost).
The rng is seeded with the run's seed, the role and the node id, so a choice is reproducible.
"""

import math
import random
import threading
from dataclasses import dataclass

RULE = "ucb1: (mean_gain/scale + sqrt(2 ln N / n)) / relative_cost; untried first; ties by seeded rng"
RECORDED = ("done", "failed")


@dataclass
class Arm:
    """What the store says about one model of a role."""

    model: str
    chosen: int = 0  # nodes it was chosen for (recorded or in flight)
    pulls: int = 0  # of them, recorded
    gain: float = 0.0  # the recorded nodes' gains, summed
    best_gain: float = 0.0  # the largest of them
    cost: float = 0.0  # what its calls cost, over every node it was chosen for (USD)
    priced: int = 0  # nodes whose calls completed at least once (their cost is known)

    @property
    def mean_cost(self) -> float | None:
        return self.cost / self.priced if self.priced else None


def indexes(arms: list[Arm]) -> dict[str, float]:
    """Each arm's index under the module's rule (math.inf for an arm never chosen)."""
    n = {a.model: max(a.pulls, 1) for a in arms}
    total = sum(n.values())
    scale = max((a.best_gain for a in arms), default=0.0)
    known = [a.mean_cost for a in arms if a.mean_cost is not None]
    cheapest = min(known, default=None)
    out = {}
    for a in arms:
        if a.chosen == 0:
            out[a.model] = math.inf
            continue
        mean = a.gain / n[a.model] / scale if scale > 0 else 0.0
        bonus = math.sqrt(2 * math.log(total) / n[a.model]) if total > 1 else 0.0
        out[a.model] = (mean + bonus) / _relative_cost(a.mean_cost, cheapest)
    return out


def _relative_cost(cost: float | None, cheapest: float | None) -> float:
    if cost is None or cheapest is None or cost <= cheapest:
        return 1.0
    return cost / cheapest if cheapest > 0 else math.inf


def choose(arms: list[Arm], rng: random.Random) -> tuple[str, dict[str, float]]:
    """(the chosen model, every arm's index): the highest index, ties drawn by `rng`."""
    scores = indexes(arms)
    top = max(scores.values())
    tied = [a.model for a in arms if scores[a.model] == top or math.isclose(scores[a.model], top, rel_tol=1e-12)]
    return (tied[0] if len(tied) == 1 else rng.choice(tied)), scores


def gain(outcome: dict) -> float:
    """A recorded node's gain over its parent: 0 for a failed node or one without figures."""
    if outcome["status"] != "done" or outcome["fitness"] is None or outcome["parent_fitness"] is None:
        return 0.0
    return max(0.0, outcome["fitness"] - outcome["parent_fitness"])


class Router:
    def __init__(self, store, models: dict[str, list[str]], seed: int):
        self.store = store
        self.models = {role: list(ms) for role, ms in models.items() if len(ms) > 1}  # only roles with a choice
        self.seed = seed
        self.lock = threading.Lock()  # a process's workers choose and settle one at a time

    def routes(self, role: str) -> bool:
        return role in self.models

    def chosen(self, role: str, node_id: int) -> str | None:
        """The model already chosen for this node's `role` calls (before a crash, too)."""
        return self.store.router_choice(node_id, role)

    def arms(self, role: str) -> list[Arm]:
        arms = {m: Arm(m) for m in self.models[role]}
        for o in self.store.router_outcomes(role):
            arm = arms.get(o["model"])
            if arm is None:  # a model no longer listed (the option cannot change on resume; a fork may)
                continue
            arm.chosen += 1
            arm.cost += o["cost"]
            arm.priced += o["calls"] > 0
            if o["status"] in RECORDED:
                g = gain(o)
                arm.pulls += 1
                arm.gain += g
                arm.best_gain = max(arm.best_gain, g)
        return list(arms.values())

    def choose(self, role: str, node_id: int, affordable: list[str]) -> str:
        """Choose and trace the model of this node's `role` calls among the `affordable` ones."""
        with self.lock:
            self._settle()
            arms = self.arms(role)
            model, scores = choose(
                [a for a in arms if a.model in affordable], random.Random(f"{self.seed}:{role}:{node_id}")
            )
            stats = [
                {
                    "model": a.model,
                    "chosen": a.chosen,
                    "pulls": a.pulls,
                    "mean_gain": a.gain / a.pulls if a.pulls else None,
                    "mean_cost": a.mean_cost,
                    "index": _json_number(scores.get(a.model)),
                    **({} if a.model in affordable else {"left_out": "over the --max-cost left"}),
                }
                for a in arms
            ]
            self.store.add_trace(
                node_id,
                "router",
                "choice",
                model=model,
                response=f"{role}: {model}",
                decision={"role": role, "model": model, "rule": RULE, "arms": stats},
            )
        return model

    def settle(self) -> None:
        """Write the reward trace of every recorded node that has none yet (idempotent)."""
        with self.lock:
            self._settle()

    def _settle(self) -> None:
        for role in self.models:
            for o in self.store.router_outcomes(role):
                if o["rewarded"] or o["status"] not in RECORDED:
                    continue
                g = gain(o)
                self.store.add_trace(
                    o["node_id"],
                    "router",
                    "reward",
                    model=o["model"],
                    response=f"{role}: {o['model']} gained {g:.4f} for {o['cost']:.6f} USD",
                    decision={
                        "role": role,
                        "model": o["model"],
                        "gain": g,
                        "cost": o["cost"],
                        "reward": g / o["cost"] if o["cost"] > 0 else None,
                    },
                )


def _json_number(value: float | None) -> float | str | None:
    """An index as JSON can hold it: math.inf (an untried arm) as "untried"."""
    return "untried" if value is not None and math.isinf(value) and value > 0 else value
