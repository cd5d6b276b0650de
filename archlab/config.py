"""RunConfig: one typed object per run, frozen into runs/NAME/archlab.toml when the run starts."""

import tomllib
from pathlib import Path
from typing import Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from archlab.errors import UserError

CONFIG_FILE = "archlab.toml"


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field("deltanet", description="built-in root name or path of a candidate file")
    llm: str = Field("offline", description="'offline' (embedded brain) or PROVIDER:MODEL")
    strategy: Literal["asi", "ucb", "evolution", "random"] = "asi"
    tier: Literal["micro", "smoke", "explore", "verify"] = "smoke"
    max_nodes: int = Field(12, ge=1, description="stop after this many nodes (the root included)")
    hours: float | None = Field(None, gt=0, description="stop after this many hours of wall time")
    seed: int = 0
    data: str | None = Field(None, description="text file or folder; None = the built-in corpus")
    param_ratio: float = Field(1.2, gt=0, description="mixer parameter budget relative to the root")
    speed_weight: float = Field(0.05, ge=0, description="fitness penalty per unit of log slowdown vs the root")
    workers: int = Field(1, ge=1, description="candidates evaluated at once (each in its own sandbox)")
    threads: int | None = Field(None, ge=1, description="CPU threads per evaluation (default: all, up to 4)")
    knowledge: list[str] = Field([], description="folders of the user's own knowledge entries")
    repair_attempts: int = Field(2, ge=0, description="engineer repairs per failed candidate")
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
    novelty_threshold: float = Field(0.92, gt=0, le=1, description="reject proposals this similar to a sibling")

    @classmethod
    def load(cls, run_dir: Path) -> "RunConfig":
        path = run_dir / CONFIG_FILE
        try:
            return cls.model_validate(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{run_dir} is not an archlab run (no {CONFIG_FILE})") from None
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
