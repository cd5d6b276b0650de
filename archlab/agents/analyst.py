"""The LLM analyst: explains a result against parent, siblings and root; the text becomes experience."""

from archlab.agents import prompting
from archlab.agents.llm import CallFailed
from archlab.agents.schema import Context, Trace
from archlab.text import clip

ANALYSIS_CHARS = 8_000  # it is quoted in later prompts: a few paragraphs, not a model's whole ramble


class Analyst:
    def __init__(self, client):
        self.client = client

    def analyse(self, ctx: Context, node: dict, result: dict) -> tuple[str, list[Trace]]:
        chat = prompting.messages(
            "analyst",
            node=node,
            parent=ctx.parent,
            root=ctx.root,
            siblings=ctx.siblings,
            result=result,
            diff=ctx.diff(node),
        )
        try:
            reply = self.client.chat("analyst", ctx.node_id, ctx.attempt, chat)
        except CallFailed as e:  # the node keeps its result; it only goes without an analysis
            return f"(no analysis: {e})", []
        text = clip(" ".join(reply.text.split()), ANALYSIS_CHARS) or "(the analyst returned nothing)"
        return text, []
