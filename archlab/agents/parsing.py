"""Turning a model's chat answer into a motivation and a complete candidate file.

Accepted forms: prose plus one fenced ```python block holding the whole file (what every
capable model can produce), or prose plus SEARCH/REPLACE edit blocks against the parent.
Anything else raises FormatError with feedback the role can act on.
"""

import ast
import re

from archlab import syntax
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.static import static_check  # (not via sandbox.checks: the driver never imports torch)
from archlab.text import clip

FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
OPEN_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n", re.DOTALL)
EDIT = re.compile(r"<{5,}\s*SEARCH\s*\n(.*?)\n?={5,}\s*\n(.*?)\n?>{5,}\s*REPLACE", re.DOTALL)


# A previous answer sent back with a re-ask keeps this many characters, its start and its end:
# a model rambling to its token limit can write 60 kB, and sending all of it back could overflow
# the context (the endpoint then refuses the re-ask). Candidate files are well under this.
REASK_CHARS = 16_000
MOTIVATION_CHARS = 4_000  # "a few sentences": ASI-Arch's motivations run 1-3 kB
CODE_CHARS = 200_000  # a candidate file: ASI-Arch's largest program is ~20 kB, the templates ~8 kB
CUT_OFF = "Your answer was cut off by the token limit before it was complete: keep the prose short. "


class FormatError(ValueError):
    def __init__(self, reason: str, feedback: str):
        super().__init__(feedback)
        self.reason = reason
        self.feedback = feedback


def parse_answer(text: str, parent_code: str | None) -> tuple[str, str]:
    """(motivation, code) from an answer; raises FormatError."""
    edits = EDIT.findall(text)
    blocks = FENCE.findall(text)
    if edits and parent_code is not None:
        code = apply_edits(parent_code, edits)
        prose = EDIT.sub("", text)
    elif blocks:
        code = max(blocks, key=lambda b: ("class Mixer" in b, len(b)))
        prose = FENCE.sub("", text)
    elif OPEN_FENCE.search(text):
        raise FormatError(
            "truncated",
            "Your answer was cut off: the ```python block was never closed. Send the complete file again, shorter if needed.",
        )
    else:
        raise FormatError(
            "no_code",
            "Your answer had no code. Reply with your motivation in prose and the complete candidate file in one ```python block.",
        )
    motivation = clip(" ".join(prose.replace("```", " ").split()), MOTIVATION_CHARS)
    if len(motivation) < 10:
        raise FormatError(
            "no_motivation",
            "Explain the motivation for the change in a few sentences of prose, outside the code block.",
        )
    if len(code) > CODE_CHARS:
        raise FormatError(
            "too_long", f"The file is {len(code):,} characters; send a candidate file under {CODE_CHARS:,}."
        )
    validate_code(code)
    return motivation, code.strip() + "\n"


def feedback(error: FormatError, finish_reason: str | None) -> str:
    """What to tell the model about a rejected answer; an answer the token limit cut off says so first."""
    return CUT_OFF + error.feedback if finish_reason == "length" else error.feedback


def reask(chat: list[dict], answer: str, said: str) -> list[dict]:
    """The conversation with the rejected answer (a huge one cut to its ends) and the feedback on it."""
    if len(answer) > REASK_CHARS:
        half = REASK_CHARS // 2
        answer = f"{answer[:half]}\n[... {len(answer) - 2 * half} characters cut ...]\n{answer[-half:]}"
    return chat + [{"role": "assistant", "content": answer}, {"role": "user", "content": said}]


def apply_edits(code: str, edits: list[tuple[str, str]]) -> str:
    for search, replace in edits:
        count = code.count(search)
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise FormatError(
                "bad_edit",
                f"A SEARCH block {where} in the parent's code; copy the lines exactly, or send the whole file in a ```python block.\nSEARCH block:\n{search[:500]}",
            )
        code = code.replace(search, replace)
    return code


def validate_code(code: str) -> None:
    try:
        tree = syntax.parse(code)
    except SyntaxError as e:
        raise FormatError(
            "syntax", f"The code does not parse: line {e.lineno}: {e.msg}. Send the corrected complete file."
        ) from None
    if not any(isinstance(n, ast.ClassDef) and n.name == "Mixer" for n in tree.body):
        raise FormatError("contract", "The file must define `class Mixer(nn.Module)` at top level (that exact name).")
    try:
        static_check(code)
    except CandidateError as e:
        raise FormatError(
            e.reason, f"The sandbox would reject this code ({e.reason}): {e.detail}. Fix it and send the complete file."
        ) from None
