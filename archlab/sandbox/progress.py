"""An evaluation's progress, for whoever watches it: written by the scorer (archlab's code, outside
the sandbox) beside the evaluation's log, read by `archlab run`'s display and the web UI.

One small JSON file, replaced whole (a reader never sees half of it): the stage, the training step,
the seconds spent and the evaluation's time limit, and the training loss the model server last
reported. That loss comes from inside the sandbox, so it is shown, never scored; it is kept only if
it is a finite number. The file is removed when the evaluation ends.
"""

import json
import math
import os
import time
from pathlib import Path

SUFFIX = ".progress"
MIN_INTERVAL_S = 0.5  # between writes within a stage (a step can take milliseconds)


class Progress:
    def __init__(self, log: Path, limit_s: float):
        self.path = Path(f"{log}{SUFFIX}")
        self.limit_s = limit_s
        self.started = time.monotonic()
        self.state: dict = {}
        self.written = 0.0

    def __call__(self, stage: str | None = None, **fields) -> None:
        """A new stage (written at once), or fields of the current one (written at most every MIN_INTERVAL_S)."""
        if stage is not None:
            self.state = {"stage": stage}
        if "loss" in fields:
            loss = fields["loss"]
            fields["loss"] = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else None
        self.state.update(fields)
        now = time.monotonic()
        if stage is None and now - self.written < MIN_INTERVAL_S:
            return
        self.written = now
        data = {
            **self.state,
            "elapsed_s": round(now - self.started, 1),
            "limit_s": self.limit_s,
            "updated": time.time(),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:  # a full disk loses the display, nothing else
            pass

    def end(self) -> None:
        self.path.unlink(missing_ok=True)


def read(log: Path) -> dict | None:
    """The progress of the evaluation writing `log`, or None (not started, or over)."""
    try:
        data = json.loads(Path(f"{log}{SUFFIX}").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
