"""What a candidate may import from archlab (the only part of it on the static allowlist):
values the harness publishes, read-only.

    from archlab.candidate import training_progress

    class Mixer(nn.Module):
        def forward(self, x):
            tau = 1.0 - 0.9 * training_progress()  # a temperature annealed over training
            ...

`training_progress()` is how far the harness's training of the current model has gone, as a
float in [0, 1]: 0.0 before training (and at its first step), step / steps during training
(set by the harness between optimizer steps, never inside a forward), and 1.0, frozen, once
training ends and during everything that is measured: evaluation, validation, the recall
probes' scoring, the causality and complexity checks, decoding (in a model server every
request but training sees 1.0, also the checks before training). The probe model's training
counts its own steps the same way. The value is read on every call, so what depends on it is
not state kept between calls: a twin process at the same point sees the same value.

The setter is private: only the harness (sandbox/server.py) calls it, and the static rules
reject a candidate that names it. The harness never reads the value back, so a candidate that
changed it anyway would change only its own behaviour, which every check measures as it is.
"""

_progress = 0.0


def training_progress() -> float:
    """How far training has gone: 0.0 before, step / steps during, 1.0 after and in every measurement."""
    return _progress


def _set_training_progress(value: float) -> None:
    """The harness's setter (model servers only), between optimizer steps."""
    global _progress
    _progress = min(1.0, max(0.0, float(value)))


__all__ = ["training_progress"]
