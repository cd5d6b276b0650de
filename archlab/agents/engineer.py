"""The LLM engineer: repairs a candidate the sandbox rejected, from the reason and the log."""

from archlab.agents import novelty, prompting
from archlab.agents.llm import CallFailed
from archlab.agents.parsing import FormatError, feedback, parse_answer, reask
from archlab.agents.schema import Context, Proposal, Trace


class Engineer:
    def __init__(self, client, retries: int = 2):
        self.client = client
        self.retries = retries

    def engineer(self, ctx: Context, proposal: Proposal, failure: dict | None) -> tuple[Proposal | None, list[Trace]]:
        if failure is None:  # the researcher's file already passed the format and static gates
            return proposal, [
                Trace(
                    role="engineer", response="accepted the researcher's file as it is", decision={"action": "accept"}
                )
            ]
        chat = prompting.messages(
            "engineer", motivation=proposal.motivation, code=proposal.code, failure=failure, **ctx.limits
        )
        traces = []
        # The calls are numbered across repair rounds (0-2 in the first, 3-5 in the next with 2 retries),
        # so each try is its own trace row, as the researcher's are.
        first = max(0, ctx.attempt - 1) * (self.retries + 1)
        for attempt in range(first, first + self.retries + 1):
            try:
                reply = self.client.chat("engineer", ctx.node_id, attempt, chat)
            except CallFailed as e:  # refused or unreadable: no repair this time
                traces.append(
                    Trace(role="engineer", response=str(e), decision={"action": "discard", "llm_error": True})
                )
                return None, traces
            try:
                note, code = parse_answer(reply.text, proposal.code)
                # Handing back the parent's file would record the parent again as a "repaired" child.
                if novelty.unchanged(code, ctx.parent_code):
                    raise FormatError(
                        "no_change",
                        "That is the parent's code unchanged: the proposed change is gone. "
                        "Repair the candidate while keeping its change, and send the complete file.",
                    )
            except FormatError as e:
                said = feedback(e, reply.finish_reason)
                traces.append(
                    Trace(role="engineer", response=said, decision={"format_error": e.reason, "attempt": attempt})
                )
                chat = reask(chat, reply.text, said)
                continue
            traces.append(
                Trace(role="engineer", response=note, decision={"action": "repair", "reason": failure["reason"]})
            )
            return proposal.model_copy(update={"code": code}), traces
        traces.append(Trace(role="engineer", response="no usable repair; discarding", decision={"action": "discard"}))
        return None, traces
