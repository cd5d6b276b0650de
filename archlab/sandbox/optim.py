"""The harness's optimizer, run by the scorer (numpy): AdamW (betas 0.9/0.95, weight decay 0.1 on
matrices), a linear warm-up then cosine decay to a tenth of the learning rate, gradients clipped to
a global norm of 1 — torch's AdamW, LambdaLR and clip_grad_norm_ as the harness once ran them in
the model server.

Why here: a model server runs in the candidate's process, where the candidate can replace any of
the harness's code; a patched optimizer (4x the learning rate) took val_loss 23% lower at micro
(red team, 2026-12-05). So the server only computes each step's gradients at the parameters it is
sent, and the parameters live here: the weights that are scored are the ones this optimizer
reached. What a server can still choose is the gradients it reports (see README: what it does not
protect against); Adam's normalisation bounds each step by about the learning rate whatever they are.
"""

import math

import numpy as np

from archlab.sandbox.errors import CandidateError

BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1  # on parameters of two or more dimensions
MAX_NORM = 1.0


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning rate of optimizer step `step` (from 0) over the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class AdamW:
    def __init__(self, params: dict[str, np.ndarray], lr: float, steps: int, warmup: int):
        self.params = {k: np.array(v, dtype=np.float32) for k, v in params.items()}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = dict.fromkeys(self.params, 0)  # per parameter, as torch: one without a gradient waits
        self.lr, self.steps, self.warmup, self.step_count = lr, max(steps, 1), warmup, 0

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """One step from the gradients of the parameters that have one (each of its shape, finite)."""
        for name, g in grads.items():
            if name not in self.params or g.shape != self.params[name].shape or g.dtype.kind != "f":
                raise CandidateError("crash", f"the server sent a gradient {name[:80]!r} of no parameter")
        grads = {k: g.astype(np.float32) for k, g in grads.items()}
        norm = math.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in grads.values()))
        if not math.isfinite(norm):
            raise CandidateError("nan", f"a gradient became non-finite at training step {self.step_count}")
        clip = np.float32(min(1.0, MAX_NORM / (norm + 1e-6)))
        lr = self.lr * lr_factor(self.step_count, self.steps, self.warmup)
        b1, b2 = BETAS
        for name, g in grads.items():
            p, m, v = self.params[name], self.m[name], self.v[name]
            g = g * clip
            self.t[name] += 1
            t = self.t[name]
            if p.ndim >= 2:
                p = p * np.float32(1 - lr * WEIGHT_DECAY)
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * g * g
            denom = np.sqrt(v) / np.float32(math.sqrt(1 - b2**t)) + np.float32(EPS)
            # a new array: the parameters of an earlier step stay as they were sent (the gradient check
            # keeps some, and copying only those would show a server which)
            self.params[name] = p - np.float32(lr / (1 - b1**t)) * m / denom
        self.step_count += 1
