"""Metrics -> fitness (higher is better; the root scores 0) and the Pareto archive.

The default fitness is quality relative to the root minus hardware penalties:

    fitness = (root.val_loss - val_loss)                       quality gain, nats/byte
            + recall_weight  * (mqar_acc - root.mqar_acc)       when both have probe results
            - speed_weight   * max(0, log(root.tokens_per_s / tokens_per_s))
            - latency_weight * max(0, log(decode_ms_per_token / root's))
            - memory_weight  * max(0, log(peak_mem_mb / root's))
            - quant_weight   * max(0, quant_loss - root.quant_loss)
            - state_weight   * max(0, log(state_bytes_at(8192) / root's))
            - compile_penalty  when metrics["compile_ok"] is False

Every penalty only applies when both the candidate and the root have the metric (cheap tiers
measure fewer things), so `fitness(metrics, root)` with only val_loss and tokens_per_s is
exactly the original definition. A result flagged by the sandbox (a validation loss
implausibly far below the root's: metrics["flagged"]) never gets credit for its quality
gain, so it is kept and shown but never crowned.
"""

import math
from dataclasses import dataclass, field

STATE_CONTEXT = 8192  # state growth is compared at this context length


@dataclass(frozen=True)
class Weights:
    speed: float = 0.05
    latency: float = 0.02
    memory: float = 0.02
    quant: float = 0.5
    state: float = 0.01
    recall: float = 0.1
    compile: float = 0.05


def fitness(
    metrics: dict,
    root: dict,
    speed_weight: float = 0.05,
    *,
    weights: "Weights | dict | None" = None,
    trust_flagged: bool = False,
) -> float:
    """Quality gain over the root minus hardware penalties (see the module docstring)."""
    return breakdown(metrics, root, speed_weight, weights=weights, trust_flagged=trust_flagged)["fitness"]


def breakdown(
    metrics: dict,
    root: dict,
    speed_weight: float = 0.05,
    *,
    weights: "Weights | dict | None" = None,
    trust_flagged: bool = False,
) -> dict:
    """Every term of the fitness, for reports and the analyst."""
    w = _weights(weights, speed_weight)
    terms: dict[str, float] = {}
    gain = root["val_loss"] - metrics["val_loss"]
    if _both(metrics, root, "mqar_acc"):
        gain += w.recall * (metrics["mqar_acc"] - root["mqar_acc"])
    if metrics.get("flagged") and not trust_flagged:
        gain = min(gain, 0.0)
        terms["flagged"] = 1.0
    terms["quality"] = gain
    slowdown = (
        math.log(root["tokens_per_s"] / metrics["tokens_per_s"])
        if metrics.get("tokens_per_s") and root.get("tokens_per_s")
        else 1.0
    )
    terms["speed"] = -w.speed * max(0.0, slowdown)
    if _both(metrics, root, "decode_ms_per_token"):
        terms["latency"] = -w.latency * max(0.0, math.log(metrics["decode_ms_per_token"] / root["decode_ms_per_token"]))
    if _both(metrics, root, "peak_mem_mb"):
        terms["memory"] = -w.memory * max(0.0, math.log(metrics["peak_mem_mb"] / root["peak_mem_mb"]))
    if _both(metrics, root, "quant_loss", positive=False):
        terms["quant"] = -w.quant * max(0.0, metrics["quant_loss"] - root["quant_loss"])
    if _both(metrics, root, "state_bytes") and _both(metrics, root, "state_bytes_per_token", positive=False):
        mine, theirs = state_at(metrics), state_at(root)
        if mine > 0 and theirs > 0:
            terms["state"] = -w.state * max(0.0, math.log(mine / theirs))
    if metrics.get("compile_ok") is False:
        terms["compile"] = -w.compile
    total = sum(v for k, v in terms.items() if k != "flagged")
    return {"fitness": total, **terms}


def state_at(metrics: dict, context: int = STATE_CONTEXT) -> float:
    """Inference state (or KV cache) bytes at `context` tokens, from the measured size and growth."""
    return metrics["state_bytes"] + metrics.get("state_bytes_per_token", 0.0) * max(
        0, context - metrics.get("state_context", 256)
    )


def _both(metrics: dict, root: dict, key: str, positive: bool = True) -> bool:
    a, b = metrics.get(key), root.get(key)
    ok = (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and math.isfinite(a)
        and math.isfinite(b)
    )
    return ok and (not positive or (a > 0 and b > 0))


def _weights(weights: "Weights | dict | None", speed_weight: float) -> Weights:
    if isinstance(weights, Weights):
        return weights
    values = {"speed": speed_weight, **(weights or {})}
    return Weights(**values)


def pareto_front(points: list[tuple[int, float, float]]) -> list[int]:
    """Ids of points (id, loss, cost) that no other point beats on both loss and cost (lower is better)."""
    front, best_cost = [], math.inf
    for node_id, _, cost in sorted(points, key=lambda p: (p[1], p[2])):
        if cost < best_cost:
            front.append(node_id)
            best_cost = cost
    return front


OBJECTIVES = ("val_loss", "decode_ms_per_token", "peak_mem_mb")  # quality, latency, memory: all lower-is-better


@dataclass
class ParetoArchive:
    """Non-dominated results over (quality, latency, memory), kept beside the scalar fitness.

    `add` returns True when the point joins the front (and drops the points it dominates).
    Points missing an objective are compared on the objectives they have in common with the
    archive's definition: a missing value counts as the worst possible.
    """

    objectives: tuple[str, ...] = OBJECTIVES
    points: dict = field(default_factory=dict)  # id -> tuple of objective values

    def add(self, node_id, metrics: dict) -> bool:
        point = tuple(_value(metrics, key) for key in self.objectives)
        if any(
            _dominates(other, point) or other == point and other_id != node_id
            for other_id, other in self.points.items()
        ):
            return False
        self.points = {i: p for i, p in self.points.items() if not _dominates(point, p)}
        self.points[node_id] = point
        return True

    def front(self) -> list:
        """Ids on the front, best quality first."""
        return sorted(self.points, key=lambda i: self.points[i])

    @classmethod
    def of(cls, results: dict, objectives: tuple[str, ...] = OBJECTIVES) -> "ParetoArchive":
        """The archive of {id: metrics}."""
        archive = cls(objectives)
        for node_id, metrics in results.items():
            if metrics and metrics.get("val_loss") is not None:
                archive.add(node_id, metrics)
        return archive


def _value(metrics: dict, key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.inf


def _dominates(a: tuple, b: tuple) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
