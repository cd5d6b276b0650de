"""The sandbox's exception type and its test for memory exhaustion, importable without torch."""


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
