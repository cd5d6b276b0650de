"""The LLM engineer: repairs a candidate the sandbox rejected, from the reason and the log."""

from archlab.agents import prompting
from archlab.agents.parsing import FormatError, parse_answer
from archlab.agents.roles import Context, Proposal, Trace


class Engineer:
    def __init__(self, client, retries: int = 2):
        self.client = client
        self.retries = retries

    def engineer(self, ctx: Context, proposal: Proposal, failure: dict | None) -> tuple[Proposal | None, list[Trace]]:
        if failure is None:  # the researcher's file already passed the format and static gates
            return proposal, [Trace(role="engineer", response="accepted the researcher's file as it is", decision={"action": "accept"})]
        chat = prompting.messages("engineer", motivation=proposal.motivation, code=proposal.code, failure=failure, **ctx.limits)
        traces = []
        for _ in range(self.retries + 1):
            reply = self.client.chat("engineer", ctx.node_id, ctx.attempt, chat)
            try:
                note, code = parse_answer(reply.text, proposal.code)
            except FormatError as e:
                traces.append(Trace(role="engineer", response=e.feedback, decision={"format_error": e.reason}))
                chat = chat + [{"role": "assistant", "content": reply.text}, {"role": "user", "content": e.feedback}]
                continue
            traces.append(Trace(role="engineer", response=note, decision={"action": "repair", "reason": failure["reason"]}))
            return proposal.model_copy(update={"code": code}), traces
        traces.append(Trace(role="engineer", response="no usable repair; discarding", decision={"action": "discard"}))
        return None, traces
