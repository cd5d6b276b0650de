"""The trusted side of an evaluation: it owns the data, the targets, every loss, verdict and
count, and never runs candidate code (numpy only: it does not even import torch).

An evaluation starts two model servers (server.py) of the candidate, each in its own sandbox
(launch.py): A trains; B, a fresh process, only ever holds what A's saved weights carry.
- Checks: parameters are counted from the weights a server sends (safetensors), for every
  mixer and FFN instance in the model. Causality: each comparison sends the original input
  to one server and its copy with everything after a cut perturbed to the other, so no
  channel inside a process can make the two agree. step() runs in B against forward() in A.
  Complexity is measured below, at and above the training length.
- Training: A is sent the training batches one per step and timed from here.
- Scoring: B, loaded from A's weights, is sent the validation windows in a random order; A is
  sent copies of every window, each with the text after a random cut replaced, in another
  random order. B's logits give the loss; A's must equal B's up to every cut. So the scored
  server is checked for causality on the very windows it is scored on, and cannot tell which
  of its inputs are checked (all are). Probes and long windows work the same way.
- Hardware: latency is timed from here, peak memory read from the server's /proc entry, the
  state is what decoding hands back, int8 quantisation is done here on the saved weights.
Every reply is checked for shape, dtype and finiteness; a malformed one rejects the candidate
(`crash`), never the run.
"""

import math
import os
import select
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from archlab.sandbox import launch, wire
from archlab.sandbox.data import IGNORE, VOCAB_SIZE, Corpus, probe_batch, probe_tasks
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.tiers import Tier

FLOP_EXPONENT_LIMIT = 1.25  # growth of FLOPs or memory traffic with length above this is super-linear
TIME_EXPONENT_LIMIT = 1.75  # time is noisy on a shared machine: only clear growth counts
# Padding every input to one block of the training length keeps the cost flat below it (block attention
# over the whole window looks linear above it): FLOPs from seq_len/2 to seq_len must grow at least this fast.
# (The root's chunk padding at the micro tier's seq_len = its chunk size gives ~0.45.)
FLAT_EXPONENT_LIMIT = 0.3
CUTS = (0, 1, 15, 16, 31, 63, 64, 65)  # inside and across the usual chunk sizes
CAUSAL_TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2}  # trained models, relative (B and A batch differently)
MAX_REPLY = 1 << 31


# -- one model server, seen from here ---------------------------------------------------------
class Server:
    def __init__(self, name: str, job: dict, log: Path, deadline: float, host_dir: Path, cuda: bool, hide: tuple):
        self.name, self.deadline, self.log, self.cpu_s = name, deadline, log, job.get("cpu_s")
        lx = launch.launcher()
        argv = lx.command([sys.executable, "-m", "archlab.sandbox.server"], host_dir, cuda=cuda, hide=hide)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
                                         cwd=host_dir if lx.kind != "bwrap" else None, start_new_session=True,
                                         env=launch.environment(lx.scratch(host_dir), job["threads"]))
        self.ready: dict = {}
        self._send(job)

    def start(self) -> dict:
        """Wait for the server's ready message (its contract facts)."""
        self.ready = self._receive()[0]
        return self.ready

    def ask(self, op: str, arrays: dict | None = None, **fields) -> tuple[dict, dict]:
        self._send({"op": op, **fields}, arrays)
        return self._receive()

    def train(self, which: str, steps: int, batches) -> tuple[dict, dict, float, int]:
        """Serve `steps` training batches on request; returns the final reply, the weights, and
        the seconds and tokens of every step after the second (the first pay for warm-up)."""
        self._send({"op": "train", "model": which})
        seconds, tokens, started, last = 0.0, 0, None, 0
        for step in range(steps):
            header, _ = self._receive()
            if header.get("need") != step:
                raise CandidateError("crash", f"server {self.name} asked for {header!r} instead of training batch {step}")
            now = time.perf_counter()
            if started is not None and step >= 3:
                seconds, tokens = seconds + now - started, tokens + last
            inputs, targets = next(batches)
            last = inputs.size
            started = time.perf_counter()
            self._send({}, {"inputs": inputs, "targets": targets})
        header, weights = self._receive()
        if started is not None and steps >= 4:
            seconds, tokens = seconds + time.perf_counter() - started, tokens + last
        return header, weights, seconds, tokens

    def host_pid(self) -> int | None:
        """The server's pid as this machine sees it (below bwrap or unshare): its /proc is readable."""
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"archlab.sandbox.server"]:
                    return pid
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                continue
        return None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.proc.wait()

    # -- the pipe --------------------------------------------------------------------------------
    def _send(self, header: dict, arrays: dict | None = None) -> None:
        try:
            wire.send(self.proc.stdin.fileno(), header, arrays)
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def _receive(self) -> tuple[dict, dict]:
        try:
            header, arrays = wire.receive(self.proc.stdout.fileno(), MAX_REPLY, self._wait)
        except wire.WireError as e:
            if self.proc.poll() is None and "closed" not in str(e):
                raise CandidateError("crash", f"server {self.name} sent a malformed reply: {e}") from None
            raise self._died() from None
        error = header.get("error")
        if error is not None:
            if not (isinstance(error, dict) and isinstance(error.get("reason"), str)):
                raise CandidateError("crash", f"server {self.name} sent a malformed error: {str(error)[:200]}")
            raise CandidateError(error["reason"][:40], str(error.get("detail"))[:2000])
        return header, arrays

    def _wait(self, fd: int) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise CandidateError("timeout", f"no answer from server {self.name} within the wall-clock backstop "
                                 "(its own CPU time was not used up: the machine may be overloaded)")

    def _died(self) -> CandidateError:
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        tail = _tail(self.log)
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return CandidateError("timeout", f"server {self.name} used up its {self.cpu_s:.0f} CPU-seconds")
        if code in (-signal.SIGKILL, 137) or "MemoryError" in tail or "bad_alloc" in tail:
            return CandidateError("memory", f"server {self.name} was killed (exit {code}): {tail[-600:]}")
        return CandidateError("crash", f"server {self.name} exited with {code} and no result: {tail[-1200:]}")


def _tail(path: Path, size: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# -- checking what comes back -------------------------------------------------------------------
def array(arrays: dict, key: str, shape: tuple, what: str) -> np.ndarray:
    """A reply's array, required to be finite floats of the given shape."""
    a = arrays.get(key)
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype.kind != "f":
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else "nothing"
        raise CandidateError("shape", f"{what}: expected floats of shape {tuple(shape)}, got {got}")
    if not np.isfinite(a).all():
        raise CandidateError("nan", f"{what}: NaN or infinity in the output")
    return a.astype(np.float64, copy=False)


def number(header: dict, key: str, what: str, default=None):
    value = header.get(key, default)
    if value is default and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CandidateError("crash", f"{what}: {key} is not a finite number ({str(value)[:60]})")
    return value


def leak(a: np.ndarray, b: np.ndarray) -> float:
    """Relative difference of two outputs that a causal model makes equal."""
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy per position (nan where the target is IGNORE)."""
    lp = log_softmax(logits)
    safe = np.where(targets == IGNORE, 0, targets)
    out = -np.take_along_axis(lp, safe[..., None], -1)[..., 0]
    return np.where(targets == IGNORE, np.nan, out)


# -- parameters ---------------------------------------------------------------------------------
def swiglu_params(d_model: int) -> int:
    hidden = 32 * math.ceil(8 * d_model / 3 / 32)
    return 3 * d_model * hidden


def budget(weights: dict, d_model: int, n_layers: int, has_ffn: bool, limit: int | None) -> int:
    """What the candidate adds per block, counted from its weights: the mixer's numbers (parameters,
    buffers, extra state) plus what its FFN stores beyond the harness MLP's size, for every block;
    the largest against `limit`. Anything outside the blocks' mixers and FFNs must be the harness's."""
    harness = {"embed.weight": (VOCAB_SIZE, d_model), "norm.weight": (d_model,)}
    for i in range(n_layers):
        harness |= {f"blocks.{i}.norm1.weight": (d_model,), f"blocks.{i}.norm2.weight": (d_model,)}
    missing = sorted(harness.keys() - weights.keys())
    if missing:
        raise CandidateError("crash", f"the server sent weights without the harness's own {missing[0]}")
    per_block = [0] * n_layers
    ffn = [0] * n_layers
    for key, value in weights.items():
        parts = key.split(".")
        if key in harness:
            if value.shape != harness[key]:
                raise CandidateError("params", f"{key} has shape {value.shape}, not the harness's {harness[key]}")
            continue
        if len(parts) < 4 or parts[0] != "blocks" or not parts[1].isdigit() or int(parts[1]) >= n_layers \
                or parts[2] not in ("mixer", "ffn"):
            raise CandidateError("params", f"the model carries {key!r} outside its blocks' mixers and FFNs")
        i = int(parts[1])
        if parts[2] == "mixer":
            per_block[i] += value.size
        else:
            ffn[i] += value.size
    for i in range(n_layers):
        per_block[i] += max(0, ffn[i] - swiglu_params(d_model)) if has_ffn else 0
        if not has_ffn and ffn[i] != swiglu_params(d_model):
            raise CandidateError("params", f"block {i}'s MLP carries {ffn[i]:,} numbers, not the harness MLP's")
    worst = max(per_block)
    if limit is not None and limit >= 0 and worst > limit:
        block = per_block.index(worst)
        raise CandidateError("params", f"{worst:,} numbers in block {block}'s mixer (and FFN beyond the harness MLP), "
                             f"over the run's budget of {limit:,}")
    return worst


@lru_cache(maxsize=16)
def root_mixer_params(d_model: int, n_heads: int) -> int:
    """The root DeltaNet mixer's parameter count at this width: trusted template code, counted in a
    plain subprocess (this process never imports torch)."""
    code = ("import sys\nfrom archlab.sandbox import contract\nfrom archlab.templates import render_root\n"
            "m = contract.build_mixer(contract.load(render_root('deltanet'), name='root'), int(sys.argv[1]), int(sys.argv[2]))\n"
            "print(sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code, str(d_model), str(n_heads)], capture_output=True, text=True,
                         timeout=300, check=True)
    return int(out.stdout.split()[-1])


def quantized(weights: dict) -> dict:
    """Weight-only int8: every matrix rounded per output row (symmetric absmax scale), dequantised."""
    out = {}
    for key, w in weights.items():
        if w.ndim >= 2 and w.dtype.kind == "f":
            flat = w.reshape(w.shape[0], -1).astype(np.float32)
            scale = np.maximum(np.abs(flat).max(1, keepdims=True), 1e-12) / 127
            w = (np.clip(np.round(flat / scale), -127, 127) * scale).reshape(w.shape).astype(w.dtype)
        out[key] = w
    return out


# -- the evaluation -----------------------------------------------------------------------------
class Evaluation:
    """One seed of one candidate at one tier: two servers, checks, training, scoring."""

    def __init__(self, source: str, tier: Tier, seed: int, opt: dict, host_dir: Path, log: Path):
        self.tier, self.seed, self.opt, self.log = tier, seed, opt, log
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # unknown to any candidate
        threads = opt["threads"]
        wall = opt.get("timeout_s") or tier.timeout_s
        self.deadline = time.monotonic() + 3 * wall + 120  # a backstop: the real bound is each server's CPU time
        self.cuda = opt.get("device") != "cpu" and (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"))
        self.device = "cuda" if self.cuda else "cpu"
        job = {"source": source, "tier": tier.model_dump(mode="json"), "seed": seed, "threads": threads,
               "device": opt.get("device"), "diagnostics": not opt.get("skip_static_checks"),
               "memory_gb": None if self.cuda else opt.get("memory_gb"), "nproc": launch.DEFAULT_NPROC,
               "cpu_s": wall * max(threads, 1) * 1.5 + 20}
        hide = tuple(str(Path(p).resolve()) for p in [opt.get("data")] if p)
        lx = launch.launcher()
        self.servers = []
        for name in ("A", "B"):
            (host_dir / name).mkdir()
            os.chmod(host_dir / name, 0o777)  # the plain and unshare launchers: the dropped uid works in it
            self.servers.append(Server(name, {**job, "uid": lx.next_uid()}, log, self.deadline, host_dir / name,
                                       self.cuda, hide))
        self.a, self.b = self.servers
        self.metrics: dict = {}
        self.env: dict = {}
        self.weights: dict = {}

    def close(self) -> None:
        for s in self.servers:
            s.close()

    def run(self) -> dict:
        ready = self.a.start()
        if self.b.start() != ready:
            raise CandidateError("non_causal", "two servers of the same candidate describe it differently")
        self.has_step, self.has_ffn = bool(ready.get("has_step")), bool(ready.get("has_ffn"))
        self.dtype = "float64" if ready.get("dtype") == "float64" else "float32"
        self.env = {k: v for k, v in (ready.get("env") or {}).items() if isinstance(v, str | None)}
        self.checks()
        if not self.tier.steps:
            return self.metrics
        corpus = Corpus.load(self.opt.get("data"))
        self.train(corpus)
        self.score(corpus)
        if self.tier.extrapolation:
            self.extrapolation(corpus)
        if self.tier.probes is not None:
            self.probes()
        if self.tier.hardware:
            self.hardware(corpus)
        return self.metrics

    # -- checks ----------------------------------------------------------------------------------
    def checks(self) -> None:
        tier, d = self.tier, self.tier.d_model
        _, weights = self.a.ask("build", model="lm")
        limit = self.opt.get("param_limit")
        if limit is None:
            limit = math.floor(root_mixer_params(d, tier.n_heads) * self.opt.get("param_ratio", 1.2))
        self.metrics["mixer_params"] = budget(weights, d, tier.n_layers, self.has_ffn, limit)
        self.metrics["params"] = int(sum(w.size for w in weights.values()))
        self.causality("Mixer")
        if self.has_ffn:
            self.causality("FFN")
        self.complexity()
        self.step_agreement()
        tokens = self.rng.integers(0, VOCAB_SIZE, (2, 64))
        header, _ = self.a.ask("check_lm", {"tokens": tokens})
        if header.get("finite") is not True:
            raise CandidateError("nan", "non-finite loss or gradient in the first forward/backward pass")

    def causality(self, part: str) -> None:
        """Perturb every position after a cut: outputs up to the cut must not move. Original and copy
        go to different servers (at random which); float64 where the part runs in it (a leak of
        1e-9 relative is caught), training and evaluation mode, several seeds and cuts; then once in
        float32 at the training length with gradients enabled."""
        tier, d = self.tier, self.tier.d_model
        length = tier.causality_length
        cuts = sorted({c for c in CUTS if c < length - 1} | {length // 2 + 7, length - 2,
                                                              *self.rng.integers(0, length - 1, 4).tolist()})
        tolerance = 1e-9 if self.dtype == "float64" else 1e-5
        runs = [(length, 2, cuts, seed, self.dtype, tolerance, seed < 2, False) for seed in range(3)]
        if tier.seq_len != length:
            runs.append((tier.seq_len, 3, [tier.seq_len // 3, int(self.rng.integers(0, tier.seq_len - 1)), tier.seq_len - 2],
                         7, "float32", 1e-5, True, True))
        for length, batch, cuts, seed, dtype, tol, train, grad in runs:
            x = self.rng.standard_normal((batch, length, d)).astype(dtype)
            copies = []
            for cut in cuts:
                x2 = x.copy()
                x2[:, cut + 1:] = self.rng.standard_normal((batch, length - cut - 1, d))
                copies.append(x2)
            original, perturbed = np.tile(x, (len(cuts), 1, 1)), np.concatenate(copies)
            first, second = (self.a, self.b) if self.rng.random() < 0.5 else (self.b, self.a)
            fields = dict(part=part, seed=seed, dtype=dtype, train=train, grad=grad)
            y = array(first.ask("part", {"x": original}, **fields)[1], "y", original.shape, f"{part}.forward")
            y2 = array(second.ask("part", {"x": perturbed}, **fields)[1], "y", original.shape, f"{part}.forward")
            for i, cut in enumerate(cuts):
                rows = slice(i * batch, (i + 1) * batch)
                diff = leak(y[rows, : cut + 1], y2[rows, : cut + 1])
                if not diff <= tol:
                    raise CandidateError("non_causal", f"{part} outputs at positions <= {cut} changed by {diff:.1e} "
                                         f"(relative, {dtype}, {'train' if train else 'eval'} mode, length {length}) "
                                         "when only later positions changed")

    def complexity(self) -> None:
        """Cost of one forward at lengths below, at and above the training length (FLOPs, memory traffic,
        time): the largest growth exponent between neighbouring lengths must stay near 1. A part that
        is full attention over the lengths it is trained at is quadratic there, whatever it does beyond."""
        tier = self.tier
        lengths = sorted(set(tier.complexity_lengths) | {max(16, tier.seq_len // 2), tier.seq_len})
        quadratic = []
        for part in ("Mixer", "FFN") if self.has_ffn else ("Mixer",):
            costs = self._cost_table(part, lengths)
            worst = [max(_exponent(costs[i][j], costs[i + 1][j], lengths[i], lengths[i + 1]) for i in range(len(lengths) - 1))
                     for j in range(3)]
            if max(worst[:2]) <= FLOP_EXPONENT_LIMIT and worst[2] > TIME_EXPONENT_LIMIT:  # timing noise on a busy machine?
                again = self._cost_table(part, lengths)  # a time-only verdict is measured twice
                worst[2] = min(worst[2], max(_exponent(again[i][2], again[i + 1][2], lengths[i], lengths[i + 1])
                                             for i in range(len(lengths) - 1)))
            key = "" if part == "Mixer" else "ffn_"
            self.metrics.update({f"{key}flops_exponent": worst[0], f"{key}traffic_exponent": worst[1],
                                 f"{key}time_exponent": worst[2], f"{key or 'mixer_'}flops_per_token": costs[-1][0] / lengths[-1],
                                 f"{key or 'mixer_'}ms_per_token": costs[-1][2] / lengths[-1] * 1e3})
            half, full = lengths.index(max(16, tier.seq_len // 2)), lengths.index(tier.seq_len)
            flat = _exponent(costs[half][0], costs[full][0], lengths[half], lengths[full]) if half < full else 1.0
            if max(worst[:2]) > FLOP_EXPONENT_LIMIT or worst[2] > TIME_EXPONENT_LIMIT:
                quadratic.append(f"one {part} forward grows like T^{worst[0]:.2f} in FLOPs, T^{worst[1]:.2f} in memory "
                                 f"traffic and T^{worst[2]:.2f} in time between lengths {lengths}")
            elif flat < FLAT_EXPONENT_LIMIT:
                quadratic.append(f"one {part} forward costs as many FLOPs at T={lengths[half]} as at T={lengths[full]} "
                                 f"(T^{flat:.2f}): it works on the whole training window as one block, which is full "
                                 "attention at the length it is trained and scored at")
        self.metrics["complexity"] = "superlinear" if quadratic else "linear"
        if quadratic and not self.opt.get("allow_quadratic"):
            raise CandidateError("quadratic", f"{quadratic[0]} (training length {tier.seq_len}); the run only accepts "
                                 "(near-)linear mixers and FFNs (put softmax attention in LAYERS: the harness's own attention)")

    def _cost_table(self, part: str, lengths: list[int]) -> list[list[float]]:
        """[flops, traffic, seconds] of one forward of the part at each length, measured in server A."""
        header, _ = self.a.ask("cost", part=part, lengths=lengths)
        rows = header.get("cost")
        if not (isinstance(rows, list) and len(rows) == len(lengths)):
            raise CandidateError("crash", f"server A sent no cost table for the {part}")
        return [[number(r, k, f"{part} cost") for k in ("flops", "traffic", "seconds")] for r in rows]

    def step_agreement(self, length: int = 40) -> None:
        """step() token by token (in B) must agree with forward() (in A), evaluation mode."""
        self.metrics["has_step"] = self.has_step
        if not self.has_step:
            return
        x = self.rng.standard_normal((2, length, self.tier.d_model)).astype(self.dtype)
        full = array(self.a.ask("part", {"x": x}, part="Mixer", seed=11, dtype=self.dtype, train=False)[1], "y", x.shape,
                     "Mixer.forward")
        reply = self.b.ask("step", {"x": x}, seed=11, dtype=self.dtype)[1]
        stepped = array(reply, "y", x.shape, "Mixer.step")
        tolerance = 1e-6 if self.dtype == "float64" else 2e-3
        err = leak(full, stepped)
        if not err <= tolerance:
            raise CandidateError("step", f"step() disagrees with forward() by {err:.1e} (relative, eval mode)")
        state = sum(a.size for k, a in reply.items() if k != "y") * 4 // 2  # float32 bytes, batch 1
        self.metrics.update(mixer_state_bytes=state)

    # -- training --------------------------------------------------------------------------------
    def train(self, corpus: Corpus) -> None:
        tier = self.tier
        rng = np.random.default_rng(self.seed)
        batches = (corpus.train_batch(tier.batch_size, tier.seq_len, rng) for _ in range(tier.steps))
        header, weights, seconds, tokens = self.a.train("lm", tier.steps, batches)
        self.metrics["mixer_params"] = budget(weights, tier.d_model, tier.n_layers, self.has_ffn, self._limit())
        self.weights = {f"lm.{k}": v for k, v in weights.items()}
        self.metrics.update(train_loss=number(header, "train_loss", "training"), tokens_per_s=tokens / seconds if seconds else 0.0,
                            train_time_s=seconds, timed_tokens=tokens, train_tokens=tier.steps * tier.batch_size * tier.seq_len)
        self.b.ask("build", weights, model="lm")
        if tier.probes is not None:
            p = tier.probes
            prng = np.random.default_rng(self.seed + 7919)
            started = time.perf_counter()
            header, probe, _, _ = self.a.train("probe", p.steps, (probe_batch(p, p.batch_size, prng) for _ in range(p.steps)))
            self.metrics.update(probe_train_loss=number(header, "train_loss", "probe training"),
                                probe_train_s=time.perf_counter() - started)
            self.weights |= {f"probe.{k}": v for k, v in probe.items()}
            self.b.ask("build", probe, model="probe")

    def _limit(self) -> int | None:
        limit = self.opt.get("param_limit")
        return math.floor(root_mixer_params(self.tier.d_model, self.tier.n_heads) * self.opt.get("param_ratio", 1.2)) \
            if limit is None else limit

    # -- scoring ---------------------------------------------------------------------------------
    def scored(self, inputs: np.ndarray, model: str = "lm", copies: int = 1, what: str = "validation windows") -> np.ndarray:
        """B's logits for every row of `inputs` (sent in a random order); A is sent `copies` copies of
        every row with the text after a random cut replaced by another row's, in another random order,
        and must agree with B up to each cut."""
        n, t = inputs.shape
        batch = self.tier.batch_size if model == "lm" else self.tier.probes.batch_size
        logits = np.empty((n, t, VOCAB_SIZE), dtype=np.float64)
        for rows in np.array_split(self.rng.permutation(n), max(1, math.ceil(n / batch))):
            out = self.b.ask("logits", {"tokens": inputs[rows]}, model=model)[1]
            logits[rows] = array(out, "logits", (len(rows), t, VOCAB_SIZE), f"logits of the {what}")
        which = np.repeat(np.arange(n), copies)
        cuts = self.rng.integers(0, t - 1, len(which))
        donors = (which + self.rng.integers(1, max(n, 2), len(which))) % n
        perturbed = inputs[which].copy()
        for j, (cut, donor) in enumerate(zip(cuts, donors)):
            perturbed[j, cut + 1:] = inputs[donor, cut + 1:] if donor != which[j] else self.rng.integers(0, VOCAB_SIZE, t - cut - 1)
        tolerance = CAUSAL_TOLERANCE[self.device]
        for rows in np.array_split(self.rng.permutation(len(which)), max(1, math.ceil(len(which) / batch))):
            out = array(self.a.ask("logits", {"tokens": perturbed[rows]}, model=model)[1], "logits",
                        (len(rows), t, VOCAB_SIZE), f"logits of the {what}")
            for k, j in enumerate(rows):
                diff = leak(logits[which[j], : cuts[j] + 1], out[k, : cuts[j] + 1])
                if not diff <= tolerance:
                    raise CandidateError("non_causal", f"the trained model's outputs at positions <= {cuts[j]} changed by "
                                         f"{diff:.1e} (relative) when only later text changed (checked on {what})")
        return logits

    def score(self, corpus: Corpus) -> None:
        inputs, targets = corpus.val_windows(self.tier.val_windows, self.tier.seq_len)
        losses = token_losses(self.scored(inputs, copies=self.tier.causal_copies), targets)
        val = float(losses.mean())
        self.late_loss = float(losses[:, self.tier.seq_len // 2:].mean())
        self.val = (inputs, targets, losses)
        self.metrics.update(val_loss=val, val_bpb=val / math.log(2))

    def extrapolation(self, corpus: Corpus) -> None:
        """Loss on positions seq_len..2*seq_len of windows twice the training length, against positions
        seq_len/2..seq_len of the usual ones (gap > 0: longer context hurts)."""
        t = self.tier.seq_len
        inputs, targets = corpus.val_windows(max(self.tier.val_windows // 4, 1), 2 * t)
        losses = token_losses(self.scored(inputs, what="windows twice the training length"), targets)
        long = float(losses[:, t:].mean())
        self.metrics.update(val_loss_2x=long, val_loss_late=self.late_loss, extrapolation_gap=long - self.late_loss)

    def probes(self) -> None:
        p = self.tier.probes
        rng = np.random.default_rng(0x5EED)  # held out: training draws from another stream
        out = {}
        for task in probe_tasks(p):
            inputs, targets = probe_batch(p, max(p.batch_size, p.eval_examples), rng, task)
            pred = self.scored(inputs, "probe", what=f"{task} probe sequences").argmax(-1)
            mask = targets != IGNORE
            out["selcopy_acc" if task == "copy" else f"mqar_acc_p{task[4:]}"] = float((pred[mask] == targets[mask]).mean())
        out["mqar_acc"] = float(np.mean([out[f"mqar_acc_p{n}"] for n in p.pairs]))
        self.metrics.update(out)

    # -- hardware --------------------------------------------------------------------------------
    def hardware(self, corpus: Corpus) -> None:
        tier, t = self.tier, self.tier.seq_len
        pid = self.b.host_pid()
        before = _memory(pid)
        header, _ = self.b.ask("memory")
        n = sum(a.size for k, a in self.weights.items() if k.startswith("lm."))
        if self.cuda:
            activations = number(header, "cuda_peak_bytes", "memory", 0)
        else:
            activations = max(0, _memory(pid, "VmHWM") - before) if pid else 0
        self.metrics.update(peak_mem_mb=(16 * n + activations) / 2**20, activation_mem_mb=activations / 2**20)
        tokens = self.rng.integers(0, VOCAB_SIZE, (1, t))
        forward, prefill = None, math.inf
        for _ in range(3):
            started = time.perf_counter()
            forward = array(self.a.ask("logits", {"tokens": tokens}, model="lm")[1], "logits", (1, t, VOCAB_SIZE), "prefill")
            prefill = min(prefill, time.perf_counter() - started)
        started = time.perf_counter()
        reply = self.b.ask("decode", {"tokens": tokens})[1]
        decode_s = time.perf_counter() - started
        stepped = array(reply, "logits", (1, t, VOCAB_SIZE), "decoded logits")
        if not leak(forward, stepped) <= 2e-2:
            raise CandidateError("step", f"token-by-token decoding disagrees with the forward pass by {leak(forward, stepped):.1e}")
        half = sum(a.nbytes for k, a in reply.items() if k.startswith("half"))
        full = sum(a.nbytes for k, a in reply.items() if k.startswith("full"))
        extras, _ = self.b.ask("extras")
        self.metrics.update(prefill_ms=prefill * 1e3, decode_ms_per_token=decode_s / t * 1e3,
                            decode_mode="recurrent" if self.has_step else "recompute", state_bytes=full, state_context=t,
                            state_bytes_per_token=max(0.0, (full - half) / (t - t // 2)),
                            flops_per_token=number(extras, "flops_per_token", "extras"),
                            compile_ok=extras.get("compile_ok") is True)
        for key in ("compile_graph_breaks", "compile_error"):
            if isinstance(extras.get(key), int | str):
                self.metrics[key] = extras[key] if isinstance(extras[key], int) else extras[key][:300]
        # int8 weights, scored on every other validation window against the full-precision losses there
        inputs, targets, losses = self.val
        rows = np.arange(0, len(inputs), 2)
        self.b.ask("build", {k[3:]: v for k, v in quantized(self.weights).items() if k.startswith("lm.")}, model="lm")
        q = np.concatenate([token_losses(array(self.b.ask("logits", {"tokens": inputs[r]}, model="lm")[1], "logits",
                                               (len(r), t, VOCAB_SIZE), "int8 logits"), targets[r])
                            for r in np.array_split(rows, max(1, math.ceil(len(rows) / tier.batch_size)))])
        increase = float(q.mean() - losses[rows].mean())
        self.metrics.update(quant_loss=increase, val_loss_int8=self.metrics["val_loss"] + increase)

    def save_weights(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.weights, str(path))


def _memory(pid: int | None, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, VmHWM) in bytes, read from its /proc entry."""
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _exponent(a: float, b: float, short: int, long: int) -> float:
    if a <= 0 or b <= 0:
        return 0.0 if b <= a else 1.0
    return math.log(b / a) / math.log(long / short)
