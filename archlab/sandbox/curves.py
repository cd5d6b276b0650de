"""Loss curves of one evaluation, collected by the scorer (trusted side) while it drives training.

Two curves, each labelled with where its numbers come from:
- `train`: the training loss per step, as the training server (server A, candidate side) reports it
  with every request for a batch. Shown, never scored: only finite numbers are kept, and a long run
  is averaged into at most MAX_TRAIN_POINTS buckets (the x of a bucket is its last step).
- `val`: the validation loss at a few evenly spaced points of training, on the first VAL_WINDOWS of
  the scored validation windows. Server A is asked for a copy of its weights with the batch of
  each of those steps and sends it before training on it (those few steps are left out of the
  throughput timing); once the scored server B has scored the final weights, it is sent each
  copy and those windows, and the scorer computes the losses from its logits. The training server
  never sees validation text. The last point is the final weights on the same windows, from the
  scored logits (checked for causality by server C like every scored row); the earlier points
  are display-only (not causality-checked).

Stored with the evaluation (store.py, column `curves`): one dict per seed.
"""

import math

MAX_TRAIN_POINTS = 250
VAL_WINDOWS = 16  # validation windows per point: a fixed subset of the scored ones


def val_steps(steps: int, points: int) -> list[int]:
    """The training steps (0 < step < steps) after which server A sends a copy of its weights:
    `points` of them evenly spaced; the final weights make the last point."""
    return sorted({round(steps * (i + 1) / (points + 1)) for i in range(points)} - {0, steps})


def finite(value) -> float | None:
    """A number that came from a server, kept only if it is a real, finite float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class Curves:
    def __init__(self, steps: int, seed: int):
        self.steps, self.seed = steps, seed
        self.bucket = max(1, math.ceil(steps / MAX_TRAIN_POINTS))
        self.train: list[list[float]] = []
        self.val: list[list] = []
        self.val_windows = 0
        self.val_note: str | None = None
        self.val_cost_s = 0.0  # scorer-measured seconds spent on the display-only points (copies and their logits)
        self._sum, self._count = 0.0, 0

    def train_loss(self, step: int, loss) -> None:
        """The training loss after `step` steps (1-based), as the training server reported it."""
        loss = finite(loss)
        if loss is not None:
            self._sum, self._count = self._sum + loss, self._count + 1
        if step % self.bucket == 0 or step == self.steps:
            if self._count:
                self.train.append([step, round(self._sum / self._count, 5)])
            self._sum, self._count = 0.0, 0

    def val_loss(self, step: int, loss: float, checked: bool) -> None:
        self.val.append([step, round(loss, 5), checked])
        self.val.sort(key=lambda p: p[0])

    def as_dict(self) -> dict:
        out = {
            "seed": self.seed,
            "steps": self.steps,
            "train": self.train,
            "val": self.val,
            "val_windows": self.val_windows,
            "val_cost_s": round(self.val_cost_s, 3),
        }
        if self.bucket > 1:
            out["train_bucket"] = self.bucket
        if self.val_note:
            out["val_note"] = self.val_note
        return out
