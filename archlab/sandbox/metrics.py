"""Measurements a model server takes of its own candidate: FLOPs and memory traffic of one
forward at several lengths, whether torch.compile takes the mixer whole. These are the only
figures a candidate process reports about itself: counted growth can name a part quadratic, but
only the scorer's clock can clear it (scorer.complexity); the compile flag is taken at its word
(README). The scorer times training, decoding and the parts from outside and checks every output
it is given."""

import math

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from archlab.sandbox.errors import CandidateError
from archlab.sandbox.model import autocast, guard

REAL_COMPILE = torch.compile  # the harness's own, kept before a server makes the candidate's eager (server.set_compile)


class Traffic(TorchDispatchMode):
    """Counts the elements every non-view aten operation reads and writes."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            for leaf in tree_leaves((args, kwargs, out)):
                if isinstance(leaf, torch.Tensor):
                    self.elements += leaf.numel()
            if "attention" in str(func) and len(args) >= 2 and isinstance(args[1], torch.Tensor) and args[1].dim() >= 2:
                self.elements += math.prod(args[0].shape[:-1]) * args[1].shape[-2]  # the fused kernel's score matrix
        return out


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, length, dk = query_shape
    return 2 * math.prod(batch) * length * key_shape[-2] * (dk + value_shape[-1])


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter plus the formula it lacks (the CPU flash-attention kernel)."""
    ops = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=ops)


def cost(part: nn.Module, lengths: list[int], d_model: int, device: torch.device) -> list[dict]:
    """FLOPs and elements moved by one forward (batch 1) at each length. Time is the scorer's to take."""
    part = part.to(device).eval()
    out = []
    with torch.no_grad():
        for t in lengths:
            x = torch.randn(1, t, d_model, device=device)
            with flop_counter() as counter, Traffic() as moved:
                guard(lambda: part(x))
            out.append({"length": t, "flops": counter.get_total_flops(), "traffic": moved.elements})
    return out


def forward_flops(model: nn.Module, tokens: torch.Tensor, device: torch.device) -> int:
    with torch.no_grad(), autocast(device), flop_counter() as counter:
        guard(lambda: model(tokens))
    return counter.get_total_flops()


def compile_metrics(mixer: nn.Module, seq_len: int, d_model: int, device: torch.device) -> dict:
    """Whether torch.compile takes the mixer whole (fullgraph): a graph break (.item(), data-
    dependent Python control flow, an unsupported call) or an error is a compile failure. On CUDA
    the real compile (inductor + triton), its output checked against eager; on the CPU TorchDynamo's
    graph capture only, because inductor's C++ build takes ~40 s per model there."""
    x = torch.randn(1, min(seq_len, 64), d_model, device=device)
    torch._dynamo.reset()
    try:
        if device.type == "cuda":
            with autocast(device):
                eager, compiled = mixer(x).float(), REAL_COMPILE(mixer, fullgraph=True)(x).float()
            if not torch.allclose(compiled, eager, rtol=5e-2, atol=5e-2):
                return {"compile_ok": False, "compile_error": "the compiled mixer's output differs from eager"}
            return {"compile_ok": True}
        explanation = torch._dynamo.explain(mixer)(x)
        breaks = explanation.graph_break_count
        if breaks:
            return {
                "compile_ok": False,
                "compile_graph_breaks": breaks,
                "compile_error": f"graph break: {explanation.break_reasons[0].reason}"[:300],
            }
        return {"compile_ok": True, "compile_graph_breaks": 0}
    except CandidateError:
        raise
    except Exception as e:  # failing to compile is a metric (a fitness penalty), not a rejection
        return {"compile_ok": False, "compile_error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        torch._dynamo.reset()


def flat_state(state, prefix: str = "s") -> dict[str, torch.Tensor]:
    """A recurrent state as named tensors, to send whole. A state is tensors (or None) in lists,
    tuples and dicts, nothing else: anything the scorer could not count is a rejection."""
    if state is None:
        return {}
    if type(state) is torch.Tensor:  # noqa: E721  (a subclass could hide what it holds)
        return {prefix: state}
    if type(state) in (list, tuple):
        items = enumerate(state)
    elif type(state) is dict:  # noqa: E721
        items = state.items()
    else:
        raise CandidateError(
            "step",
            f"the decoding state holds a {type(state).__name__}: a state must be tensors in lists, tuples and dicts",
        )
    out = {}
    for key, value in items:
        out.update(flat_state(value, f"{prefix}.{key}"))
    return out


def state_skeleton(state, prefix: str = "s"):
    """How flat_state's tensors fit together (JSON: a tensor is its name, a list, tuple or dict is
    {"list"|"tuple"|"dict": items}), so that another server can rebuild the state from them."""
    if state is None or type(state) is torch.Tensor:  # noqa: E721  (flat_state has refused anything else)
        return None if state is None else prefix
    if type(state) is dict:  # noqa: E721
        if not all(type(k) in (str, int) for k in state):
            raise CandidateError("step", "the decoding state's dict keys must be str or int")
        return {"dict": [[k, state_skeleton(v, f"{prefix}.{k}")] for k, v in state.items()]}
    return {type(state).__name__: [state_skeleton(v, f"{prefix}.{i}") for i, v in enumerate(state)]}


def restore_state(skeleton, tensors: dict, device: torch.device):
    """The state a skeleton describes, from tensors sent by name (what state_skeleton undoes)."""
    if skeleton is None:
        return None
    if isinstance(skeleton, str):
        return tensors[skeleton].to(device)
    (kind, items), *rest = skeleton.items()
    if rest or kind not in ("list", "tuple", "dict"):
        raise CandidateError("step", "a decoding state to resume is not one this server can rebuild")
    if kind == "dict":
        return {k: restore_state(v, tensors, device) for k, v in items}
    values = [restore_state(v, tensors, device) for v in items]
    return values if kind == "list" else tuple(values)
