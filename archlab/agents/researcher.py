"""The LLM researcher: reads the parent, references, knowledge and experience; proposes a change."""

from archlab.agents import novelty, prompting
from archlab.agents.llm import CallFailed
from archlab.agents.parsing import FormatError, feedback, parse_answer, reask
from archlab.agents.schema import Context, Proposal, Trace
from archlab.knowledge import KnowledgeIndex


class Researcher:
    def __init__(self, client, knowledge: KnowledgeIndex, retries: int = 2, novelty_threshold: float = 0.92):
        self.client = client
        self.knowledge = knowledge
        self.retries = retries
        self.novelty_threshold = novelty_threshold

    def research(self, ctx: Context) -> tuple[Proposal, list[Trace]]:
        query = ctx.knowledge_query()
        entries = [self.knowledge.entry(h.id) for h in self.knowledge.search(query, k=3, kind="entry")]
        experiences = self.knowledge.search(query, k=3, kind="experience")
        used = [e.id for e in entries] + [x.id for x in experiences]
        chat = prompting.messages(
            "researcher",
            parent=ctx.parent,
            root=ctx.root,
            parent_code=ctx.parent_code,
            references=ctx.references,
            siblings=ctx.siblings,
            entries=entries,
            experiences=experiences,
            notes=ctx.notes,
            explore=ctx.explore,
            **ctx.limits,
        )
        traces = [
            Trace(
                role="researcher",
                response="retrieved knowledge for the prompt",
                decision={"query": query, "knowledge": used},
            )
        ]
        error = None
        for attempt in range(self.retries + 1):
            try:
                reply = self.client.chat("researcher", ctx.node_id, attempt, chat)
            except CallFailed as e:  # refused or unreadable: this candidate fails, the run goes on
                return Proposal(
                    motivation=f"(no proposal: {e})",
                    operator="llm",
                    knowledge=used,
                    failure={"reason": "malformed", "detail": f"llm_error: {e}"},
                ), traces
            try:
                motivation, code = parse_answer(reply.text, ctx.parent_code)
                if ctx.seen_code(code):  # the same file with other words: a similarity of prose may miss it
                    raise FormatError("not_novel", "This exact file is already in the tree: propose another change.")
                similar = novelty.too_similar(motivation, code, ctx.parent_code, ctx.known, self.novelty_threshold)
                if similar is not None:
                    raise FormatError(
                        "not_novel",
                        f"This is too close to node {similar[0]} (similarity {similar[1]:.2f}): "
                        f"propose a substantially different change.",
                    )
                return Proposal(motivation=motivation, code=code, operator="llm", knowledge=used), traces
            except FormatError as e:
                error = e
                said = feedback(e, reply.finish_reason)
                traces.append(
                    Trace(role="researcher", response=said, decision={"format_error": e.reason, "attempt": attempt})
                )
                chat = reask(chat, reply.text, said)
        return Proposal(
            motivation=f"(no valid proposal: {error.feedback})",
            operator="llm",
            knowledge=used,
            failure={"reason": "malformed", "detail": f"{error.reason}: {error.feedback}"},
        ), traces
