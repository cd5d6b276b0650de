"""What the three roles exchange with the pipeline, whichever brain (offline or LLM) plays them."""

import random
from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel

from archlab.knowledge import query_for_node


class Proposal(BaseModel):
    motivation: str
    code: str | None = None
    operator: str | None = None  # the offline brain's mutation, or "llm"
    design: dict | None = None  # template genes when the code was rendered from a Design
    knowledge: list[str] = []  # ids of knowledge entries and experiences the proposal used
    failure: dict | None = None  # set when no valid proposal came out: {"reason", "detail"}


class Trace(BaseModel):
    """One decision or LLM call; stored as a row of the traces table."""

    role: str
    prompt: str = ""
    response: str = ""
    decision: dict = {}
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    latency_s: float | None = None
    error: str | None = None


@dataclass
class Context:
    """What a role may look at when it works on one candidate."""

    node_id: int
    parent: dict
    root: dict
    parent_code: str = ""
    attempt: int = 0
    limits: dict = field(default_factory=dict)  # param_limit, d_model, n_heads for the contract text; seq_len
    known: list[tuple[int, str]] = field(default_factory=list)  # (node id, motivation + diff) already tried here
    diff: Callable[[dict], str] = lambda node: ""
    references: list[dict] = field(default_factory=list)
    siblings: list[dict] = field(default_factory=list)
    history: list[dict] = field(
        default_factory=list
    )  # finished children: node, operator, fitness, parent_fitness, change, edit
    seen: Callable[[dict], bool] = lambda design: False
    seen_code: Callable[[str], bool] = lambda code: False  # the file is already a node (or claimed by one in flight)
    code: Callable[[int], str] = lambda node_id: ""  # another node's file (crossover donors)
    rng: random.Random = field(default_factory=random.Random)  # seeded per node: reproducible choices
    notes: list[str] = field(default_factory=list)  # the user's hypotheses (`archlab steer RUN note`), given once
    # Set when the parent was drawn from the quality-diversity archive to widen the search: its cell
    # and the empty cells next to it, in words, and the sets of mechanisms some node has, by name
    # ({"cell": str, "empty": [str], "held": ["delta+gating+convolution", ...]}); None otherwise.
    explore: dict | None = None

    def knowledge_query(self) -> str:
        """What is wrong with the parent, as a knowledge-base query: its weaknesses against the root
        and its analysis. Empty for the root: its analysis only says that it is the root, and
        entries retrieved by those words are arbitrary (measured: they sent the offline researcher
        to the same unhelpful operators first in most runs from the ablated root)."""
        analysis = self.parent.get("analysis") if self.parent.get("id") != 0 else None
        query = query_for_node(self.parent.get("metrics") or {}, self.root.get("metrics"), analysis)
        return " ".join([*self.notes, query]).strip()  # a user's note says what to look for first
