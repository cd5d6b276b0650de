"""Training inside a model server: the gradients of each batch at the parameters the scorer sends
with it (the scorer runs the optimizer: optim.py). The batches come from the scorer, one per step
(the server never holds a data file)."""

import torch
import torch.nn as nn

from archlab.sandbox.errors import CandidateError
from archlab.sandbox.model import LM, autocast, guard, lm_loss


def parameters(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """The parameters a training step computes gradients for, each with every name it has in the
    state dict (a tensor shared by two modules has two; the scorer writes its value under both)."""
    groups: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            groups.setdefault(id(p), ([], p))[0].append(name)
    return list(groups.values())


def gradients(
    model: LM, inputs: torch.Tensor, targets: torch.Tensor, seed: int, device: torch.device, what: str
) -> float:
    """The loss of one batch and its gradients in the model's parameters (the scorer runs the
    optimizer: optim.py), each part's randomness drawn from `seed` (model.Block); returns the loss
    (reading it synchronizes)."""
    with autocast(device):
        loss = guard(lambda: lm_loss(model, inputs, targets, seed))
    if not torch.isfinite(loss):
        raise CandidateError("nan", f"{what} became {loss.item()}")
    model.zero_grad(set_to_none=True)
    guard(loss.backward)
    return loss.item()
