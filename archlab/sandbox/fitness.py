"""Metrics -> fitness (higher is better; the root scores 0) and the Pareto archive."""

import math


def fitness(metrics: dict, root: dict, speed_weight: float = 0.05) -> float:
    """Validation-loss gain over the root, minus a penalty for being slower than the root."""
    gain = root["val_loss"] - metrics["val_loss"]
    slowdown = math.log(root["tokens_per_s"] / metrics["tokens_per_s"]) if metrics.get("tokens_per_s") else 1.0
    return gain - speed_weight * max(0.0, slowdown)


def pareto_front(points: list[tuple[int, float, float]]) -> list[int]:
    """Ids of points (id, loss, cost) that no other point beats on both loss and cost (lower is better)."""
    front, best_cost = [], math.inf
    for node_id, _, cost in sorted(points, key=lambda p: (p[1], p[2])):
        if cost < best_cost:
            front.append(node_id)
            best_cost = cost
    return front
