"""The one exception type of the sandbox, importable without torch."""


class CandidateError(Exception):
    """A candidate was rejected. `reason` is a short machine-readable word, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
