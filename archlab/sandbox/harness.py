"""The model shell around a candidate, its training and every metric.

The harness owns everything but the mixer (and optionally the FFN): byte embeddings,
pre-norm residual blocks, the tied LM head, the loss, the data, the optimizer and every
metric, so a candidate cannot change how it is scored. Training runs in one sandboxed
process (which never sees validation data) and saves the weights; a second, fresh process
loads them and measures quality and hardware cost (`evaluate_trained`).

Metrics (which tier measures what: tiers.py):
  every tier      mixer_params, params, complexity, flops_exponent, traffic_exponent,
                  time_exponent, mixer_flops_per_token, mixer_ms_per_token, has_step,
                  mixer_state_bytes(_per_token) (mixers with step()), wall_s
  training tiers  val_loss (nats/byte), val_bpb, train_loss, tokens_per_s (training),
                  train_tokens, train_time_s
  hardware        peak_mem_mb (weights + grads + AdamW + measured activations of one
                  training step), activation_mem_mb, prefill_ms (batch 1, seq_len tokens),
                  decode_ms_per_token (step() or recomputation: decode_mode), state_bytes
                  (inference state or KV cache after seq_len tokens, state_context),
                  state_bytes_per_token (its growth), flops_per_token (forward, matmul-class
                  ops), quant_loss (validation loss increase with weight-only int8, on every
                  other validation batch) and val_loss_int8 (val_loss + quant_loss)
  extrapolation   val_loss_2x (loss on positions seq_len..2*seq_len of 2x-long windows),
                  val_loss_late (positions seq_len/2..seq_len of the usual windows) and
                  extrapolation_gap (val_loss_2x - val_loss_late: > 0 when longer context hurts)
  probes          mqar_acc_p{n} per number of pairs, mqar_acc (their mean), selcopy_acc,
                  probe_train_loss, probe_train_s
  flags           flagged, flag_detail, recheck_val_loss (runner.py)
"""

import contextlib
import copy
import importlib
import importlib.util
import math
import resource
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from archlab.sandbox import checks, contract
from archlab.sandbox.data import IGNORE, VOCAB_SIZE, Corpus, mqar_batch, selective_copy_batch
from archlab.sandbox.errors import CandidateError, out_of_memory
from archlab.sandbox.tiers import Probes, Tier

DECODE_TOKENS = 32  # timed decoding steps for the per-token latency


# -- devices ----------------------------------------------------------------------------------
def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on a GPU; full precision on the CPU (where bf16 is slower, not faster)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the model shell --------------------------------------------------------------------------
class SwiGLU(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        hidden = 32 * math.ceil(8 * d_model / 3 / 32)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, -1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    """The harness's softmax attention, placed where a candidate's LAYERS says A."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.n_heads, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, t, d))

    def step(self, x, state=None):
        """One token with a KV cache: state is (keys, values), each (batch, heads, time, head_dim)."""
        b, d = x.shape
        q, k, v = (y.view(b, self.n_heads, 1, -1) for y in self.qkv(x).chunk(3, -1))
        if state is not None:
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.reshape(b, d)), (k, v)


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, ffn: nn.Module, d_model: int):
        super().__init__()
        self.norm1, self.mixer = nn.RMSNorm(d_model), mixer
        self.norm2, self.ffn = nn.RMSNorm(d_model), ffn

    def forward(self, x):
        y = self.mixer(self.norm1(x))
        if type(y) is not torch.Tensor or y.shape != x.shape:  # noqa: E721  (subclasses could carry __torch_function__)
            raise CandidateError("shape", f"Mixer.forward must return a plain torch.Tensor of shape {tuple(x.shape)}, "
                                 f"got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        x = x + y
        return x + self.ffn(self.norm2(x))


class LM(nn.Module):
    def __init__(self, candidate: types.ModuleType, tier: Tier):
        super().__init__()
        d = tier.d_model
        self.pattern = (getattr(candidate, "LAYERS", "M") * tier.n_layers)[: tier.n_layers]
        ffn = getattr(candidate, "FFN", None) or SwiGLU
        self.embed = nn.Embedding(VOCAB_SIZE, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(contract.build_mixer(candidate, d, tier.n_heads) if kind == "M" else Attention(d, tier.n_heads), ffn(d_model=d), d)
            for kind in self.pattern
        )
        self.norm = nn.RMSNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.embed.weight)  # tied LM head

    def step(self, token: torch.Tensor, states: list | None):
        """One token of inference for the whole model. Layers whose mixer has no step() keep
        their inputs and recompute (what decoding without a recurrent form costs)."""
        states = states if states is not None else [None] * len(self.blocks)
        x = self.embed(token)
        new = []
        for block, state in zip(self.blocks, states):
            h = block.norm1(x)
            if has_step(block.mixer):
                y, state = block.mixer.step(h, state)
            else:
                state = h[:, None] if state is None else torch.cat([state, h[:, None]], 1)
                y = block.mixer(state)[:, -1]
            if type(y) is not torch.Tensor or y.shape != h.shape:  # noqa: E721
                raise CandidateError("step", f"Mixer.step must return a plain tensor of shape {tuple(h.shape)} and a state")
            x = x + y
            x = x + block.ffn(block.norm2(x))
            new.append(state)
        return F.linear(self.norm(x), self.embed.weight), new


def has_step(mixer: nn.Module) -> bool:
    return callable(getattr(type(mixer), "step", None))


def lm_loss(model: LM, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)


def warm_up(device: torch.device, *, train: bool = True, counters: bool = True, compiler: bool = True) -> None:
    """Run every harness code path once on a tiny model before any candidate code is loaded,
    so torch finishes its lazy imports and initialisation while nothing hostile is around
    (the audit hook then sees no imports from torch's normal operation). `train`: the
    optimizer; `counters`: FLOP/traffic counting; `compiler`: compile_metrics (each imports
    more of torch's compiler stack, which costs seconds: a process skips what it will not run)."""
    # torch imports torch._dynamo lazily from many public APIs (every optimizer, activation
    # checkpointing), and _dynamo imports modules the hook denies (cProfile): import it now.
    for name in ("torch._dynamo", "encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_16",
                 "unicodedata", "stringprep"):
        with contextlib.suppress(ImportError):  # after the uid drop the standard library may be unreadable
            importlib.import_module(name)
    if importlib.util.find_spec("fla") is not None:  # candidates may import fla: its imports happen here, not under the hook
        with contextlib.suppress(Exception):
            ops = importlib.import_module("fla.ops.delta_rule")
            if device.type == "cuda":  # one real kernel call: triton's compiler and launcher are loaded now
                x = torch.randn(1, 64, 1, 64, device=device, dtype=torch.bfloat16)
                ops.chunk_delta_rule(x, x, x, torch.rand(1, 64, 1, device=device, dtype=torch.bfloat16), scale=1.0)
    tiny = types.ModuleType("warmup")
    tiny.Mixer = lambda d_model, n_heads: Attention(d_model, n_heads)
    tier = Tier(name="warmup", d_model=16, n_heads=2, n_layers=1, seq_len=8, batch_size=2, steps=1)
    model = LM(tiny, tier).to(device)
    inputs = torch.randint(0, VOCAB_SIZE, (2, 8), device=device)
    with autocast(device):
        loss = lm_loss(model, inputs, inputs)
    loss.backward()
    if train:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt, schedule = _optimizer(model, tier)
        opt.step()
        schedule.step()
        torch.save(model.state_dict(), _NullFile())
    model.eval()
    with torch.no_grad(), autocast(device):
        if counters:
            with FlopCounterMode(display=False, custom_mapping=checks.extra_flop_formulas()) as counter:
                model(inputs[:1])
            counter.get_total_flops()
            checks.warm_up()
        if compiler:
            compile_metrics(model, tier, device)
        _, states = model.step(inputs[:1, 0], None)
        model.step(inputs[:1, 1], states)
        quantized_copy(model)
    a = torch.randn(1, 2, 3, 4, 4, device=device)
    torch.linalg.solve_triangular(a.tril() + torch.eye(4, device=device), a, upper=False, unitriangular=True)
    resource.getrusage(resource.RUSAGE_SELF)
    gen = torch.Generator().manual_seed(0)
    mqar_batch(2, 2, 16, gen, keys=4, values=4)
    selective_copy_batch(2, 2, 6, 16, gen)
    math.isfinite(loss.item())


class _NullFile:
    def write(self, data):
        return len(data)

    def flush(self):
        pass


# -- the check tier ---------------------------------------------------------------------------
def check_candidate(candidate: types.ModuleType, tier: Tier, param_limit: int | None, *,
                    allow_quadratic: bool = False, device: torch.device | None = None) -> dict:
    """Everything short of training: shape, parameter budget, causality (of the mixer and of the
    candidate's FFN, if any), complexity, step(), one forward/backward of the whole model."""
    device = device or torch.device("cpu")
    d = tier.d_model
    mixer = contract.build_mixer(candidate, d, tier.n_heads)
    contract.check_shape(mixer, d)
    metrics = {"mixer_params": budget(mixer, contract.build_ffn(candidate, d), d, param_limit)}
    make_mixer = contract.twins(candidate, lambda module: contract.build_mixer(module, d, tier.n_heads))
    checks.check_causality(make_mixer, d, tier.causality_length, seq_len=tier.seq_len, device=device)
    if getattr(candidate, "FFN", None) is not None:
        checks.check_causality(contract.twins(candidate, lambda module: contract.build_ffn(module, d)), d,
                               tier.causality_length, seq_len=tier.seq_len, device=device, part="FFN")
    metrics.update(checks.check_complexity(candidate, tier, allow_quadratic=allow_quadratic, device=device))
    metrics.update(checks.check_step(make_mixer, d, device=device))
    model = LM(candidate, tier).to(device)
    inputs = torch.randint(0, VOCAB_SIZE, (2, 64), device=device)
    with autocast(device):
        loss = guard(lambda: lm_loss(model, inputs, inputs))
    guard(loss.backward)
    if not torch.isfinite(loss) or any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters()):
        raise CandidateError("nan", "non-finite loss or gradient in the first forward/backward pass")
    metrics["params"] = checks.count_params(model)
    return metrics


# -- training (the training process) ----------------------------------------------------------
def _optimizer(model: nn.Module, tier: Tier, lr: float | None = None, steps: int | None = None, warmup: int | None = None):
    params = list(checks.iter_parameters(model))
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr or tier.lr, betas=(0.9, 0.95))
    steps, warmup = steps or max(tier.steps, 1), warmup if warmup is not None else tier.warmup
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    return opt, schedule


def train_lm(candidate: types.ModuleType, tier: Tier, corpus: Corpus, seed: int, device: torch.device,
             on_step=None) -> tuple[LM, dict]:
    torch.manual_seed(seed)
    model = LM(candidate, tier).to(device)
    opt, schedule = _optimizer(model, tier)
    gen = torch.Generator().manual_seed(seed)
    tokens_seen, train_time, loss_value = 0, 0.0, float("nan")
    for step in range(tier.steps):
        inputs, targets = corpus.train_batch(tier.batch_size, tier.seq_len, gen)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        synchronize(device)
        start = time.perf_counter()
        loss_value = _train_step(model, opt, schedule, inputs, targets, device, f"training loss at step {step}")
        if step >= 2:  # the first steps pay for allocations and lazy initialisation
            train_time += time.perf_counter() - start
            tokens_seen += inputs.numel()
        if on_step is not None and step % 50 == 49:
            on_step(step)
    return model, {
        "train_loss": loss_value,
        "tokens_per_s": tokens_seen / train_time if train_time else 0.0,
        "train_time_s": train_time,
        "timed_tokens": tokens_seen,
        "train_tokens": tier.steps * tier.batch_size * tier.seq_len,
        "params": checks.count_params(model),
    }


def _train_step(model: LM, opt, schedule, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                what: str) -> float:
    """One optimizer step on the candidate's model; returns the loss (reading it synchronizes)."""
    with autocast(device):
        loss = guard(lambda: lm_loss(model, inputs, targets))
    if not torch.isfinite(loss):
        raise CandidateError("nan", f"{what} became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    guard(loss.backward)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    return loss.item()


def probe_tier(tier: Tier) -> Tier:
    p = tier.probes
    return Tier(name=f"{tier.name}-probes", d_model=p.d_model, n_heads=tier.n_heads, n_layers=p.n_layers,
                seq_len=p.seq_len, batch_size=p.batch_size, steps=p.steps, lr=p.lr, warmup=min(30, p.steps // 10))


def probe_batch(p: Probes, batch: int, gen: torch.Generator, task: str | None = None):
    """A batch of the probe mixture (or of one task: 'mqar{n}' / 'copy')."""
    if task is not None:
        if task == "copy":
            return selective_copy_batch(batch, p.copy_tokens, p.seq_len - p.copy_tokens - 1, p.seq_len, gen)
        return mqar_batch(batch, int(task[4:]), p.seq_len, gen, keys=p.keys, values=p.values)
    tasks = [f"mqar{n}" for n in p.pairs] + ["copy"]
    share = max(1, batch // len(tasks))
    parts = [probe_batch(p, share if i < len(tasks) - 1 else batch - share * (len(tasks) - 1), gen, t)
             for i, t in enumerate(tasks)]
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def train_probes(candidate: types.ModuleType, tier: Tier, seed: int, device: torch.device) -> tuple[LM, dict]:
    """Train a small model from scratch on the probe mixture (MQAR at several sizes + selective copy)."""
    p, ptier = tier.probes, probe_tier(tier)
    torch.manual_seed(seed + 1)
    model = LM(candidate, ptier).to(device)
    opt, schedule = _optimizer(model, ptier)
    gen = torch.Generator().manual_seed(seed + 7919)
    started, loss_value = time.perf_counter(), float("nan")
    for step in range(p.steps):
        inputs, targets = probe_batch(p, p.batch_size, gen)
        inputs, targets = inputs.to(device), targets.to(device)
        loss_value = _train_step(model, opt, schedule, inputs, targets, device, f"probe training loss at step {step}")
    return model, {"probe_train_loss": loss_value, "probe_train_s": time.perf_counter() - started}


# -- evaluation (the evaluation process, from saved weights) ----------------------------------
def load_trained(candidate: types.ModuleType, tier: Tier, state: dict, device: torch.device) -> LM:
    model = LM(candidate, tier)
    try:  # copies: two models loaded from one state must not share a tensor (nor attributes set on it)
        model.load_state_dict({key: value.clone() for key, value in state.items()}, strict=True)
    except (RuntimeError, KeyError) as e:
        raise CandidateError("error", f"the trained weights do not fit a freshly built model: {e}"[:600]) from None
    return model.to(device).eval()


def evaluate_trained(candidate: types.ModuleType, tier: Tier, corpus: Corpus, weights: dict, device: torch.device,
                     *, rng: torch.Generator, seed: int = 0, recheck: bool = False) -> dict:
    """Quality and hardware metrics of a trained model, measured from its saved weights (`seed`:
    the training's)."""
    # Two identical models (contract.twins): the causality probes run on the second, so the scored
    # one cannot pass them by replaying what it computed for the unperturbed batch.
    make = contract.twins(candidate, lambda module: load_trained(module, tier, weights["lm"], device), seed)
    model, twin = make(), make()
    metrics: dict = {"params": checks.count_params(model), "mixer_params": model_budget(model, None)}
    if tier.hardware and not recheck:
        metrics.update(memory_metrics(model, tier, device))
    with torch.no_grad():
        _warm(model, tier, corpus, device)
        before = fingerprint(model)
        val_loss, batch_losses, late_loss = validation_loss(model, twin, tier, corpus, device, rng=rng, recheck=recheck)
        changed = next((a for a, b in zip(before, fingerprint(model)) if a != b), None)
        if changed is not None or len(before) != len(fingerprint(model)):
            where = f" ({changed[1]!r} of {changed[0] or 'the model'})" if changed is not None else ""
            raise CandidateError("tamper", f"the model changed its own weights or state while being evaluated{where}: "
                                 "forward() must leave a part's attributes as they are")
    if not math.isfinite(val_loss):
        raise CandidateError("nan", "validation loss is not finite")
    metrics.update(val_loss=val_loss, val_bpb=val_loss / math.log(2))  # byte-level tokens: nats -> bits per byte
    if recheck:
        return metrics
    with torch.no_grad():
        if tier.extrapolation:
            metrics.update(extrapolation(model, twin, tier, corpus, device, late_loss, rng))
        if tier.hardware:
            metrics.update(latency_metrics(model, tier, device))
            metrics.update(quantization_metrics(model, tier, corpus, device, batch_losses))
            metrics.update(compile_metrics(model, tier, device))
        if tier.probes is not None and "probe" in weights:
            metrics.update(probe_accuracy(candidate, tier, weights["probe"], device, rng, seed))
    return metrics


def validation_loss(model: LM, twin: LM, tier: Tier, corpus: Corpus, device: torch.device, *, rng: torch.Generator,
                    recheck: bool = False) -> tuple[float, list[tuple[float, int]], float]:
    """Mean loss over fixed validation windows. Some batches (all of them in a recheck) are also
    scored by `twin` (the same model, built separately) with everything after a random cut
    replaced by other real text: the logits up to the cut must not move (a trained model cannot
    tell which batches are probed). Returns the mean loss, (loss, tokens) per batch and the mean
    loss on the second half of the positions."""
    batches = list(corpus.val_batches(tier.val_windows, tier.batch_size, tier.seq_len))
    order = list(range(len(batches)))
    if recheck:  # same windows, another order and batching: an honest model gives the same loss
        order = torch.randperm(len(batches), generator=rng).tolist()
    probed = set(order) if recheck else set(torch.randperm(len(batches), generator=rng)[: tier.recheck_batches].tolist())
    total, count, late, late_count, per_batch = 0.0, 0, 0.0, 0, [None] * len(batches)
    half = tier.seq_len // 2
    for i in order:
        inputs, targets = (t.to(device) for t in batches[i])
        with autocast(device):
            logits = guard(lambda: model(inputs))
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
        if i in probed:
            _model_causality(twin, logits, inputs, batches[(i + 1) % len(batches)][0].to(device), device, rng)
        losses = losses.view(targets.shape)
        per_batch[i] = (losses.mean().item(), targets.numel())
        total += per_batch[i][0] * per_batch[i][1]
        count += per_batch[i][1]
        late += losses[:, half:].sum().item()
        late_count += losses[:, half:].numel()
    return total / count, per_batch, late / late_count


def _model_causality(twin: LM, logits: torch.Tensor, inputs: torch.Tensor, other: torch.Tensor,
                     device: torch.device, rng: torch.Generator, what: str = "validation batches") -> None:
    """`logits` are the scored model's for `inputs`; `twin`, an independent copy, scores them with
    the text after a random cut replaced by `other` (once the state both can reach is verified)."""
    checks.SharedState.current().verify()  # against the worker's baseline: the scored pass ran before this call
    t = inputs.shape[1]
    cut = int(torch.randint(t // 4, 3 * t // 4, (1,), generator=rng))
    perturbed = inputs.clone()
    perturbed[:, cut + 1 :] = other[: inputs.shape[0], cut + 1 :]
    with autocast(device):
        logits2 = guard(lambda: twin(perturbed))
    a, b = logits[:, : cut + 1].float(), logits2[:, : cut + 1].float()
    leak = ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()
    tolerance = 2e-2 if device.type == "cuda" else 1e-4
    if not leak <= tolerance:
        raise CandidateError("non_causal", f"the trained model's outputs at positions <= {cut} changed by {leak:.1e} "
                             f"(relative) when only later text changed (checked on {what})")


def _warm(model: LM, tier: Tier, corpus: Corpus, device: torch.device) -> None:
    """One forward of every batch shape the validation uses, so caches a mixer builds lazily
    (masks, tables) exist before the fingerprint is taken."""
    shapes = {tuple(inputs.shape) for inputs, _ in corpus.val_batches(tier.val_windows, tier.batch_size, tier.seq_len)}
    for shape in sorted(shapes):
        tokens = torch.randint(0, VOCAB_SIZE, shape, device=device)
        with autocast(device):
            guard(lambda: model(tokens))


def fingerprint(model: nn.Module) -> tuple:
    """Everything a model could change about itself: tensors (by value) and plain attributes (by identity)."""
    parts = []
    for name, module in checks.iter_modules(model):
        for key, value in sorted(vars(module).items()):
            if key in ("_parameters", "_buffers", "_modules", "training"):
                continue
            if isinstance(value, torch.Tensor):
                parts.append((name, key, tuple(value.shape), float(value.detach().double().sum())))
            elif isinstance(value, list | dict | set | tuple):
                parts.append((name, key, id(value), len(value)))
            else:
                parts.append((name, key, id(value)))
        for kind in ("_parameters", "_buffers"):
            for key, value in vars(module)[kind].items():
                if value is not None:
                    parts.append((name, kind, key, value.data_ptr(), float(value.detach().double().sum())))
    return tuple(parts)


def extrapolation(model: LM, twin: LM, tier: Tier, corpus: Corpus, device: torch.device, late_loss: float,
                  rng: torch.Generator) -> dict:
    """Length extrapolation: the loss on positions seq_len..2*seq_len of windows twice as long as
    training saw, against the loss on positions seq_len/2..seq_len of the usual windows. A model
    that extrapolates does at least as well with the extra context (gap <= 0); one that breaks
    beyond its training length does worse. The first batch is also probed for causality (twin)."""
    length = 2 * tier.seq_len
    total, count = 0.0, 0
    batches = list(corpus.val_batches(max(tier.val_windows // 2, 1), max(tier.batch_size // 2, 1), length))
    for i, (inputs, targets) in enumerate(batches):
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device):
            logits = guard(lambda: model(inputs))
        if i == 0:
            _model_causality(twin, logits, inputs, batches[-1][0].to(device), device, rng, "windows twice the training length")
        late = logits[:, tier.seq_len :].float()
        loss = F.cross_entropy(late.reshape(-1, late.shape[-1]), targets[:, tier.seq_len :].reshape(-1), reduction="sum")
        total += loss.item()
        count += targets[:, tier.seq_len :].numel()
    long_loss = total / count
    return {"val_loss_2x": long_loss, "val_loss_late": late_loss, "extrapolation_gap": long_loss - late_loss}


def memory_metrics(model: LM, tier: Tier, device: torch.device) -> dict:
    """Peak training memory: weights + gradients + AdamW moments (computed) plus the activations
    of one forward/backward at the tier's batch shape (measured: CUDA allocator peak, or the
    growth of the process's peak RSS on the CPU)."""
    n = checks.count_params(model)
    static = 4 * n * 4  # fp32 weights, gradients, two AdamW moments
    tokens = torch.randint(0, VOCAB_SIZE, (tier.batch_size, tier.seq_len), device=device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with autocast(device):
        loss = guard(lambda: lm_loss(model, tokens, tokens))
    guard(loss.backward)
    synchronize(device)
    if device.type == "cuda":
        activations = torch.cuda.max_memory_allocated(device) - base
    else:
        activations = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    for p in checks.iter_parameters(model):
        p.grad = None
    model.eval()
    return {"peak_mem_mb": (static + activations) / 2**20, "activation_mem_mb": activations / 2**20}


def latency_metrics(model: LM, tier: Tier, device: torch.device) -> dict:
    """Batch-1 inference: prefill latency over seq_len tokens, per-token decoding latency after
    it (step() where the mixer has one, else recomputing the context), state bytes per token,
    FLOPs per token of the forward pass."""
    t = tier.seq_len
    tokens = torch.randint(0, VOCAB_SIZE, (1, t), device=device)
    with autocast(device):
        guard(lambda: model(tokens))  # warm
        prefill = min(_timed(lambda: guard(lambda: model(tokens)), device) for _ in range(3))
        with FlopCounterMode(display=False, custom_mapping=checks.extra_flop_formulas()) as counter:
            guard(lambda: model(tokens))
        flops = counter.get_total_flops()
        recurrent = all(has_step(b.mixer) for b in model.blocks)
        states, half_bytes, decode = None, 0, []
        for i in range(t):
            start = time.perf_counter()
            logits, states = guard(lambda: model.step(tokens[:, i], states))
            synchronize(device)
            if i >= t - DECODE_TOKENS:
                decode.append(time.perf_counter() - start)
            if i == t // 2 - 1:
                half_bytes = checks.state_bytes(states)
    full_bytes = checks.state_bytes(states)
    return {
        "prefill_ms": prefill * 1e3,
        "decode_ms_per_token": sum(decode) / len(decode) * 1e3,
        "decode_mode": "recurrent" if recurrent else "recompute",
        "state_bytes": full_bytes,
        "state_context": t,
        "state_bytes_per_token": max(0.0, (full_bytes - half_bytes) / (t - t // 2)),
        "flops_per_token": flops / t,
    }


def compile_metrics(model: LM, tier: Tier, device: torch.device) -> dict:
    """Whether torch.compile takes the first mixer whole (fullgraph): a graph break (.item(), data-
    dependent Python control flow, an unsupported call) or an error is a compile failure. On CUDA
    the real compile (inductor + triton), its output checked against eager; on the CPU TorchDynamo's
    graph capture only, because inductor's C++ build takes ~40 s per model there."""
    mixer = model.blocks[0].mixer
    x = torch.randn(1, min(tier.seq_len, 64), tier.d_model, device=device)
    torch._dynamo.reset()
    try:
        if device.type == "cuda":
            with autocast(device):
                eager, compiled = mixer(x).float(), torch.compile(mixer, fullgraph=True)(x).float()
            if not torch.allclose(compiled, eager, rtol=5e-2, atol=5e-2):
                return {"compile_ok": False, "compile_error": "the compiled mixer's output differs from eager"}
            return {"compile_ok": True}
        explanation = torch._dynamo.explain(mixer)(x)
        breaks = explanation.graph_break_count
        if breaks:
            return {"compile_ok": False, "compile_graph_breaks": breaks,
                    "compile_error": f"graph break: {explanation.break_reasons[0].reason}"[:300]}
        return {"compile_ok": True, "compile_graph_breaks": 0}
    except CandidateError:
        raise
    except Exception as e:  # failing to compile is a metric (a fitness penalty), not a rejection
        return {"compile_ok": False, "compile_error": f"{type(e).__name__}: {e}"[:300]}
    finally:
        torch._dynamo.reset()


def _timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def quantized_copy(model: LM) -> LM:
    """A copy with every matrix (Linear, Embedding, 2-D+ parameters) rounded to int8 per output
    row (symmetric, absmax scale) and dequantised: weight-only int8 quantization."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for p in checks.iter_parameters(q):
            if p.dim() >= 2:
                w = p.float().reshape(p.shape[0], -1)
                scale = w.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
                p.copy_((w / scale).round().clamp(-127, 127).mul(scale).reshape(p.shape).to(p.dtype))
    return q


def quantization_metrics(model: LM, tier: Tier, corpus: Corpus, device: torch.device, batch_losses: list) -> dict:
    """Validation loss increase after int8 weight quantization, measured on every other
    validation batch (against the same batches' full-precision loss); val_loss_int8 is the
    full-precision val_loss plus that increase."""
    batches = list(corpus.val_batches(tier.val_windows, tier.batch_size, tier.seq_len))
    q = guard(lambda: quantized_copy(model))
    total, count, base = 0.0, 0, 0.0
    for i in range(0, len(batches), 2):
        inputs, targets = (t.to(device) for t in batches[i])
        with autocast(device):
            total += guard(lambda: lm_loss(q, inputs, targets)).item() * targets.numel()
        count += targets.numel()
        base += batch_losses[i][0] * batch_losses[i][1]
    increase = (total - base) / count
    full = sum(loss * n for loss, n in batch_losses) / sum(n for _, n in batch_losses)
    return {"val_loss_int8": full + increase, "quant_loss": increase}


def probe_accuracy(candidate: types.ModuleType, tier: Tier, state: dict, device: torch.device, rng: torch.Generator,
                   seed: int = 0) -> dict:
    """Accuracy of the trained probe model per task; each task's first batch is also scored by a
    twin with the text after a random cut replaced (a mixer that reads ahead only at the probes'
    shapes would otherwise read the answers)."""
    p = tier.probes
    make = contract.twins(candidate, lambda module: load_trained(module, probe_tier(tier), state, device), seed + 1)
    model, twin = make(), make()  # seed + 1: train_probes'
    gen = torch.Generator().manual_seed(0x5EED)  # held out: training draws from another stream
    out = {}
    tasks = [f"mqar{n}" for n in p.pairs] + ["copy"]
    with torch.no_grad():
        for task in tasks:
            correct, total = 0, 0
            for i in range(max(1, p.eval_examples // p.batch_size)):
                inputs, targets = (t.to(device) for t in probe_batch(p, p.batch_size, gen, task))
                with autocast(device):
                    logits = guard(lambda: model(inputs))
                if i == 0:
                    other_gen = torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=rng)))
                    other = probe_batch(p, p.batch_size, other_gen, task)[0]
                    _model_causality(twin, logits, inputs, other.to(device), device, rng, f"{task} probe batches")
                pred = logits.argmax(-1)
                mask = targets != IGNORE
                correct += (pred[mask] == targets[mask]).sum().item()
                total += mask.sum().item()
            key = "selcopy_acc" if task == "copy" else f"mqar_acc_p{task[4:]}"
            out[key] = correct / total
    mqar = [out[f"mqar_acc_p{n}"] for n in p.pairs]
    out["mqar_acc"] = sum(mqar) / len(mqar)
    return out


def budget(mixer: nn.Module, ffn: nn.Module | None, d_model: int, limit: int | None) -> int:
    """The parameters the candidate adds (checks.check_params), against the budget `limit`."""
    return checks.check_params(mixer, limit, ffn=ffn, ffn_baseline=checks.stored_numbers(SwiGLU(d_model)))


def model_budget(model: LM, limit: int | None) -> int:
    """budget() of a whole model's first candidate block."""
    block = next((b for b in model.blocks if not isinstance(b.mixer, Attention)), None)
    if block is None:
        return 0
    return budget(block.mixer, None if isinstance(block.ffn, SwiGLU) else block.ffn, model.embed.embedding_dim, limit)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def guard(fn):
    """Run candidate-dependent code, turning its exceptions into a rejection with a reason."""
    try:
        return fn()
    except CandidateError:
        raise
    except MemoryError:
        raise CandidateError("memory", "ran out of memory") from None
    except RecursionError as e:
        raise CandidateError("error", f"RecursionError: {e}") from e
    except Exception as e:
        if out_of_memory(e):
            raise CandidateError("memory", f"{type(e).__name__}: {str(e)[:300]}") from None
        raise CandidateError("error", f"{type(e).__name__}: {str(e)[:1500]}") from e
