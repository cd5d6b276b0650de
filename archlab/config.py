"""RunConfig: one typed object per run, frozen into runs/NAME/archlab.toml when the run starts."""

import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from archlab.errors import UserError

CONFIG_FILE = "archlab.toml"
# A sandbox may hold 256 tasks (protections.DEFAULT_NPROC) and torch starts pools of threads on
# top of the evaluation's: 100000 threads made every candidate fail, and stuck in archlab.toml.
MAX_THREADS = 64
MAX_SEED = 2**32  # seeds are 0 .. 2**32-1: runs add small offsets, and SQLite and torch take 64-bit ones


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field("deltanet", description="built-in root name or path of a candidate file")
    llm: str = Field("offline", description="'offline' (embedded brain) or PROVIDER:MODEL")
    strategy: Literal["asi", "ucb", "evolution", "random"] = "asi"
    tier: Literal["micro", "smoke", "explore", "verify"] = "smoke"
    tier_overrides: dict = Field(
        {}, description="tier fields changed for every search evaluation, e.g. {d_model = 512, steps = 600}"
    )
    max_nodes: int = Field(12, ge=1, description="stop after this many nodes (the root included)")
    hours: float | None = Field(None, gt=0, description="stop after this many hours of wall time")
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    data: str | None = Field(None, description="text file or folder; None = the built-in corpus")
    param_ratio: float = Field(1.2, gt=0, description="mixer parameter budget relative to the root")
    allow_quadratic: bool = Field(False, description="accept mixers whose cost grows faster than linearly with length")
    # Real architectural changes move the smoke tier's loss by 10-17% (measured: the short conv and
    # the output gate are worth 0.25-0.4 nats of ~2.3); 10% flagged a real one-hour discovery.
    implausible_gain: float = Field(
        0.25, gt=0, description="a val_loss this far below the root's is rechecked and flagged"
    )
    speed_weight: float = Field(0.05, ge=0, description="fitness penalty per unit of log slowdown vs the root")
    workers: int = Field(1, ge=1, description="candidates evaluated at once (each in its own sandbox)")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="CPU threads per evaluation (default: all, up to 4)"
    )
    knowledge: list[str] = Field([], description="folders of the user's own knowledge entries")
    repair_attempts: int = Field(2, ge=0, description="engineer repairs per failed candidate")
    keep_weights: int = Field(
        3,
        ge=0,
        description="keep the trained weights of this many best nodes (and of every promoted "
        "node and the root), so exporting them needs no training",
    )
    mirror: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        [], description="mirror each finished node to these (archlab/export/mirrors.py), under RUN_DIR/mirror"
    )
    # LLM backends (any OpenAI-compatible endpoint); the key is read from api_key_env, never stored.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    researcher_model: str | None = None
    engineer_model: str | None = None
    analyst_model: str | None = None
    prices: dict[str, list[float]] = Field({}, description="model -> [USD per 1M input tokens, per 1M output tokens]")
    max_cost: float | None = Field(None, ge=0, description="stop when LLM spend reaches this many USD")
    max_tokens: int | None = Field(None, ge=1, description="stop when LLM tokens reach this many")
    llm_timeout_s: float = Field(120.0, gt=0, description="timeout of one LLM request")
    llm_patience_s: float = Field(600.0, ge=0, description="how long to wait out a failing endpoint before stopping")
    format_retries: int = Field(2, ge=0, description="re-asks after malformed LLM output")
    judge_weight: float = Field(0.0, ge=0, description="LLM judge's weight in fitness (0 = no judge)")
    code_edits: float = Field(
        0.0, ge=0, le=1, description="LLM runs: the share of proposals made by the offline brain's code operators"
    )
    novelty_threshold: float = Field(0.92, gt=0, le=1, description="reject proposals this similar to a sibling")
    # Where evaluations run (archlab/sandbox/executors.py) and the compute budgets.
    executor: Literal["local", "ray"] = Field(
        "local", description="local: slots on this machine; ray: one Ray task per evaluation"
    )
    address: str | None = Field(
        None, description="Ray cluster to join: 'auto' or HOST:PORT; None = a private local Ray instance"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where evaluations train: auto = one slot per GPU when there are GPUs"
    )
    task_memory_gb: float | None = Field(
        2.0, gt=0, description="memory Ray reserves for one evaluation (scheduling only)"
    )
    max_retries: int = Field(2, ge=0, description="Ray: re-runs of an evaluation whose worker or node was lost")
    max_cpu_hours: float | None = Field(
        None, gt=0, description="stop when evaluations have used this many CPU-hours (wall x threads)"
    )
    max_gpu_hours: float | None = Field(None, gt=0, description="stop when evaluations have used this many GPU-hours")
    # Multi-fidelity promotion (archlab/search/promotion.py): the top slice of the search tier is re-evaluated higher.
    promote: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fraction of finished candidates promoted to promote_tier "
        "(asynchronous successive halving); None = 0.25 when tier is explore, else off",
    )
    promote_seeds: int = Field(3, ge=1, description="seeds per promoted evaluation (figures are mean +- std)")
    promote_tier: Literal["smoke", "explore", "verify"] = Field(
        "verify", description="the higher tier of promoted nodes"
    )
    promote_overrides: dict = Field({}, description="tier fields changed for promoted evaluations, e.g. {steps = 2000}")

    @field_validator("address")
    @classmethod
    def _ray_address(cls, value: str | None, info):
        if value and info.data.get("executor") != "ray":
            raise PydanticCustomError("address", "only --executor ray joins a cluster")
        return value

    @field_validator("promote_tier")
    @classmethod
    def _higher_tier(cls, value: str, info):
        from archlab.sandbox.tiers import TIER_ORDER as order  # cheapest first

        tier, fraction = info.data.get("tier"), info.data.get("promote")
        if fraction and tier in order and order.index(value) <= order.index(tier):
            raise PydanticCustomError(
                "tier_order",
                "must be a higher tier than --tier {tier} for --promote {fraction}",
                {"tier": tier, "fraction": fraction},
            )
        return value

    @field_validator("tier_overrides", "promote_overrides")
    @classmethod
    def _valid_overrides(cls, value: dict, info):
        from archlab.sandbox.tiers import TierError, resolve

        tier = info.data.get("tier") if info.field_name == "tier_overrides" else info.data.get("promote_tier")
        try:
            resolve(tier or "verify", value)
        except TierError as e:
            raise PydanticCustomError("tier_override", "{error}", {"error": str(e)}) from None
        return value

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = run_dir / CONFIG_FILE
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{run_dir} is not an archlab run (no {CONFIG_FILE})") from None
        except (UnicodeDecodeError, OSError) as e:
            raise UserError(f"{path} cannot be read as a text file: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path} is not valid TOML: {e}") from None
        except ValidationError as e:
            err = e.errors()[0]
            raise UserError(f"{path}: {'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}") from None

    def save(self, run_dir: Path) -> None:
        path = run_dir / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(self.model_dump(exclude_none=True)))
        tmp.replace(path)  # atomic: a crash leaves the old or the new file, never half of one
