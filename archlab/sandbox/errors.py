"""The sandbox's exception type, its test for memory exhaustion and the one wording of a
candidate's exception as a rejection; importable without torch."""

DETAIL_LIMIT = 2000  # a rejection's detail is cut here: the error's last lines, not a whole traceback in the store


class CandidateError(Exception):
    """A candidate was rejected. `reason` is a short machine-readable word, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation, however it surfaced: MemoryError, torch's OutOfMemoryError (CUDA), or a
    RuntimeError from torch's C++ side ("can't allocate memory" on the CPU; "std::bad_alloc" from
    some builds, e.g. the CUDA wheels running on the CPU)."""
    text = str(e)
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
        or "bad_alloc" in text
    )


def rejected(e: BaseException, doing: str | None = None, reason: str = "error", memory: bool = True) -> CandidateError:
    """A candidate's exception as its rejection, worded one way everywhere: "{doing} raised {type}: {message}"
    (or "{type}: {message}" when nothing more is known of what raised it), cut at DETAIL_LIMIT. A failed
    allocation is reason "memory" ("{doing} ran out of memory: {message}") unless `memory` is False, where the
    caller's reason has always stood for every exception."""
    if memory and out_of_memory(e):
        detail = f"{doing} ran out of memory" if doing else "ran out of memory"
        return CandidateError("memory", (detail + (f": {e}" if str(e) else ""))[:DETAIL_LIMIT])
    detail = f"{type(e).__name__}: {e}"
    return CandidateError(reason, (f"{doing} raised {detail}" if doing else detail)[:DETAIL_LIMIT])
