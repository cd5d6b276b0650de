"""The optional LLM judge (off by default): scores novelty and complexity, as ASI-Arch does.

Its score enters the fitness as weight * (novelty - complexity) / 10. Its calls are traces like
any other; an answer that is not the asked-for JSON scores nothing rather than stopping the run.
"""

import re

from archlab.agents import prompting
from archlab.agents.llm import CallFailed
from archlab.agents.schema import Context
from archlab.text import loads

JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class Judge:
    def __init__(self, client):
        self.client = client

    def score(self, ctx: Context, node: dict) -> dict | None:
        chat = prompting.messages("judge", node=node, diff=ctx.diff(node))
        try:
            reply = self.client.chat("judge", ctx.node_id, ctx.attempt, chat)
        except CallFailed:
            return None
        match = JSON_OBJECT.search(reply.text)
        try:
            scores = loads(match.group(0)) if match else {}
            novelty, complexity = float(scores["novelty"]), float(scores["complexity"])
        except (ValueError, KeyError, TypeError):
            return None
        clamp = lambda v: min(10.0, max(0.0, v))  # noqa: E731
        return {"judge_novelty": clamp(novelty), "judge_complexity": clamp(complexity)}
