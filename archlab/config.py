"""RunConfig: one typed object per run, frozen into runs/NAME/archlab.toml when the run starts."""

import random
import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from archlab.errors import UserError
from archlab.sandbox.request import EvaluationRequest
from archlab.text import loads

CONFIG_FILE = "archlab.toml"
# A sandbox may hold 256 tasks (protections.DEFAULT_NPROC) and torch starts pools of threads on
# top of the evaluation's: 100000 threads made every candidate fail, and stuck in archlab.toml.
MAX_THREADS = 64
MAX_SEED = 2**32  # seeds are 0 .. 2**32-1: runs add small offsets, and SQLite and torch take 64-bit ones
# The fields a resumed run may change (`archlab run` again): budgets and where evaluations run.
# Every other field is fixed when the run starts: a resume that changes one is refused.
RESUME_OPTIONS = (
    "max_nodes",
    "hours",
    "threads",
    "workers",
    "max_cost",
    "llm_timeout_s",
    "llm_patience_s",
    "executor",
    "address",
    "device",
    "max_cpu_hours",
    "max_gpu_hours",
    "promote",
    "keep_weights",
    "mirror",
)
# RunConfig fields whose command-line option has another name
OPTION_NAMES = {
    "max_cpu_hours": "cpu_hours",
    "max_gpu_hours": "gpu_hours",
    "llm_timeout_s": "llm_timeout",
    "llm_patience_s": "llm_patience",
    "tier_overrides": "tier_set",
    "promote_overrides": "promote_set",
}


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field("deltanet", description="built-in root name or path of a candidate file")
    llm: str = Field("offline", description="'offline' (embedded brain) or PROVIDER:MODEL")
    # asi-qd: ASI-Arch's selection, its exploring fifth from the quality-diversity archive (sampling.py);
    # wider than asi and level with it on quality (bench/search_efficiency.py, README's table).
    strategy: Literal["asi", "asi-qd", "qd", "ucb", "evolution", "random"] = "asi-qd"
    # Islands (archlab/search/islands.py): sub-populations, each drawing parents with `strategy` from its own nodes.
    islands: int = Field(1, ge=1, description="sub-populations of the search; 1: one population")
    migration_interval: int | None = Field(
        None,
        ge=1,
        description="with islands: each island's elite moves to the next every this many finished nodes (10)",
    )
    stagnation: int | None = Field(
        None, ge=1, description="with islands: a new island starts when the best has not moved for this many nodes (20)"
    )
    tier: Literal["micro", "smoke", "explore", "verify"] = "smoke"
    tier_overrides: dict = Field(
        {}, description="tier fields changed for every search evaluation, e.g. {d_model = 512, steps = 600}"
    )
    max_nodes: int = Field(12, ge=1, description="stop after this many nodes (the root included)")
    hours: float | None = Field(None, gt=0, description="stop after this many hours of wall time")
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    search_seed: int | None = Field(
        None,
        ge=0,
        lt=MAX_SEED,
        description="seed for the search's draws (parents, references, proposals); None: the seed. "
        "Another value searches anew over the same training seeds, so fitness stays comparable",
    )
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
    lessons: bool = Field(
        True,
        description="weigh earlier runs' lessons ($ARCHLAB_HOME/lessons) and write this run's there",
    )
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
    # One model, or several separated by commas: a bandit then picks one per node (archlab/agents/router.py).
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
    # validate_default: `--tier verify --promote F` alone must be refused at the start, not saved into an
    # archlab.toml that the same validator then refuses to load
    promote_tier: Literal["smoke", "explore", "verify"] = Field(
        "verify", validate_default=True, description="the higher tier of promoted nodes"
    )
    promote_overrides: dict = Field({}, description="tier fields changed for promoted evaluations, e.g. {steps = 2000}")

    @field_validator("researcher_model", "engineer_model", "analyst_model")
    @classmethod
    def _model_list(cls, value: str | None):
        if value is not None:
            model_list(value)
        return value

    @field_validator("migration_interval", "stagnation")
    @classmethod
    def _with_islands(cls, value: int | None, info):
        if value is not None and info.data.get("islands", 1) < 2:
            raise PydanticCustomError("islands", "only with --islands 2 or more")
        return value

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

    @property
    def draws_seed(self) -> int:
        """The seed of the search's draws: --search-seed, else --seed."""
        return self.seed if self.search_seed is None else self.search_seed

    def draws(self, node_id: int) -> random.Random:
        """The seeded draws that select and propose node `node_id`: reproducible, also across resumes."""
        return random.Random(self.draws_seed * 1_000_003 + node_id)

    def request(
        self,
        source: str,
        tier: str,
        seed: int,
        log: Path,
        weights: Path | None,
        *,
        param_limit: int,
        reference: dict | None = None,
        tier_overrides: dict | None = None,
        timeout_s: int | None = None,
    ) -> EvaluationRequest:
        """One of this run's evaluations as the sandbox receives it (the search's, a promotion's, a
        replay's): the run's data and its rules (quadratic mixers, implausible gains over `reference`,
        the root's metrics) with the caller's tier, seed, budget and paths."""
        return EvaluationRequest(
            source=source,
            tier=tier,
            seed=seed,
            data=self.data,
            param_limit=param_limit,
            allow_quadratic=self.allow_quadratic,
            implausible_gain=self.implausible_gain,
            reference=reference,
            tier_overrides=tier_overrides,
            timeout_s=timeout_s,
            log_path=log,
            weights_out=weights,
        )

    @classmethod
    def for_new_run(cls, given: dict) -> "RunConfig":
        """The config of a new run from the options given (run_options); one line when one is wrong."""
        if given.get("root") == "transformer":
            given = {"allow_quadratic": True, **given}  # softmax attention is the point of that root
        return _validated(given)

    def resumed(self, given: dict, run_dir: Path) -> "RunConfig":
        """This stored config with the options given on resume (run_options): RESUME_OPTIONS change,
        any other option that differs from the stored one is refused (one line)."""
        fixed = [k for k, v in given.items() if k not in RESUME_OPTIONS and getattr(self, k) != v]
        if fixed:
            name = fixed[0]
            option = OPTION_NAMES.get(name, name).replace(
                "_", "-"
            )  # the flag the user typed: --tier-set, not --tier-overrides
            raise UserError(
                f"{run_dir} was started with --{option} {getattr(self, name)}; "
                f"resume without changing it, or start a new run directory"
            )
        return _validated({**self.model_dump(), **{k: given[k] for k in RESUME_OPTIONS if k in given}})


def model_list(value: str) -> list[str]:
    """A role's --MODEL option ("a" or "a,b,c") -> its models in order, each once. The config keeps
    the string; this is the one place it is read. ValueError on an empty name ("a,,b")."""
    models = [m.strip() for m in value.split(",")]
    if not all(models):
        raise PydanticCustomError("model_list", "name one model, or several separated by commas (a,b,c)")
    return list(dict.fromkeys(models))


def run_options(options: dict) -> dict:
    """`archlab run`'s options (by option name, None where not given; --mirror already parsed to a
    list) -> the RunConfig fields they set. Paths become absolute (--data, --knowledge, a --root
    FILE) and must exist; --tier-set/--promote-set KEY=VALUE lists become override dicts."""
    fields = {OPTION_NAMES.get(name, name): name for name in RunConfig.model_fields}
    unknown = set(options) - set(fields)
    if unknown:  # a typer option without its RunConfig field (or its OPTION_NAMES entry)
        raise TypeError(f"options without a RunConfig field: {sorted(unknown)}")
    # not given: None, or an empty list of a repeatable option (--mirror none is the empty list: no mirrors)
    given = {fields[k]: v for k, v in options.items() if v is not None and (v != [] or k == "mirror")}
    if "promote_overrides" in given:
        given["promote_overrides"] = parse_overrides(
            given.get("promote_tier") or "verify", given["promote_overrides"], "--promote-set"
        )
    if "tier_overrides" in given:
        given["tier_overrides"] = parse_overrides(given.get("tier") or "smoke", given["tier_overrides"], "--tier-set")
    if "data" in given:
        given["data"] = str(Path(given["data"]).resolve())
    if "knowledge" in given:
        given["knowledge"] = [str(Path(k).resolve()) for k in given["knowledge"]]
    root = given.get("root")
    if root and Path(root).is_file():
        given["root"] = str(Path(root).resolve())
    if options.get("data") is not None and not Path(options["data"]).exists():
        raise UserError(f"--data {options['data']}: no such file or folder")
    for folder in options.get("knowledge") or []:
        if not Path(folder).exists():
            raise UserError(f"--knowledge {folder}: no such file or folder")
    return given


def parse_overrides(tier: str, items: list[str], flag: str = "--set") -> dict:
    """KEY=VALUE tier overrides (VALUE as JSON, else a string; OUTER.INNER=VALUE nests) -> a dict
    that resolves against `tier`; one line naming `flag` when it does not."""
    from archlab.sandbox.tiers import TierError, resolve

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} steps=800")
        try:
            value = loads(raw)
        except ValueError:
            value = raw
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = value
        else:
            out[key] = value
    try:
        resolve(tier, out)
    except TierError as e:
        raise UserError(f"{flag}: {e}") from None
    return out


def validation_message(e: Exception) -> str:
    """A RunConfig validation error as one line naming the command-line option: '--cpu-hours: ...'."""
    errors = getattr(e, "errors", None)
    if errors:
        first = errors()[0]
        loc = [OPTION_NAMES.get(str(part), str(part)) for part in first["loc"]]
        return f"--{'-'.join(loc).replace('_', '-')}: {first['msg']}"
    return str(e)


def _validated(fields: dict) -> RunConfig:
    try:
        return RunConfig(**fields)
    except Exception as e:
        raise UserError(validation_message(e)) from None
