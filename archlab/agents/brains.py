"""Building the brain a run asks for: the offline one, or the three LLM roles on one client."""

from pathlib import Path

from archlab.agents.analyst import Analyst
from archlab.agents.engineer import Engineer
from archlab.agents.judge import Judge
from archlab.agents.llm import LLMClient, preflight
from archlab.agents.offline import CODE, OfflineBrain
from archlab.agents.researcher import Researcher
from archlab.agents.router import Router
from archlab.agents.schema import Context, Proposal, Trace
from archlab.config import RunConfig, model_list
from archlab.errors import UserError
from archlab.knowledge import KnowledgeError, KnowledgeIndex, load_entries
from archlab.knowledge.lessons import Lesson

# Honest baselines for benchmarks: their parent selection is blind to the tree's lessons, and so
# are their mutations (the offline brain draws operators uniformly instead of by bandit + knowledge).
BASELINE_STRATEGIES = ("evolution", "random")


class LLMBrain:
    """The three LLM roles behind the interface the pipeline expects; with --code-edits a share of
    the proposals comes from the offline brain's code operators (cheap local refinements)."""

    kind = "llm"

    def __init__(self, client: LLMClient, knowledge: KnowledgeIndex, config: RunConfig, lessons: list[Lesson] = ()):
        self.client = client
        self.knowledge = knowledge
        self.researcher = Researcher(client, knowledge, config.format_retries)
        self.engineer_role = Engineer(client, config.format_retries)
        self.analyse = Analyst(client).analyse
        self.judge = Judge(client) if config.judge_weight > 0 else None
        self.code_edits = config.code_edits
        self.offline = OfflineBrain(knowledge, lessons=lessons)

    def research(self, ctx: Context) -> tuple[Proposal | None, list[Trace]]:
        if self.code_edits and ctx.rng.random() < self.code_edits:
            proposal, traces = self.offline.research_code(ctx)
            if proposal is not None:
                return proposal, traces
        return self.researcher.research(ctx)

    def settle(self) -> None:
        """A node was recorded: the router writes the reward of its choices (a no-op without one)."""
        if self.client.router is not None:
            self.client.router.settle()

    def engineer(self, ctx: Context, proposal: Proposal, failure: dict | None) -> tuple[Proposal | None, list[Trace]]:
        if (proposal.operator or "").startswith(CODE):
            return self.offline.engineer(ctx, proposal, failure)
        return self.engineer_role.engineer(ctx, proposal, failure)


def check_brain_options(config: RunConfig) -> None:
    """Refuse a bad --llm or --knowledge, and an endpoint that cannot be used, before a run directory
    is created or a root trains: once its config is frozen into archlab.toml, no resume could ever
    start it, and a missing key found after the root has trained costs minutes."""
    if _model(config) is not None:
        preflight(config.base_url, config.api_key_env)
    _knowledge(config, [], embeddings=False)  # parses every entry; the search index itself is built later


def _model(config: RunConfig) -> str | None:
    if config.llm == "offline":
        return None
    provider, _, model = config.llm.partition(":")
    if provider != "openai" or not model.strip():
        raise UserError(
            f"--llm {config.llm!r}: use 'offline' or 'openai:MODEL' (any OpenAI-compatible endpoint, with --base-url)"
        )
    return model


def _knowledge(
    config: RunConfig,
    experiences: list[tuple[str, str]],
    embeddings: bool | None = None,
    lessons: list[Lesson] = (),
) -> KnowledgeIndex:
    """The curated entries, the --knowledge folders' and the learned ones, beside the run's experience."""
    try:
        entries = load_entries([Path(k) for k in config.knowledge]) + [lesson.entry() for lesson in lessons]
        return KnowledgeIndex(entries, experiences, embeddings=embeddings)
    except KnowledgeError as e:
        raise UserError(str(e)) from None


def role_models(config: RunConfig, model: str) -> dict[str, list[str]]:
    """Each LLM role's models (the --llm model unless its option names one or several); the judge
    shares the analyst's."""
    given = {
        "researcher": config.researcher_model,
        "engineer": config.engineer_model,
        "analyst": config.analyst_model,
        "judge": config.analyst_model,
    }
    return {role: model_list(value) if value else [model] for role, value in given.items()}


def make_brain(config: RunConfig, store, experiences: list[tuple[str, str]], on_wait=None, lessons: list[Lesson] = ()):
    """`lessons`: earlier runs' (archlab/search/lessons.py), retrieved as knowledge and, offline, the
    researcher's priors."""
    knowledge = _knowledge(config, experiences, lessons=lessons)
    model = _model(config)
    if model is None:
        return OfflineBrain(knowledge, guided=config.strategy not in BASELINE_STRATEGIES, lessons=lessons)
    arms = role_models(config, model)
    client = LLMClient(
        store,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        models={role: models[0] for role, models in arms.items()},
        router=Router(store, arms, config.draws_seed) if any(len(m) > 1 for m in arms.values()) else None,
        prices=config.prices,
        timeout_s=config.llm_timeout_s,
        patience_s=config.llm_patience_s,
        max_cost=config.max_cost,
        max_tokens=config.max_tokens,
        on_wait=on_wait,
    )
    return LLMBrain(client, knowledge, config, lessons)
