"""One evaluation as the sandbox receives it, and the parameter budget it is held to.

An `EvaluationRequest` is built once by whoever asks for an evaluation (the search and its
promotions, replay, `archlab check` and `archlab eval`), carried as it is by the executors (as
JSON, `model_dump(mode="json")` and `model_validate`, to a slot process or a Ray worker) and read
by `runner.evaluate`. An executor changes only what is its own to decide: the CPU threads and the
device of its slot, and on a Ray worker where the log and the weights are written.
"""

import math
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from archlab.sandbox.tiers import Tier


class EvaluationRequest(BaseModel):
    """Everything one evaluation needs (see runner.evaluate for what each field does)."""

    # extra="forbid": a misspelt option is an error, as a wrong keyword argument was; NaN and infinity in
    # `reference` travel as JSON's NaN/Infinity, as json.dumps wrote them before the request existed
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    source: str
    tier: str | Tier = "smoke"
    seed: int = 0
    seeds: int | None = None
    data: str | None = None
    param_limit: int | None = None
    param_ratio: float = 1.2
    threads: int | None = None
    timeout_s: int | float | None = None  # an int stays one: the progress file shows the limit as given
    memory_gb: float = 12.0
    log_path: Path | None = None
    tier_overrides: dict | None = None
    allow_quadratic: bool = False
    reference: dict | None = None
    implausible_gain: float = 0.25
    device: str | None = None
    skip_static_checks: bool = False
    weights_out: Path | None = None

    def placed(self, **fields) -> "EvaluationRequest":
        """The same request with the fields an executor decides (threads, device, log_path, weights_out)."""
        return self.model_copy(update=fields)


def param_budget(root_mixer_params: float, ratio: float) -> int:
    """The parameter budget per block: the root's mixer parameters (at the evaluation's width) times the
    run's param_ratio, rounded down. Every place that holds a candidate to the root's size asks here."""
    return math.floor(root_mixer_params * ratio)


def default_threads(slots: int = 1) -> int:
    """CPU threads per evaluation when nobody says: the machine's cores shared by the slots, at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) // max(1, slots)))
