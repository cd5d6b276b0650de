"""Checks that are code, not opinion: static AST rules (static.py), runtime causality,
complexity, step() agreement and the parameter budget."""

import math
import sys
import time
import types
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from archlab.sandbox import contract
from archlab.sandbox.errors import CandidateError, out_of_memory

# A growth exponent of FLOPs (or time) with sequence length above these is "super-linear".
FLOP_EXPONENT_LIMIT = 1.25
TIME_EXPONENT_LIMIT = 1.75  # time is noisy on a shared machine: only clear growth, measured twice, counts


# -- traversal that a candidate cannot redirect ------------------------------------------------
def iter_modules(module: nn.Module, prefix: str = ""):
    """(name, module) for the module and all submodules, read from the instances' own __dict__,
    so a candidate overriding named_modules()/parameters() cannot hide anything."""
    seen, stack = set(), [(prefix, module)]
    while stack:
        name, m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield name, m
        children = vars(m).get("_modules", {})
        for key, child in reversed(list(children.items())):
            if child is not None:
                stack.append((f"{name}.{key}" if name else key, child))


def iter_parameters(module: nn.Module):
    seen = set()
    for _, m in iter_modules(module):
        for p in vars(m).get("_parameters", {}).values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                yield p


def iter_buffers(module: nn.Module, persistent_only: bool = True):
    seen = set()
    for _, m in iter_modules(module):
        skip = vars(m).get("_non_persistent_buffers_set", set()) if persistent_only else set()
        for key, b in vars(m).get("_buffers", {}).items():
            if b is not None and key not in skip and id(b) not in seen:
                seen.add(id(b))
                yield b


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in iter_parameters(module))


def stored_numbers(module: nn.Module) -> int:
    """Every number a module carries from training to evaluation: parameters, persistent buffers
    (a learned table kept in a buffer is still capacity) and the tensors of its extra state
    (get_extra_state: weights trained by hand and smuggled past the parameter count)."""
    n = count_params(module) + sum(b.numel() for b in iter_buffers(module))
    for _, m in iter_modules(module):
        if type(m).get_extra_state is not nn.Module.get_extra_state:
            n += sum(t.numel() for t in tree_leaves(m.get_extra_state()) if isinstance(t, torch.Tensor))
    return n


def check_params(mixer: nn.Module, limit: int | None, *, ffn: nn.Module | None = None, ffn_baseline: int = 0) -> int:
    """The parameters the candidate adds, checked against the budget: the mixer's, plus what its
    own FFN (if any) stores beyond the harness MLP's `ffn_baseline` (swapping the MLP for one of
    the same size is free; a bigger one pays from the mixer's budget). Returns the mixer's
    parameter count plus that FFN excess (reported as mixer_params, so budgets derived from a
    root with its own FFN carry over)."""
    for part in (mixer, ffn):
        for p in iter_parameters(part) if part is not None else ():
            if type(p) is not nn.Parameter:  # noqa: E721
                raise CandidateError("contract", f"parameters must be plain nn.Parameter, got {type(p).__name__}")
    n = count_params(mixer)
    hidden = stored_numbers(mixer) - n
    ffn_extra = max(0, stored_numbers(ffn) - ffn_baseline) if ffn is not None else 0
    if limit is not None and n + hidden + ffn_extra > limit:
        extra = f" (+{hidden:,} in buffers or extra state)" if hidden else ""
        extra += f" (+{ffn_extra:,} in the FFN beyond the harness MLP's {ffn_baseline:,})" if ffn_extra else ""
        raise CandidateError("params", f"{n:,} mixer parameters{extra}, over the run's budget of {limit:,}")
    return n + ffn_extra


# -- state two twins could share ---------------------------------------------------------------
class SharedState:
    """The public containers of every loaded module (dicts, lists, sets and tuples bound to
    module-level names, and every container inside them), by identity and contents. Twins share
    nothing of the candidate's own, but both can reach these (`torch.linalg.common_notes` is a
    dict): a pass that wrote its outputs into one, or into an object it planted there, could hand
    them to its twin. The worker takes the baseline before the candidate's file first runs
    (start), and every comparison verifies it before its second pass: candidate code never
    changes them."""

    VOLATILE = ("sys", "linecache")  # changed by imports and tracebacks: skipped, and their containers wherever bound
    SKIP = VOLATILE + ("__main__", "__mp_main__", "archlab")  # and archlab's own modules
    _baseline: "SharedState | None" = None

    @classmethod
    def start(cls) -> "SharedState":
        """The sandbox process's baseline, taken before the candidate's code first runs."""
        cls._baseline = cls()
        return cls._baseline

    @classmethod
    def current(cls) -> "SharedState":
        """The baseline in a sandbox process; elsewhere (the checks called directly) a snapshot of now."""
        return cls._baseline or cls()

    def __init__(self):
        self.before = self._snapshot()

    def verify(self) -> None:
        now = self._snapshot()
        changed = next((key for key, digest in self.before.items() if now.get(key, digest) != digest), None)
        if changed is not None:
            raise CandidateError("tamper", f"{changed[0]}.{changed[1]} changed while the candidate ran: a part must not "
                                 "keep state in modules it imports")

    def _snapshot(self) -> dict:
        out = {}
        volatile = [sys.modules[name] for name in self.VOLATILE if name in sys.modules]
        seen = {id(value) for module in volatile for value in vars(module).values()
                if issubclass(type(value), CONTAINERS)}  # triton.language.extra.modules is sys.modules
        for name, module in list(sys.modules.items()):
            parts = name.split(".")
            if (not isinstance(module, types.ModuleType) or parts[0] in self.SKIP or module in contract._SOURCES
                    or any(p.startswith("_") for p in parts)):  # private modules: out of a candidate's reach (static.py)
                continue
            for key, value in list(vars(module).items()):
                if not key.startswith("_") and issubclass(type(value), CONTAINERS) and id(value) not in seen:
                    out[(name, key)] = _digest(value, seen)
        return out


CONTAINERS = (dict, list, set, tuple)


def _digest(value, seen: set) -> int:
    """A hash of a container's identity and contents, recursively (each container once: `seen`).
    The base types' own methods read the contents, so a subclass's overrides (candidate code)
    never run and cannot hide what it holds."""
    seen.add(id(value))
    kind = type(value)
    if issubclass(kind, dict):
        flat = [x for pair in list(dict.items(value)) for x in pair]
    elif issubclass(kind, list):
        flat = list.copy(value)
    elif issubclass(kind, set):
        flat = list(set.copy(value))
    else:
        flat = tuple.__getitem__(value, slice(None))
    ids = frozenset(map(id, flat)) if issubclass(kind, set) else tuple(map(id, flat))
    inner = tuple(_digest(x, seen) for x in flat if issubclass(type(x), CONTAINERS) and id(x) not in seen)
    return hash((id(value), len(flat), ids, inner))


# -- causality ---------------------------------------------------------------------------------
CUTS = (0, 1, 15, 16, 31, 63, 64, 65)  # inside and across the usual chunk sizes


def check_causality(make: Callable[[], nn.Module], d_model: int, length: int = 150, *, seq_len: int | None = None,
                    seeds: tuple[int, ...] = (0, 1, 2), device: torch.device | None = None, part: str = "Mixer") -> None:
    """Perturb every position after a cut and require the outputs up to the cut to stay put.

    `make` builds identical instances of the part (contract.twins); every comparison runs its
    original and perturbed passes on two fresh ones, so a part that caches earlier calls cannot
    make the two agree by replaying one in the other. float64 when the part allows it
    (numerical noise ~1e-15: a leak of 1e-9 relative is caught), else float32 with a 1e-5
    threshold. Training and evaluation mode, several seeds and cut points (at and around chunk
    boundaries, the middle, the end), batch 2; then once more in float32 at the training length
    with gradients enabled and batch 3, so a leak that only shows in those conditions is caught
    too. The model-level recheck in the evaluation process repeats this on the trained model
    and real text.
    """
    device = device or torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is as fast, and far steadier on a busy machine
    try:
        dtype = _widest_dtype(make, d_model, device)
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
        cuts = sorted({c for c in CUTS if c < length - 1} | {length // 2 + 7, length - 2})
        for i, seed in enumerate(seeds):  # the last seed in evaluation mode, the others in training mode
            _perturb(make, d_model, length, 2, cuts, seed, dtype, tolerance, i < len(seeds) - 1, grad=False,
                     device=device, part=part)
        if seq_len and seq_len != length:
            _perturb(make, d_model, seq_len, 3, [seq_len // 3, seq_len - 2], 7, torch.float32, 1e-5, True, grad=True,
                     device=device, part=part)
    finally:
        torch.set_num_threads(threads)


def _widest_dtype(make: Callable[[], nn.Module], d_model: int, device: torch.device) -> torch.dtype:
    """float64 when the part runs in it (its checks are then ~1e6 times more sensitive), else float32."""
    try:
        with torch.no_grad():
            make().to(device=device, dtype=torch.float64)(torch.zeros(1, 4, d_model, dtype=torch.float64, device=device))
        return torch.float64
    except Exception:
        return torch.float32


def _perturb(make, d_model, length, batch, cuts, seed, dtype, tolerance, training, *, grad, device, part) -> None:
    """One forward of the original batch, repeated once per cut, and one of every cut's perturbed
    copy stacked the same way (so a part that mixes information across the batch is caught, and
    dropout draws the same mask for a row and its copy), on twin instances."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d_model, dtype=dtype, generator=gen)
    copies = []
    for cut in cuts:
        x2 = x.clone()
        x2[:, cut + 1 :] = torch.randn(batch, length - cut - 1, d_model, dtype=dtype, generator=gen)
        copies.append(x2)
    x, x2 = x.repeat(len(cuts), 1, 1).to(device), torch.cat(copies).to(device)
    first, second = (make().to(device=device, dtype=dtype).train(training) for _ in range(2))
    with torch.set_grad_enabled(grad):
        torch.manual_seed(seed)  # the same dropout masks for both passes, as far as the part allows
        shared = SharedState.current()
        y = _call(first, x.requires_grad_(grad), part).detach()
        shared.verify()
        torch.manual_seed(seed)
        y2 = _call(second, x2.requires_grad_(grad), part).detach()
    for i, cut in enumerate(cuts):
        a, b = y[i * batch : (i + 1) * batch, : cut + 1], y2[i * batch : (i + 1) * batch, : cut + 1]
        leak = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
        if not leak <= tolerance:  # also catches NaN
            raise CandidateError(
                "non_causal",
                f"{part} outputs at positions <= {cut} changed by {leak:.1e} (relative, {str(dtype).replace('torch.', '')}, "
                f"{'train' if training else 'eval'} mode, length {length}) when only later positions changed",
            )


def _call(module: nn.Module, x: torch.Tensor, part: str = "Mixer") -> torch.Tensor:
    try:
        y = module(x)
    except CandidateError:
        raise
    except Exception as e:
        if out_of_memory(e):
            raise CandidateError("memory", f"{part}.forward ran out of memory: {e}"[:600]) from None
        raise CandidateError("error", f"{part}.forward raised {type(e).__name__}: {e}"[:1500]) from e
    if type(y) is not torch.Tensor or y.shape != x.shape:  # noqa: E721
        raise CandidateError("shape", f"input {tuple(x.shape)} gave {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    return y


# -- complexity --------------------------------------------------------------------------------
def check_complexity(candidate: types.ModuleType, tier, *, allow_quadratic: bool = False,
                     device: torch.device | None = None) -> dict:
    """Cost of one forward at two sequence lengths, three ways: FLOPs of matmul-class operations
    (torch.utils.flop_counter), elements read and written by every non-view operation (catches
    quadratic work the FLOP counter does not see, e.g. a T x T elementwise product), and wall
    time (single-threaded, best of several runs; a time-only verdict is measured twice). The
    growth exponents of the mixer, and of the candidate's FFN if it has one, must stay near 1
    unless quadratic mixers are allowed. Softmax attention belongs in LAYERS (the harness's own
    attention), not in the mixer or the FFN."""
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    exponents, per_token = _growth(contract.build_mixer(candidate, tier.d_model, tier.n_heads), "Mixer", tier, device)
    metrics = {"flops_exponent": exponents[0], "traffic_exponent": exponents[1], "time_exponent": exponents[2],
               "mixer_flops_per_token": per_token[0], "mixer_ms_per_token": per_token[1]}
    verdicts = [("Mixer", exponents)]
    ffn = contract.build_ffn(candidate, tier.d_model)
    if ffn is not None:
        ffn_exponents, (metrics["ffn_flops_per_token"], metrics["ffn_ms_per_token"]) = _growth(ffn, "FFN", tier, device)
        verdicts.append(("FFN", ffn_exponents))
    short, long = tier.complexity_lengths
    quadratic = [(part, e) for part, e in verdicts if max(e[0], e[1]) > FLOP_EXPONENT_LIMIT or e[2] > TIME_EXPONENT_LIMIT]
    metrics["complexity"] = "superlinear" if quadratic else "linear"
    if quadratic and not allow_quadratic:
        part, (exp_flops, exp_traffic, exp_time) = quadratic[0]
        raise CandidateError(
            "quadratic",
            f"one {part} forward grows like T^{exp_flops:.2f} in FLOPs, T^{exp_traffic:.2f} in memory traffic and "
            f"T^{exp_time:.2f} in time from T={short} to T={long}; the run only accepts (near-)linear mixers and FFNs "
            "(put softmax attention in LAYERS: the harness's own attention)",
        )
    return metrics


def _growth(part: nn.Module, name: str, tier, device: torch.device) -> tuple[tuple[float, float, float], tuple[float, float]]:
    """(FLOP, traffic and time growth exponents), (FLOPs and milliseconds per token at the longer length)."""
    short, long = tier.complexity_lengths
    part = part.to(device).eval()
    flops, traffic, times = {}, {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # timings of small ops are far less noisy on one thread
    try:
        with torch.no_grad():
            for t in (short, long):
                x = torch.randn(1, t, tier.d_model, device=device)
                with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter, _Traffic() as moved:
                    _call(part, x, name)
                flops[t], traffic[t] = counter.get_total_flops(), moved.elements
                times[t] = _best_time(part, x, device, 5, name)
            exp_time = _exponent(times[short], times[long], short, long)
            if exp_time > TIME_EXPONENT_LIMIT:  # timing noise on a busy machine? measure again
                again = {t: _best_time(part, torch.randn(1, t, tier.d_model, device=device), device, 7, name)
                         for t in (short, long)}
                exp_time = min(exp_time, _exponent(again[short], again[long], short, long))
    finally:
        torch.set_num_threads(threads)
    exponents = (_exponent(flops[short], flops[long], short, long), _exponent(traffic[short], traffic[long], short, long),
                 exp_time)
    return exponents, (flops[long] / long, times[long] / long * 1e3)


class _Traffic(TorchDispatchMode):
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


def extra_flop_formulas() -> dict:
    """FLOP formulas torch's counter lacks (the CPU flash-attention kernel)."""
    ops = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        ops[op] = _sdpa_flops
    return ops


def _best_time(part: nn.Module, x: torch.Tensor, device: torch.device, reps: int, name: str) -> float:
    _call(part, x, name)  # warm
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _call(part, x, name)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _exponent(a: float, b: float, short: int, long: int) -> float:
    if a <= 0 or b <= 0:
        return 0.0 if b <= a else 1.0
    return math.log(b / a) / math.log(long / short)


# -- step() ------------------------------------------------------------------------------------
def check_step(make: Callable[[], nn.Module], d_model: int, length: int = 40, device: torch.device | None = None) -> dict:
    """When the mixer defines step(x_t, state) -> (y_t, state), it must agree with forward in
    evaluation mode, token by token (on a twin: see check_causality); reports the state's size
    per sequence and its growth."""
    mixer = make()
    if not callable(getattr(type(mixer), "step", None)):
        return {"has_step": False}
    device = device or torch.device("cpu")
    dtype = _widest_dtype(make, d_model, device)
    tolerance = 1e-6 if dtype == torch.float64 else 2e-3
    forward_twin, mixer = (m.to(device=device, dtype=dtype).eval() for m in (mixer, make()))
    with torch.no_grad():
        x = torch.randn(2, length, d_model, dtype=dtype, generator=torch.Generator().manual_seed(3)).to(device)
        shared = SharedState.current()
        full = _call(forward_twin, x)
        shared.verify()
        state, outs, sizes = None, [], {}
        for t in range(length):
            try:
                y, state = mixer.step(x[:, t], state)
            except Exception as e:
                raise CandidateError("step", f"Mixer.step raised {type(e).__name__}: {e}"[:1500]) from e
            if type(y) is not torch.Tensor or y.shape != x[:, t].shape:  # noqa: E721
                raise CandidateError("step", f"Mixer.step must return (tensor of shape {tuple(x[:, t].shape)}, state)")
            outs.append(y)
            if t + 1 in (length // 2, length):
                sizes[t + 1] = state_bytes(state) * 4 // (2 * dtype.itemsize)  # batch 1, float32
        stepped = torch.stack(outs, 1)
        err = ((stepped - full).abs().max() / full.abs().max().clamp_min(1e-30)).item()
        if not err <= tolerance:
            raise CandidateError("step", f"step() disagrees with forward() by {err:.1e} (relative, eval mode)")
    half, whole = sizes[length // 2], sizes[length]
    return {"has_step": True, "mixer_state_bytes": whole, "mixer_state_bytes_per_token": max(0, whole - half) / (length - length // 2)}


def state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    return 0


def warm_up() -> None:
    """Exercise the checks' own torch paths before candidate code exists (see harness.warm_up)."""
    m = nn.Linear(4, 4).double()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter, _Traffic():
        m(torch.zeros(1, 2, 4, dtype=torch.float64)).cumsum(1)
    counter.get_total_flops()
    torch.Generator().manual_seed(0)
    with torch.set_grad_enabled(True):
        m(torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)).sum()
