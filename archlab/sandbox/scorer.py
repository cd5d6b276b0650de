"""The trusted side of an evaluation: it owns the data, the targets, every loss, verdict and
count, and never runs candidate code (numpy only: it does not even import torch).

An evaluation runs model servers of the candidate (server.py), each in its own
sandbox (launch.py), and no two of them hold the candidate's code at the same time:
- A: parameters are counted from the weights it sends (safetensors), for every mixer and FFN
  instance of the model and of the probe model; complexity is measured below, at and above the
  training length; the first pass of every causality comparison; then training: it is sent one
  batch per step with the parameters to take it at and replies with the gradients, and the
  optimizer runs here (optim.py), so the trained weights are this side's (copies at a few steps
  give the validation curve: curves.py); timed from here; its peak memory through training.
- B, loaded from the trained LM weights only: the perturbed copies of the check comparisons and step()
  against A's forward(); then the scored rows (validation windows in a random order, long
  windows), one decoding request per token (timed from here), the state it hands back; once
  every score is taken, A's copies on a few validation windows (the display-only curve), then
  the loss with the served weights quantised to int8 (a score like the others).
- P (tiers with probes), loaded from the probe model's weights only: the probe sequences.
- C, loaded from the same weights after B and P are gone: a copy of every row they scored with
  the text after a random cut replaced, in another order (with the weights it was scored with);
  its log-probabilities must equal theirs up to each cut. Then the forward pass decoding must
  agree with, and decoding resumed from the state B handed back at half the context.
- S0, S1, ... (SP0, ... for the probe model), one per layer, holding no model, last: every row B and
  P scored is composed here by the harness's own shell (shell.py, numpy) around the candidate's
  parts, each computed by its layer's server from its own weights sent with the request; the
  logits must be the scored ones (a server's harness code is the candidate's to change).
Every reply is checked for shape, dtype and finiteness; a malformed one rejects the candidate
(`crash`), never the run; a watchdog kills the servers at the wall-clock backstop.
"""

import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import save_file

from archlab.sandbox import clock, launch, mechanisms, optim, shell, wire, zygote
from archlab.sandbox.curves import VAL_WINDOWS, Curves, val_steps
from archlab.sandbox.data import IGNORE, VOCAB_SIZE, Corpus, probe_batch, probe_tasks
from archlab.sandbox.errors import DETAIL_LIMIT, CandidateError
from archlab.sandbox.progress import Progress
from archlab.sandbox.request import param_budget
from archlab.sandbox.tiers import Tier, probe_tier

FLOP_EXPONENT_LIMIT = 1.25  # growth of FLOPs or memory traffic with length above this is super-linear
# This side's clock: one forward at CLOCK_LONG / CLOCK_SPAN x and CLOCK_LONG x the training length (at
# least CLOCK_MIN_LENGTH) and one at CLOCK_BASE_LENGTH, whose time (building the part, the pipe: what
# every request costs besides the forward) is taken off the others. Growth of what remains beyond
# T^CLOCK_EXPONENT_LIMIT is super-linear. Measured through the sandbox (1,024 -> 4,096 tokens, one
# thread, a loaded 2-core machine): the DeltaNet, ablated and gated roots and 100 of ASI-Arch's designs
# (the other 7 are non-causal or depend on their input's length) T^0.90-1.27; fused softmax attention
# (the transformer root) T^1.60-1.62, plain softmax attention T^2.4-2.5. Caches make honest parts
# superlinear further out (the root T^1.6 from 4,096 to 8,192 tokens), so the lengths stop there.
CLOCK_SPAN = 4
CLOCK_LONG = 16
CLOCK_MIN_LENGTH = 256
CLOCK_BASE_LENGTH = 16
# Honest parts reach T^1.4 across fresh servers on a loaded machine (the root at d_model 64: T^0.82-1.38
# in 5 checks): a false verdict fails an honest candidate (and CI), a missed one needs forged counts.
CLOCK_EXPONENT_LIMIT = 1.6
# Below this much work at the shorter length (beyond a request's fixed cost) the growth is noise (a
# linear layer's forward is a fraction of moving its input and output through the pipe): the clock
# cannot resolve it and clears the part. So quadratic work under ~16 ms at 4,096 tokens goes unseen
# by the clock (fused attention at d_model 128 costs ~60 ms there on one core of this machine).
CLOCK_RESOLUTION_S = 0.001
CLOCK_REPEATS = 5
# A verdict from the clock alone (counts linear: compute hidden from the counters, a forged count, or
# a busy machine) is measured up to this many times, keeping the best time at each length (3 once
# named a linear mixer T^1.95 on a 2-core machine running three jobs; it passed 5 of 5 re-checks).
CLOCK_MEASUREMENTS = 5
CLOCK_TOLERANCE = 1e-4  # float32 outputs of one part at two lengths, on the positions both have (relative)
FLOAT64_TOLERANCE = 1e-9  # the same comparisons in float64, where a part runs in it
# Padding every input to one block of the training length keeps the cost flat below it (block attention
# over the whole window looks linear above it): FLOPs from seq_len/2 to seq_len must grow at least this fast.
# (The root's chunk padding at the micro tier's seq_len = its chunk size gives ~0.45.)
FLAT_EXPONENT_LIMIT = 0.3
CUTS = (0, 1, 15, 16, 31, 63, 64, 65)  # inside and across the usual chunk sizes
# Trained models' logits, B against C (they batch differently), as log-probabilities: the most a
# leak can move the loss of one token. Measured honest gaps: see the `causal_gap` metric.
CAUSAL_TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}
# The scored logits against the harness's shell composed here around the parts' outputs (shell.py): the
# largest gap of any token's log-probability, and of the mean loss of the scored tokens, in nats, and
# of the accuracy at the scored tokens (a loose per-token bound let a probe solver lower every token
# above the answer and keep the mean loss: accuracy 1.0 against 0.06 at the GPU's bounds).
# CPU: float32 in B against float64 here, measured 1e-6 to 1.2e-5 nats (micro, smoke). A GPU scores
# under bf16 autocast (logits to ~3 digits) while the shell is float64: its rounding moves single
# log-probabilities by a few hundredths, the mean loss hardly (it averages out); an estimate, not yet
# measured on a GPU. A forgery must move the mean loss to be worth anything.
SHELL_TOLERANCE = {"cpu": (1e-3, 1e-3, 0.01), "cuda": (2.0, 1e-2, 0.01)}
# The gradients server A reports, on GRADIENT_CHECKS training steps drawn here, against the shell's own
# backward pass (shell.gradients) around each part's gradients from its own layer's server: the
# relative error of each parameter's (its norm over the larger of its own norm and 1e-3 of all of
# them), and the loss against SHELL_TOLERANCE's. Before, a server that sent sign(g) scaled up made
# AdamW take full steps (micro val_loss 4.015 vs 4.095) and one that computed every 4th step and
# re-sent the rest trained 3.4x "faster" (red team, 2026-12-05). Measured honest errors (float32 in A,
# float64 here): 1e-6 (hybrid) to 4e-5 (the DeltaNet root's chunked solve). A GPU trains under bf16
# autocast: an estimate, not yet measured on a GPU. Finite differences were tried first: a top-1
# router's tokens flip within any step float32 resolves (errors 0.1-4 on an honest candidate).
GRADIENT_CHECKS = 8
GRADIENT_TOLERANCE = {"cpu": 1e-2, "cuda": 0.1}
DECODE_TOLERANCE = {"cpu": 1e-2, "cuda": 1e-1}  # token-by-token decoding against the forward pass, nats
# Integers in the weights, all told: counters and index buffers fit; more were weights in disguise
# (bfloat16 bit patterns the int8 score skipped, or several packed into each: red team, 2026-12-04).
INTEGER_LIMIT = 4096
PART_SCALE = 100.0  # parts see unit-normal inputs: a larger output buys no more slack in their checks
RESUMED_TOKENS = 8  # decoded in C from B's state at half the context (scorer.resume_in_c)
DECODE_TOKENS = 32  # decoding latency: the mean of the last requests, at nearly full context
MAX_REPLY = 1 << 31
MEMORY_POLL_S = 0.005  # how often the scorer reads a training server's resident memory


# -- one model server, seen from here ---------------------------------------------------------
class Taken(NamedTuple):
    """A training step as server A took it, kept for the gradient check (compose_in_s)."""

    model: str  # "lm" or "probe"
    step: int
    progress: float  # training_progress() during the step
    seed: int  # of the parts' randomness (shell.part_seed)
    params: dict  # the parameters as sent for the step ("p." + each one's first name)
    built: dict  # the model as built (its buffers)
    groups: list  # the parameters, as lists of the names of one tensor each
    inputs: np.ndarray
    targets: np.ndarray
    grads: dict = {}  # the gradients the server reported, by each parameter's first name
    loss: float | None = None  # the loss it reported

    def weights(self) -> dict:
        """The model the step was taken at, under its own names."""
        return _trained(self.built, self.groups, _named(self.params, "p."))


class Training(NamedTuple):
    reply: dict  # the server's final reply
    weights: dict  # the trained model: as built, with the optimizer's parameters
    seconds: float  # from sending the fourth batch to the final reply (the first three pay for warm-up)
    tokens: int  # of the batches in that time
    copies: dict  # step -> the weights before it, for the steps asked for (the validation curve)
    taken: list  # the checked steps (Taken)


class Server:
    """A model server, forked from a launch pad (zygote.py) warm, given the candidate's source later."""

    LOG_CAP = 4 << 20  # bytes of a server's own output kept in the evaluation's log

    def __init__(
        self, name: str, job: dict, log: Path, deadline: float, pad: zygote.LaunchPad, scratch: str, isolate: bool
    ):
        self.name, self.deadline, self.cpu_s, self.pad, self.isolate = name, deadline, job.get("cpu_s"), pad, isolate
        self.seed = int(job.get("seed", 0))
        self.expired = False  # set by the evaluation's watchdog when it kills the server at the backstop
        self.closed = False
        self.pids: tuple[int, int] | None = None  # (the process to kill, the server) as this machine sees them
        # Nothing of the host is handed over: stdin and stdout are pipes to this process, stderr a pipe
        # drained into the log from here (a shared log file would connect the servers of a candidate).
        ends = [os.pipe() for _ in range(3)]
        theirs, ours = (ends[0][0], ends[1][1], ends[2][1]), (ends[0][1], ends[1][0], ends[2][0])
        try:  # its title names the log in `ps` (the server never opens it: it is not in its view)
            self.bridge = pad.fork(
                f"{sys.executable} -m archlab.sandbox.server --for={log}",
                job.get("uid"),
                scratch,
                isolate,
                list(theirs),
                deadline,
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self.stdin, self.stdout, self.stderr = ends[0][1], ends[1][0], os.fdopen(ends[2][0], "rb")
        self.tail = b""
        self._drain = threading.Thread(target=self._drain_log, args=(log,), daemon=True, name=f"archlab-log-{name}")
        self._drain.start()
        self.warm_hwm, self.pipe_s, self.rss_peak = 0, 0.0, 0
        self._send(job)

    def warm(self) -> None:
        """Wait until the server has contained itself (nothing of the candidate yet), find its
        processes, and time the pipe: a request with a decoding step's reply, answered by
        archlab's code alone."""
        if self._receive()[0].get("warm") is not True:
            raise CandidateError("crash", f"server {self.name} did not start")
        self.pids = self._host_pids()
        self.warm_hwm = _memory(self.host_pid(), "VmHWM")
        self.pipe_s = math.inf
        for _ in range(20):
            started = time.perf_counter()
            self._send({"ping": True}, {"token": np.zeros(1, np.int64)})
            self._receive()
            self.pipe_s = min(self.pipe_s, time.perf_counter() - started)

    def load(self, source: str, diagnostics: bool) -> dict:
        """Give it the candidate; returns the ready message (its contract facts), checked for types."""
        self._send({"source": source, "diagnostics": diagnostics})
        ready = self._receive()[0]
        if ready.get("ready") is not True or not isinstance(ready.get("env"), dict):
            raise CandidateError("crash", f"server {self.name} sent no ready message ({str(ready)[:200]})")
        return ready

    def ask(self, op: str, arrays: dict | None = None, **fields) -> tuple[dict, dict]:
        self._send({"op": op, **fields}, arrays)
        return self._receive()

    def train(
        self,
        which: str,
        tier: Tier,
        batches,
        progress,
        built: dict,
        checked: set[int],
        curves: Curves | None = None,
        snapshots: tuple[int, ...] | list[int] = (),
    ) -> "Training":
        """Serve `tier.steps` training batches on request, each with the parameters to take the step
        at and the seed of the parts' randomness, and run the optimizer (optim.py) on the gradients
        each request brings; the steps in `checked` are kept for the gradient check (compose_in_s).
        The loss it reports with each request goes to the progress display and to `curves`."""
        self._send({"op": "train", "model": which})
        self.rss_peak, watching = 0, threading.Event()
        watcher = threading.Thread(target=self._watch_memory, args=(watching,), daemon=True)
        watcher.start()
        try:
            return self._train(which, tier, batches, progress, built, checked, curves, snapshots)
        finally:
            watching.set()
            watcher.join()

    def _watch_memory(self, done: threading.Event) -> None:
        """The server's resident memory, read from here every MEMORY_POLL_S while it trains: a peak
        the process keeps itself (VmHWM) can be reset from inside (malloc_trim, then clear_refs once
        it made itself dumpable again: -79% at smoke, red team 2026-12-05); memory in use cannot."""
        while not done.wait(MEMORY_POLL_S):
            self.rss_peak = max(self.rss_peak, _memory(self.host_pid()))

    def _train(self, which, tier, batches, progress, built, checked, curves, snapshots) -> "Training":
        tokens, started, copies, groups, opt, taken = 0, None, {}, [], None, []
        seeds = (self.seed * 2 + (which == "probe")) << 20  # each step's: seeds + step (deterministic, as training)
        for step in range(tier.steps):
            header, arrays = self._receive()
            if header.get("need") != step:
                raise CandidateError(
                    "crash", f"server {self.name} asked for {str(header)[:100]} instead of training batch {step}"
                )
            if step == 0:
                groups = _parameter_groups(header.get("params"), built)
                opt = optim.AdamW({names[0]: built[names[0]] for names in groups}, tier.lr, tier.steps, tier.warmup)
            else:
                _took(taken, step - 1, arrays, header.get("loss"))
                opt.step(_named(arrays, "g."))
            progress(step=step, steps=tier.steps, loss=header.get("loss"))
            if curves is not None and step:
                curves.train_loss(step, header.get("loss"))
            if step in snapshots:
                copies[step] = _trained(built, groups, opt.params)
            inputs, targets = next(batches)
            if step == 3:
                started = time.perf_counter()
            tokens += inputs.size if step >= 3 else 0
            params = {"p." + k: v for k, v in opt.params.items()}  # the optimizer never changes them in place
            if step in checked:  # no work here a server could time: the step is kept by reference
                taken.append(
                    Taken(which, step, step / tier.steps, seeds + step, params, built, groups, inputs, targets)
                )
            self._send({"seed": seeds + step}, {"inputs": inputs, "targets": targets, **params})
        header, arrays = self._receive()
        _took(taken, tier.steps - 1, arrays, header.get("train_loss"))
        opt.step(_named(arrays, "g."))
        seconds = time.perf_counter() - started if started is not None else 0.0
        if curves is not None:
            curves.train_loss(tier.steps, header.get("train_loss"))
        trained = _trained(built, groups, opt.params)
        buffers = _named(arrays, "b.")
        for key in sorted(set(trained) - {n for names in groups for n in names}):
            if key not in buffers or buffers[key].shape != built[key].shape:
                raise CandidateError("crash", f"server {self.name} did not send the buffer {key[:80]!r} after training")
            if not np.array_equal(buffers[key], built[key]):
                raise CandidateError(
                    "tamper",
                    f"training changed the buffer {key[:80]!r}: what a model learns must be a parameter, which "
                    "the scorer's optimizer trains (a buffer stays as the model was built)",
                )
        return Training(header, trained, seconds, tokens, copies, taken)

    def host_pid(self) -> int | None:
        """The model server's pid as this machine sees it: its /proc is readable from here."""
        return self.pids[1] if self.pids else None

    def used_cpu_s(self) -> float:
        """CPU seconds used by the server and everything it started (the scorer's clock)."""
        return clock.tree_cpu_s(self.pids[0]) if self.pids else 0.0

    def _host_pids(self) -> tuple[int, int] | None:
        """While only archlab's code runs in them: the bridge (the launch pad's child) has one child, the
        init of the server's own PID namespace (where isolated), whose one child is the server."""
        pad = self.pad.host_pid()
        bridge = next((c for c in zygote.children(pad) if zygote.nspid(c)[-1:] == [self.bridge]), None) if pad else None
        top = zygote.children(bridge)[:1] if bridge else []
        server = (zygote.children(top[0])[:1] if self.isolate else top) if top else []
        return (top[0], server[0]) if server else None

    def kill(self) -> None:
        """Kill the server and everything the candidate started (its PID namespace's init, where isolated)."""
        if self.pids:
            try:
                os.kill(self.pids[0], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Kill it and everything in its namespaces, and wait until they are gone (once)."""
        if self.closed:
            return
        self.closed = True
        self.kill()
        for fd in (self.stdin, self.stdout):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.pad.wait(self.bridge, 10) is None and not self.pids:
            raise zygote.LaunchPadError(f"server {self.name} did not end")
        self._drain.join(timeout=10)

    # -- the pipes -------------------------------------------------------------------------------
    def _drain_log(self, log: Path) -> None:
        """Read everything the server prints (it must never block on a full pipe) and keep the first
        LOG_CAP bytes in the log; a log that cannot be written (a full disk) only loses the log."""
        kept, out = 0, None
        try:
            out = open(log, "ab")
        except OSError:
            pass
        for line in iter(self.stderr.readline, b""):
            self.tail = (self.tail + line)[-4000:]
            if out is not None and kept < self.LOG_CAP:
                try:
                    out.write(f"[{self.name}] ".encode() + line[: self.LOG_CAP - kept])
                    out.flush()
                except OSError:
                    out = None
            kept += len(line)
        self.stderr.close()
        if out is not None:
            try:
                if kept > self.LOG_CAP:
                    out.write(f"[{self.name}] ... {kept - self.LOG_CAP:,} more bytes of output left out\n".encode())
                out.close()
            except OSError:
                pass

    def _send(self, header: dict, arrays: dict | None = None) -> None:
        try:
            wire.send(self.stdin, header, arrays)
        except (BrokenPipeError, OSError, ValueError):
            raise self._died() from None

    def _receive(self) -> tuple[dict, dict]:
        try:
            header, arrays = wire.receive(self.stdout, MAX_REPLY, self._wait)
        except (wire.WireError, OSError, ValueError) as e:
            if not self.expired and "closed" not in str(e):
                raise CandidateError("crash", f"server {self.name} sent a malformed reply: {e}") from None
            raise self._died() from None
        error = header.get("error")
        if error is not None:
            if not (isinstance(error, dict) and isinstance(error.get("reason"), str)):
                raise CandidateError("crash", f"server {self.name} sent a malformed error: {str(error)[:200]}")
            raise CandidateError(error["reason"][:40], str(error.get("detail"))[:DETAIL_LIMIT])
        return header, arrays

    def _wait(self, fd: int) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            self.expired = True
            raise self._died()

    def _died(self) -> CandidateError:
        if self.expired:
            self.kill()
            return CandidateError(
                "timeout",
                f"server {self.name} did not answer within the wall-clock backstop (its own "
                "CPU time was not used up: it waited, or the machine was overloaded)",
            )
        code = self.pad.wait(self.bridge, 10)
        self._drain.join(timeout=5)
        tail = self.tail.decode("utf-8", "replace").strip()
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return CandidateError("timeout", f"server {self.name} used up its {self.cpu_s:.0f} CPU-seconds")
        if code in (-signal.SIGKILL, 137) or "MemoryError" in tail or "bad_alloc" in tail:
            return CandidateError("memory", f"server {self.name} was killed (exit {code}): {tail[-600:]}")
        return CandidateError("crash", f"server {self.name} exited with {code} and no result: {tail[-1200:]}")


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


def number(header: dict, key: str, what: str, default=None) -> float:
    value = header.get(key, default)
    if value is default and default is not None:
        return default
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):
        raise CandidateError("crash", f"{what}: {key} is not a finite number ({str(value)[:60]})") from None


def leak(a: np.ndarray, b: np.ndarray) -> float:
    """Relative difference of two part outputs that a causal part makes equal. The scale is the
    candidate's own, so it is capped (PART_SCALE): an output inflated by a constant buys no slack
    beyond it. The score's logits are compared by logprob_gap instead."""
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / min(max(np.abs(a).max(), 1e-30), PART_SCALE))


def logprob_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference, in nats, between the log-probabilities two sets of logits give any token:
    the most a difference between them can move a loss. Not relative to the logits' size, which the
    candidate controls: a constant added to every logit changes no probability, and once inflated
    the check's own scale with it (a next-token oracle passed as 2e-5 relative)."""
    if a.size == 0:
        return 0.0
    return float(np.abs(shell.log_softmax(a.astype(np.float64)) - shell.log_softmax(b.astype(np.float64))).max())


def numbers(a: np.ndarray) -> int:
    """How many numbers an array carries, in float32s: a wider dtype (int64, float64) counts double."""
    return max(a.size, -(-a.nbytes // 4))


def parameters(a: np.ndarray) -> int:
    """How many parameters a weight counts as in the budget: a float is one, as the scorer serves it
    with bfloat16's 16 bits (canonical), a complex number two; integers count every 16 bits they hold,
    so an int32 buffer is two (counted as one, two bfloat16 weights packed into each trained at twice
    the budget)."""
    return {"f": a.size, "c": 2 * a.size}.get(a.dtype.kind, -(-a.nbytes // 2))


def canonical(weights: dict) -> dict:
    """Weights as the scorer serves them: real numbers only, floats rounded to bfloat16 precision (kept
    as float32), so that no weight carries a second number in its low bits; the budget counts each
    float as one number. Integer buffers pass as they are (counted by their bytes)."""
    out = {}
    for key, w in weights.items():
        if w.dtype.kind == "f":
            if not np.isfinite(w).all():
                raise CandidateError("nan", f"the trained weight {key} holds NaN or infinity")
            bits = w.astype(np.float32).view(np.uint32)
            w = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        elif w.dtype.kind not in "iub":
            raise CandidateError("params", f"the weight {key} is {w.dtype}: weights must be real numbers")
        out[key] = w
    return out


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy per position (nan where the target is IGNORE)."""
    lp = shell.log_softmax(logits)
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
    integers = 0
    for key, value in weights.items():
        parts = key.split(".")
        if value.dtype.kind in "iub":
            integers += value.size
        if key in harness:  # (float: an integer one carried packed mixer weights the budget skipped)
            if value.shape != harness[key] or value.dtype.kind != "f":
                raise CandidateError(
                    "params", f"{key} is {value.dtype} of shape {value.shape}, not the harness's float {harness[key]}"
                )
            continue
        if (
            len(parts) < 4
            or parts[0] != "blocks"
            or not re.fullmatch(r"[0-9]{1,4}", parts[1])
            or int(parts[1]) >= n_layers
            or parts[2] not in ("mixer", "ffn")
        ):
            raise CandidateError("params", f"the model carries {key[:80]!r} outside its blocks' mixers and FFNs")
        i = int(parts[1])
        if parts[2] == "mixer":
            per_block[i] += parameters(value)
        else:
            ffn[i] += parameters(value)
    if integers > INTEGER_LIMIT:
        raise CandidateError(
            "params",
            f"the weights hold {integers:,} integers: what a model learns must be floats, which the scorer "
            f"rounds to bfloat16 and quantises to int8 (integer buffers: up to {INTEGER_LIMIT:,} numbers)",
        )
    for i in range(n_layers):
        per_block[i] += max(0, ffn[i] - swiglu_params(d_model)) if has_ffn else 0
        if not has_ffn and ffn[i] != swiglu_params(d_model):
            raise CandidateError("params", f"block {i}'s MLP carries {ffn[i]:,} numbers, not the harness MLP's")
    worst = max(per_block)
    if limit is not None and limit >= 0 and worst > limit:
        block = per_block.index(worst)
        raise CandidateError(
            "params",
            f"{worst:,} numbers in block {block}'s mixer (and FFN beyond the harness MLP), "
            f"over the run's budget of {limit:,}",
        )
    return worst


@lru_cache(maxsize=16)
def root_mixer_params(d_model: int, n_heads: int) -> int:
    """The root DeltaNet mixer's parameter count at this width: trusted template code, counted in a
    plain subprocess (this process never imports torch)."""
    code = (
        "import sys\nfrom archlab.sandbox import contract\nfrom archlab.templates import render_root\n"
        "m = contract.build_mixer(contract.load(render_root('deltanet'), name='root'), int(sys.argv[1]), int(sys.argv[2]))\n"
        "print(sum(p.numel() for p in m.parameters()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(d_model), str(n_heads)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(out.stdout.split()[-1])


def quantized(weights: dict) -> dict:
    """Weight-only int8: every float weight rounded (symmetric absmax scale) and dequantised, a matrix
    per output row, a vector or scalar whole. Not by shape alone: a matrix kept flat and reshaped in
    forward() skipped the score (quant_loss 0 against 0.16 as a matrix: red team, 2026-12-05)."""
    out = {}
    for key, w in weights.items():
        if w.size and w.dtype.kind == "f":
            flat = w.reshape(w.shape[0] if w.ndim >= 2 else 1, -1).astype(np.float32)
            scale = np.maximum(np.abs(flat).max(1, keepdims=True), 1e-12) / 127
            w = (np.clip(np.round(flat / scale), -127, 127) * scale).reshape(w.shape).astype(w.dtype)
        out[key] = w
    return out


# -- the evaluation -----------------------------------------------------------------------------
class Run(NamedTuple):
    """Rows the shell composes (compose_in_s): scored ones, or a checked training step's batch."""

    inputs: np.ndarray
    weights: dict  # one model's, under its own names
    taken: Taken | None  # the training step (its parts run as in training), or None: scored rows


class Scored(NamedTuple):
    """Rows a server scored, waiting for their checks: C's perturbed copies, S's composition."""

    inputs: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    model: str  # "lm" or "probe"
    copies: int  # perturbed copies of each row that C scores
    what: str  # for messages
    weights: dict  # the weights they were scored with


class Evaluation:
    """One seed of one candidate at one tier: model servers whose lives with the
    candidate's code never overlap (A checks and trains; B is checked against A and scored; C,
    loaded from the same weights, checks B; one server per layer composes the scores: compose_in_s),
    so no channel between processes can connect them. Each is forked when it is needed from a warm launch pad (zygote.py): one from this process's
    pool for every server where the kernel lets a fork isolate itself, else one per server."""

    def __init__(self, source: str, tier: Tier, seed: int, opt: dict, host_dir: Path, log: Path):
        self.source, self.tier, self.seed, self.opt = source, tier, seed, opt
        self.rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # unknown to any candidate
        threads = opt["threads"]
        wall = opt.get("timeout_s") or tier.timeout_s
        self.deadline = time.monotonic() + 3 * wall + 60  # a backstop: the real bound is each server's CPU time
        self.cuda = opt.get("device") != "cpu" and (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"))
        self.device = "cuda" if self.cuda else "cpu"
        self.diagnostics = not opt.get("skip_static_checks")
        job = {
            "tier": tier.model_dump(mode="json"),
            "seed": seed,
            "threads": threads,
            "device": opt.get("device"),
            "memory_gb": None if self.cuda else opt.get("memory_gb"),
            "nproc": launch.DEFAULT_NPROC,
            "cpu_s": wall * max(threads, 1) * 1.5 + 20,
        }
        self.job, self.log, self.host_dir = job, log, host_dir
        self.progress = Progress(log, wall)
        self.servers: dict[str, Server] = {}
        self._lock, self.closed = threading.Lock(), False
        hide = tuple(str(Path(p).resolve()) for p in [opt.get("data")] if p)
        self.isolate = bool(launch.launcher().facts.get("isolates"))
        roles = (
            ("A", "B", *(("P",) if tier.probes is not None else ()), "C", *self.shell_servers())
            if tier.steps
            else ("A", "B")
        )
        for name in roles:
            (host_dir / name).mkdir()
            os.chmod(host_dir / name, 0o777)  # the plain and unshare launchers: the dropped uid works in it
        if self.isolate:
            pad = zygote.take(self.cuda, threads, hide)
            self.pads = {name: pad for name in roles}
        else:  # each in a launcher of its own, all warming up at once
            self.pads = {name: zygote.LaunchPad(self.cuda, threads, hide, host_dir / name) for name in roles}
        self.watchdog = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
        self.watchdog.daemon = True
        self.watchdog.start()
        self.metrics: dict = {}
        self.env: dict = {}
        self.weights: dict = {}  # the trained weights as the scorer serves them (lm.*, probe.*)
        self.curves: Curves | None = None  # loss curves (curves.py), from the start of training
        self.copies: dict = {}  # step -> a copy of the weights after it, for the validation curve
        self.pending: list = []  # scored rows waiting for their copies in server C
        self.taken: list = []  # training steps waiting for their gradient check (compose_in_s)

    def _expire(self) -> None:
        """The wall-clock backstop: kill every server (a blocked pipe write then fails too)."""
        for server in self.servers.values():
            server.expired = True
            server.kill()

    def close(self) -> None:
        """End every server, then the launch pads (a shared one goes back to the pool once each of its
        servers is known to be gone). Safe from another thread (runner.stop_all) and more than once."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.watchdog.cancel()
        ended = True
        for server in self.servers.values():
            try:
                server.close()
            except zygote.LaunchPadError:
                ended = False
        for pad in set(self.pads.values()):
            if self.isolate and ended:
                zygote.give_back(pad)
            else:
                pad.close()

    def _start(self, name: str) -> Server:
        """Fork server `name` and give it the candidate: every server before it is gone by now."""
        job = {**self.job, "role": name, "uid": launch.launcher().next_uid()}
        with self._lock:  # never a server forked after close() ended the others
            if self.closed:
                raise CandidateError("crash", "the evaluation was stopped")
            try:
                server = self.servers[name] = Server(
                    name,
                    job,
                    self.log,
                    self.deadline,
                    self.pads[name],
                    launch.launcher().scratch(self.host_dir / name),
                    self.isolate,
                )
            except zygote.LaunchPadError as e:
                if self.isolate:
                    raise  # this machine's fault: no candidate can reach an isolated server's launch pad
                raise CandidateError("crash", str(e)) from None  # it may have been killed by the previous server
        server.warm()
        ready = server.load(self.source, self.diagnostics)
        facts = (ready.get("has_step"), ready.get("has_ffn"), ready.get("dtype"))
        if name == "A":
            self.facts = facts
            self.has_step, self.has_ffn = bool(facts[0]), bool(facts[1])
            self.dtype = "float64" if facts[2] == "float64" else "float32"
            self.env = {k: v for k, v in ready["env"].items() if isinstance(k, str) and isinstance(v, str | None)}
        elif facts != self.facts:
            raise CandidateError("non_causal", "two servers of the same candidate describe it differently")
        return server

    def _end(self, name: str) -> None:
        self.servers[name].close()

    def run(self) -> dict:
        self.progress("checks")
        a = self._start("A")
        plan = self.check_plan()
        firsts = self.checks_in_a(a, plan)
        corpus = None
        if self.tier.steps:
            corpus = Corpus.load(self.opt.get("data"))
            self.train(a, corpus)
        self._end("A")
        self.progress("checks")
        b = self._start("B")
        self.checks_in_b(b, plan, firsts)
        if not self.tier.steps:
            return self.metrics
        self.progress("scoring")
        self.score(b, corpus)
        self.val_curve(b)
        if self.tier.hardware:
            self.quant_in_b(b)
        self._end("B")
        if self.tier.probes is not None:
            self.progress("scoring the probes")
            p = self._start("P")
            self.score_probes(p)
            self._end("P")
        self.progress("checking the scores" + (", measuring" if self.tier.hardware else ""))
        c = self._start("C")
        self.check_copies(c)
        if self.tier.hardware:
            self.hardware_in_c(c)
        self._end("C")
        self.progress("checking the scores: the harness's model")
        self.compose_in_s()
        return self.metrics

    # -- checks ----------------------------------------------------------------------------------
    def check_plan(self) -> list[tuple]:
        """Every causality comparison of the checks: (part, input, perturbed copy, cuts, fields, tolerance).
        float64 where the part runs in it (a leak of 1e-9 relative is caught), training and evaluation
        mode, several seeds and cuts; then once in float32 at the training length with gradients."""
        tier, d = self.tier, self.tier.d_model
        length = tier.causality_length
        cuts = sorted(
            {c for c in CUTS if c < length - 1}
            | {length // 2 + 7, length - 2, *self.rng.integers(0, length - 1, 4).tolist()}
        )
        tolerance = FLOAT64_TOLERANCE if self.dtype == "float64" else 1e-5
        runs = [(length, 2, cuts, seed, self.dtype, tolerance, seed < 2, False) for seed in range(3)]
        if tier.seq_len != length:
            runs.append(
                (
                    tier.seq_len,
                    3,
                    [tier.seq_len // 3, int(self.rng.integers(0, tier.seq_len - 1)), tier.seq_len - 2],
                    7,
                    "float32",
                    1e-5,
                    True,
                    True,
                )
            )
        plan = []
        for part in ("Mixer", "FFN") if self.has_ffn else ("Mixer",):
            for length, batch, cuts, seed, dtype, tol, train, grad in runs:
                x = self.rng.standard_normal((batch, length, d)).astype(dtype)
                copies = []
                for cut in cuts:
                    x2 = x.copy()
                    x2[:, cut + 1 :] = self.rng.standard_normal((batch, length - cut - 1, d))
                    copies.append(x2)
                fields = dict(part=part, seed=seed, dtype=dtype, train=train, grad=grad)
                plan.append((np.tile(x, (len(cuts), 1, 1)), np.concatenate(copies), cuts, batch, fields, tol))
                if dtype == "float32" and self.dtype == "float64":  # its twin: see compare()
                    x64, copies64 = plan[-1][0].astype(np.float64), plan[-1][1].astype(np.float64)
                    plan.append((x64, copies64, cuts, batch, {**fields, "dtype": "float64"}, FLOAT64_TOLERANCE))
        return plan

    def checks_in_a(self, a: Server, plan: list) -> tuple:
        """Parameters, complexity, one forward/backward, and the first pass of every comparison."""
        tier, d = self.tier, self.tier.d_model
        header, weights = a.ask("build", model="lm")
        self.built = {"lm": weights}  # where training starts: the optimizer here takes it on (optim.py)
        self.patterns = {"lm": self._pattern(header, tier.n_layers)}
        if tier.probes is not None and tier.steps:
            header, self.built["probe"] = a.ask("build", model="probe")
            self.patterns["probe"] = self._pattern(header, tier.probes.n_layers)
        self.metrics["param_limit"] = self._limit(d)  # the budget per block at this width; None: no budget
        self.metrics["mixer_params"] = budget(weights, d, tier.n_layers, self.has_ffn, self.metrics["param_limit"])
        self.metrics["params"] = int(sum(w.size for w in weights.values()))
        self.complexity(a)
        header, _ = a.ask("check_lm", {"tokens": self.rng.integers(0, VOCAB_SIZE, (2, 64))})
        if header.get("finite") is not True:
            raise CandidateError("nan", "non-finite loss or gradient in the first forward/backward pass")
        self.metrics["has_step"] = self.has_step
        return self.first_passes(a, plan), self.step_first(a) if self.has_step else None

    def checks_in_b(self, b: Server, plan: list, firsts: tuple) -> None:
        """The perturbed copies, and step() against A's forward(), in B."""
        self.compare(b, plan, firsts[0])
        if self.has_step:
            self.step_compare(b, *firsts[1])

    def first_passes(self, a: Server, plan: list) -> list:
        return [
            array(a.ask("part", {"x": x}, **fields)[1], "y", x.shape, f"{fields['part']}.forward")
            for x, _, _, _, fields, _ in plan
        ]

    def compare(self, b: Server, plan: list, firsts: list) -> None:
        """B's outputs for the perturbed copies must equal A's for the originals up to every cut. A
        float32 difference is rounding, not a leak, where the same comparison in float64 (its twin in
        the plan, for a part that runs in float64) is exact: a causal FFT convolution followed by a norm
        moved 2.2e-5 in float32 and 1.5e-13 in float64 (newcomer, 2026-12-05)."""
        failed = []
        for (x, perturbed, cuts, batch, fields, tol), y in zip(plan, firsts):
            part = fields["part"]
            y2 = array(b.ask("part", {"x": perturbed}, **fields)[1], "y", x.shape, f"{part}.forward")
            diffs = [
                leak(y[i * batch : (i + 1) * batch, : cut + 1], y2[i * batch : (i + 1) * batch, : cut + 1])
                for i, cut in enumerate(cuts)
            ]
            worst = int(np.argmax(diffs))
            failed.append(None if diffs[worst] <= tol else (diffs[worst], cuts[worst]))
        for k, ((x, _, _, _, fields, _), failure) in enumerate(zip(plan, failed)):
            twin = k + 1 if k + 1 < len(plan) and plan[k + 1][4] == {**fields, "dtype": "float64"} else None
            if failure is None or (fields["dtype"] == "float32" and twin is not None and failed[twin] is None):
                continue
            diff, cut = failure
            raise CandidateError(
                "non_causal",
                f"{fields['part']} outputs at positions <= {cut} changed by {diff:.1e} "
                f"(relative, {fields['dtype']}, {'train' if fields['train'] else 'eval'} mode, "
                f"length {x.shape[1]}) when only later positions changed",
            )

    def step_first(self, a: Server, length: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """A random input and the mixer's forward() of it in A (evaluation mode)."""
        x = self.rng.standard_normal((2, length, self.tier.d_model)).astype(self.dtype)
        return x, array(
            a.ask("part", {"x": x}, part="Mixer", seed=11, dtype=self.dtype, train=False)[1],
            "y",
            x.shape,
            "Mixer.forward",
        )

    def step_compare(self, b: Server, x: np.ndarray, forward: np.ndarray) -> None:
        """step() token by token in B must agree with A's forward(); the state it ends with is counted."""
        reply = b.ask("step", {"x": x}, seed=11, dtype=self.dtype)[1]
        err = leak(forward, array(reply, "y", x.shape, "Mixer.step"))
        if not err <= (1e-6 if self.dtype == "float64" else 2e-3):
            raise CandidateError("step", f"step() disagrees with forward() by {err:.1e} (relative, eval mode)")
        self.metrics["mixer_state_bytes"] = (
            sum(a.size for k, a in reply.items() if k != "y") * 4 // 2
        )  # float32, batch 1

    def complexity(self, a: Server) -> None:
        """Whether one forward of each part grows (near-)linearly with length, at the model's width and
        at the probe model's. Two witnesses: the server's own count of FLOPs and memory traffic at lengths
        below, at and above the training length, which can convict but never acquit (it is the
        candidate's report: a candidate that rewrote it passed full attention as linear, 2026-12-04);
        and this side's clock, CPU time (GPU: wall time) of forwards at 4x and 16x that length, which a
        candidate can lengthen but not shorten. Growth in either beyond its limit is super-linear."""
        tier = self.tier
        shapes = [(tier.d_model, tier.seq_len, tier.complexity_lengths)]
        if tier.probes is not None:
            shapes.append(
                (tier.probes.d_model, tier.probes.seq_len, (2 * tier.probes.seq_len, 4 * tier.probes.seq_len))
            )
        quadratic = []
        for n, (d, seq_len, extra) in enumerate(shapes):
            lengths = sorted(set(extra) | {max(16, seq_len // 2), seq_len})
            for part in ("Mixer", "FFN") if self.has_ffn else ("Mixer",):
                counts = self._counts(a, part, d, lengths)
                worst = [_growth(counts, lengths, j) for j in range(2)]  # FLOPs, traffic
                timed = self._clock(a, part, d, seq_len)
                for _ in range(CLOCK_MEASUREMENTS - 1):  # clock growth alone may be a busy machine: again
                    if max(worst) > FLOP_EXPONENT_LIMIT or not _superlinear(timed):
                        break
                    timed = self._clock(a, part, d, seq_len, timed["seconds"])
                if n == 0:
                    key = "" if part == "Mixer" else "ffn_"
                    self.metrics.update(
                        {
                            f"{key}flops_exponent": worst[0],
                            f"{key}traffic_exponent": worst[1],
                            f"{key}time_exponent": timed["exponent"],
                            f"{key or 'mixer_'}flops_per_token": counts[-1][0] / lengths[-1],
                            f"{key or 'mixer_'}ms_per_token": timed["seconds"][-1] / timed["lengths"][-1] * 1e3,
                        }
                    )
                half, full = lengths.index(max(16, seq_len // 2)), lengths.index(seq_len)
                flat = _exponent(counts[half][0], counts[full][0], lengths[half], lengths[full]) if half < full else 1.0
                where = f"(d_model {d}, training length {seq_len})"
                if max(worst) > FLOP_EXPONENT_LIMIT or _superlinear(timed):
                    short, long = timed["lengths"][1:]
                    quadratic.append(
                        f"one {part} forward grows like T^{worst[0]:.2f} in FLOPs and T^{worst[1]:.2f} in memory "
                        f"traffic between lengths {lengths} (as the server counts them), and like "
                        f"T^{timed['exponent']:.2f} in CPU time between lengths {short} and {long} {where}"
                    )
                elif flat < FLAT_EXPONENT_LIMIT and n == 0:  # the probes' 32 tokens are inside one chunk of the root's
                    quadratic.append(
                        f"one {part} forward costs as many FLOPs at T={lengths[half]} as at T={lengths[full]} "
                        f"(T^{flat:.2f}) {where}: it works on the whole training window as one block, which "
                        "is full attention at the length it is trained and scored at"
                    )
        self.metrics["complexity"] = "superlinear" if quadratic else "linear"
        if quadratic and not self.opt.get("allow_quadratic"):
            raise CandidateError(
                "quadratic",
                f"{quadratic[0]}; the run only accepts (near-)linear mixers and FFNs "
                "(put softmax attention in LAYERS: the harness's own attention)",
            )

    def _counts(self, a: Server, part: str, d_model: int, lengths: list[int]) -> list[list[float]]:
        """[flops, traffic] of one forward of the part at each length, as server A counts them."""
        rows = a.ask("cost", part=part, d_model=d_model, lengths=lengths)[0].get("cost")
        if not (isinstance(rows, list) and len(rows) == len(lengths) and all(isinstance(r, dict) for r in rows)):
            raise CandidateError("crash", f"server A sent no cost table for the {part}")
        return [[number(r, k, f"{part} cost") for k in ("flops", "traffic")] for r in rows]

    def _clock(self, a: Server, part: str, d_model: int, seq_len: int, best: list | None = None) -> dict:
        """This side's time of one forward of the part (evaluation mode, batch 1, float32) at
        CLOCK_BASE_LENGTH and at 4x and 16x the training length (at least 1,024 and 4,096 tokens, where
        attention's T^2 outweighs any projection), on one CPU thread (two threads' CPU time on a busy
        2-core machine named the root T^1.80 in CI, and ran 2-150x one thread's), each the best of CLOCK_REPEATS requests on fresh inputs
        drawn here (and of `best`, the times of an earlier measurement): the growth exponent of the two long
        forwards less the short one's time (a request's fixed cost), and whether it is resolved (see
        CLOCK_RESOLUTION_S). Time added anywhere cannot hide growth, only slowing the middle request
        on purpose can (README: what it does not protect against). Every input extends the shorter
        ones, and a causal part gives the same outputs where they agree: a part that answers a longer
        request with something else (or whose outputs depend on how long its input is, which
        token-by-token decoding cannot reproduce) is non-causal."""
        long = CLOCK_LONG * max(seq_len, CLOCK_MIN_LENGTH)
        lengths = [CLOCK_BASE_LENGTH, long // CLOCK_SPAN, long]
        seconds = list(best or [math.inf] * len(lengths))
        # A fresh input for every request of a length (an answer remembered from an earlier one is no
        # faster), each length's requests in a row (the allocator warm, as in a run); input r of every
        # length extends input r of the shorter ones.
        xs = self.rng.standard_normal((CLOCK_REPEATS, 1, long, d_model)).astype(np.float32)
        outputs = []
        for i, t in enumerate(lengths):
            outputs.append([])
            for x in xs:
                started = self._clock_now(a)
                _, out = a.ask(
                    "part",
                    {"x": x[:, :t]},
                    part=part,
                    seed=5,
                    dtype="float32",
                    train=False,
                    d_model=d_model,
                    threads=1,
                )
                seconds[i] = min(seconds[i], self._clock_now(a) - started)
                outputs[i].append(array(out, "y", (1, t, d_model), f"{part}.forward"))
        for i in range(1, len(lengths)):
            for x, shorter, longer in zip(xs, outputs[i - 1], outputs[i]):
                t = shorter.shape[1]
                diff = leak(shorter, longer[:, :t])
                if not diff <= CLOCK_TOLERANCE and not self._exact_in_float64(a, part, d_model, x[:, : lengths[i]], t):
                    raise CandidateError(
                        "non_causal",
                        f"{part} outputs at positions <= {t - 1} changed by {diff:.1e} (relative, eval mode) "
                        f"between an input of length {t} and one of length {longer.shape[1]} that extends it: "
                        "they depend on what comes later, or on how long the input is",
                    )
        base, short, full = seconds
        return {
            "lengths": lengths,
            "seconds": seconds,
            "exponent": _exponent(max(short - base, 1e-6), max(full - base, 1e-6), lengths[1], lengths[2]),
            "resolved": short - base >= CLOCK_RESOLUTION_S,
        }

    def _exact_in_float64(self, a: Server, part: str, d_model: int, x: np.ndarray, t: int) -> bool:
        """Whether a float32 difference between the outputs for `x` and for its first `t` positions is
        rounding: the part runs in float64 and there they agree (an FFT convolution's float32 rounding
        depends on the transform's length: 1e-4 relative, 1.5e-13 in float64; newcomer, 2026-12-05)."""
        if self.dtype != "float64":
            return False
        short, long = (
            array(
                a.ask("part", {"x": y}, part=part, seed=5, dtype="float64", train=False, d_model=d_model)[1],
                "y",
                y.shape,
                f"{part}.forward",
            )
            for y in (x[:, :t].astype(np.float64), x.astype(np.float64))
        )
        return leak(short, long[:, :t]) <= FLOAT64_TOLERANCE

    def _pattern(self, header: dict, n_layers: int) -> str:
        """Which layers are the harness's attention (A) and which the candidate's mixer (M): the file's
        LAYERS literal, which the model server A built must follow. A module that rewrote its own LAYERS
        once loaded had a pure transformer of the harness's attention scored while its Mixer, never
        used, was the one checked and counted (red team, 2026-12-05)."""
        declared = mechanisms.declared_layers(self.source)
        pattern = (declared * n_layers)[:n_layers]
        if header.get("pattern") != pattern or "M" not in pattern:
            raise CandidateError(
                "tamper",
                f"server A built the layers {str(header.get('pattern'))[:40]!r}, not {pattern!r} as the file's "
                f"LAYERS = {declared!r} says (a string literal at the top of the file, with at least one M)",
            )
        return pattern

    def _clock_now(self, server: Server) -> float:
        """CPU seconds the server's process tree has used; on a GPU, the wall clock (a kernel's time is
        not the CPU's)."""
        return time.perf_counter() if self.cuda else server.used_cpu_s()

    def _limit(self, d_model: int) -> int | None:
        """The budget per block at this width: the run's, scaled like the root's mixer where the probe
        model is narrower; param_ratio x the root's mixer when the run gives none; -1: none."""
        limit, tier = self.opt.get("param_limit"), self.tier
        if limit is not None and limit < 0:
            return None
        if limit is None:
            return param_budget(root_mixer_params(d_model, tier.n_heads), self.opt.get("param_ratio", 1.2))
        if d_model == tier.d_model:
            return limit
        return math.floor(
            limit * root_mixer_params(d_model, tier.n_heads) / root_mixer_params(tier.d_model, tier.n_heads)
        )

    # -- training (server A) ---------------------------------------------------------------------
    def train(self, a: Server, corpus: Corpus) -> None:
        tier = self.tier
        rng = np.random.default_rng(self.seed)
        batches = (corpus.train_batch(tier.batch_size, tier.seq_len, rng) for _ in range(tier.steps))
        self.progress("training")
        self.curves = Curves(tier.steps, self.seed)
        lm = a.train(
            "lm",
            tier,
            batches,
            self.progress,
            self.built["lm"],
            self._checked(tier.steps),
            self.curves,
            val_steps(tier.steps, tier.val_points),
        )
        header, seconds, tokens, weights = lm.reply, lm.seconds, lm.tokens, canonical(lm.weights)
        self.copies = {step: canonical(copy) for step, copy in lm.copies.items()}
        self.taken = lm.taken
        self.metrics["mixer_params"] = budget(
            weights, tier.d_model, tier.n_layers, self.has_ffn, self._limit(tier.d_model)
        )
        self.weights = {f"lm.{k}": v for k, v in weights.items()}
        if tier.hardware:
            self.peak_memory(a, header, weights)
        self.metrics.update(
            train_loss=number(header, "train_loss", "training"),
            tokens_per_s=tokens / seconds if seconds else 0.0,
            train_time_s=seconds,
            timed_tokens=tokens,
            train_tokens=tier.steps * tier.batch_size * tier.seq_len,
        )
        if tier.probes is not None:
            p = tier.probes
            prng = np.random.default_rng(self.seed + 7919)
            started = time.perf_counter()
            self.progress("training the probes")
            probe = a.train(
                "probe",
                probe_tier(tier),
                (probe_batch(p, p.batch_size, prng) for _ in range(p.steps)),
                self.progress,
                self.built["probe"],
                self._checked(p.steps),
            )
            header, self.taken = probe.reply, self.taken + probe.taken
            probe = canonical(probe.weights)
            budget(probe, p.d_model, p.n_layers, self.has_ffn, self._limit(p.d_model))
            self.metrics.update(
                probe_train_loss=number(header, "train_loss", "probe training"),
                probe_train_s=time.perf_counter() - started,
            )
            self.weights |= {f"probe.{k}": v for k, v in probe.items()}

    def _checked(self, steps: int) -> set[int]:
        """The training steps whose gradients compose_in_s checks, drawn here where no server sees them:
        each with probability GRADIENT_CHECKS / steps on its own (a fixed number would tell a server
        that has seen them all go by that the rest are free), and the last (its loss is train_loss)."""
        return {s for s in range(steps) if self.rng.random() < GRADIENT_CHECKS / steps} | {steps - 1}

    def peak_memory(self, a: Server, header: dict, weights: dict) -> None:
        """Peak memory of training: on the CPU, server A's peak over its baseline before the candidate
        was loaded, the larger of its own peak (VmHWM, read just after training; the checks before
        training count too: a forward at 16x the training length is memory a model needs) and its
        resident memory read from here all through training (_watch_memory), on a GPU the
        allocator's peak as the server reports it. A separate request for one training step could
        be answered without the step (peak -22%, red team 2026-12-05); training cannot: its weights
        are scored."""
        n = sum(numbers(w) for w in weights.values())
        if self.cuda:
            measured = number(header, "cuda_peak_bytes", "training", 0)
        else:
            measured = max(0, max(_memory(a.host_pid(), "VmHWM"), a.rss_peak) - a.warm_hwm)
        self.metrics.update(
            peak_mem_mb=measured / 2**20,
            # less the weights, their gradients and the copies of both the pipe takes (the moments are here)
            activation_mem_mb=max(0, measured - 16 * n) / 2**20,
        )

    def _load(self, server: Server, weights: dict) -> None:
        for model in ("lm", "probe"):
            part = {k[len(model) + 1 :]: v for k, v in weights.items() if k.startswith(model + ".")}
            if part:
                server.ask("build", part, model=model)

    # -- the validation curve (server B, after scoring) ---------------------------------------------
    def val_curve(self, b: Server) -> None:
        """Validation loss of the copies of the weights server A sent during training, on VAL_WINDOWS
        of the scored windows, in B once every score is taken (nothing here changes a score). The
        final weights' point comes from the scored logits. Display-only: a copy that B cannot use
        ends the curve with a note, never the evaluation."""
        inputs, targets, losses = self.val
        rows = np.unique(np.linspace(0, len(inputs) - 1, min(len(inputs), VAL_WINDOWS)).round().astype(np.int64))
        self.curves.val_windows = len(rows)
        self.curves.val_loss(self.tier.steps, float(losses[rows].mean()), True)
        batches = np.array_split(rows, max(1, math.ceil(len(rows) / self.tier.batch_size)))
        started = time.perf_counter()
        if self.copies:
            self.progress("validation curve")
        try:
            for step, copy in sorted(self.copies.items()):
                b.ask("build", copy, model="lm")
                logits = np.concatenate(
                    [
                        array(
                            b.ask("logits", {"tokens": inputs[r]}, model="lm")[1],
                            "logits",
                            (len(r), inputs.shape[1], VOCAB_SIZE),
                            f"logits of the weights after step {step}",
                        )
                        for r in batches
                    ]
                )
                self.curves.val_loss(step, float(token_losses(logits, targets[rows]).mean()), False)
        except CandidateError as e:
            self.curves.val_note = f"the curve stops: {e.reason}: {e.detail[:200]}"
        finally:
            self.curves.val_cost_s += time.perf_counter() - started
            self.copies = {}

    # -- scoring (server B), checked by server C -------------------------------------------------
    def score(self, b: Server, corpus: Corpus) -> None:
        """B, holding only the LM's saved weights, is sent every validation window and long window in
        a random order; its logits give the scores. The copies that check them go to C. The probe
        model's weights never reach B: a server holding both used the probe's as an uncounted n-gram
        table for the LM (val_loss 2.82 against 3.39 at explore, 2026-12-05)."""
        tier, t = self.tier, self.tier.seq_len
        self._load(b, _model_weights(self.weights, "lm"))
        inputs, targets = corpus.val_windows(tier.val_windows, t)
        losses = token_losses(self.scored(b, inputs, targets, "lm", tier.causal_copies, "validation windows"), targets)
        val = float(losses.mean())
        self.val = (inputs, targets, losses)
        self.metrics.update(val_loss=val, val_bpb=val / math.log(2))
        if tier.extrapolation:  # positions seq_len..2*seq_len of windows twice as long vs seq_len/2..seq_len
            long_in, long_targets = corpus.val_windows(max(tier.val_windows // 4, 1), 2 * t)
            long = float(
                token_losses(
                    self.scored(b, long_in, long_targets, "lm", 1, "windows twice the training length"), long_targets
                )[:, t:].mean()
            )
            late = float(losses[:, t // 2 :].mean())
            self.metrics.update(val_loss_2x=long, val_loss_late=late, extrapolation_gap=long - late)
        if tier.hardware:
            self.hardware_in_b(b)

    def score_probes(self, p: Server) -> None:
        """P, holding only the probe model's weights (never the LM's, which are not counted against
        the probe's budget), is sent the held-out probe sequences; C checks them with the rest."""
        probes = self.tier.probes
        self._load(p, _model_weights(self.weights, "probe"))
        rng = np.random.default_rng(0x5EED)  # held out: training draws from another stream
        for task in probe_tasks(probes):
            probe_in, probe_targets = probe_batch(probes, max(probes.batch_size, probes.eval_examples), rng, task)
            pred = self.scored(p, probe_in, probe_targets, "probe", 1, f"{task} probe sequences").argmax(-1)
            mask = probe_targets != IGNORE
            key = "selcopy_acc" if task == "copy" else f"mqar_acc_p{task[4:]}"
            self.metrics[key] = float((pred[mask] == probe_targets[mask]).mean())
        self.metrics["mqar_acc"] = float(np.mean([self.metrics[f"mqar_acc_p{n}"] for n in probes.pairs]))

    def quant_in_b(self, b: Server) -> None:
        """The loss with int8 weights, on every second validation window, scored in B like every other
        score (a loss nobody checked was answered by a next-token oracle)."""
        inputs, targets, losses = self.val
        rows = np.arange(0, len(inputs), 2)
        weights = quantized(_model_weights(self.weights, "lm"))
        self._load(b, weights)
        q = token_losses(
            self.scored(b, inputs[rows], targets[rows], "lm", 1, "validation windows, int8 weights", weights),
            targets[rows],
        )
        increase = float(q.mean() - losses[rows].mean())
        self.metrics.update(quant_loss=increase, val_loss_int8=self.metrics["val_loss"] + increase)

    def scored(
        self,
        b: Server,
        inputs: np.ndarray,
        targets: np.ndarray,
        model: str,
        copies: int,
        what: str,
        weights: dict | None = None,
    ) -> np.ndarray:
        """B's logits for every row of `inputs`, sent in a random order; the check against `copies`
        perturbed copies of every row (C, later, with the same `weights`: by default the trained ones)
        and against the harness's shell (S) are queued."""
        n, t = inputs.shape
        batch = self.tier.batch_size if model == "lm" else self.tier.probes.batch_size
        logits = np.empty((n, t, VOCAB_SIZE), dtype=np.float64)
        for rows in np.array_split(self.rng.permutation(n), max(1, math.ceil(n / batch))):
            out = b.ask("logits", {"tokens": inputs[rows]}, model=model)[1]
            logits[rows] = array(out, "logits", (len(rows), t, VOCAB_SIZE), f"logits of the {what}")
        self.pending.append(Scored(inputs, targets, logits, model, copies, what, weights or self.weights))
        return logits

    def shell_servers(self) -> list[str]:
        """The servers of compose_in_s: two per layer of each model (forward, then gradients)."""
        probes = self.tier.probes
        layers = [("lm", i) for i in range(self.tier.n_layers)]
        layers += [("probe", i) for i in range(probes.n_layers)] if probes is not None else []
        return [_shell_server(model, i, backward) for backward in (False, True) for model, i in layers]

    def compose_in_s(self) -> None:
        """Every row B and P scored, composed here by the harness's shell (shell.py: embeddings, norms,
        residuals, the harness MLP and attention, the head) around the candidate's parts, each computed
        from that part's weights alone by a server of its own layer (the rows in a new random order and
        batching); the logits must be the scored ones, and so the loss and the accuracy at the scored
        tokens. What a server computes outside its parts (a patched LM.forward, MLP or head) is not the
        harness's, whatever the checks between servers say. A server per layer: one S for all layers
        kept every layer's weights, and a part used another block's (red team, 2026-12-05).
        The checked training steps go through the same servers, then backwards through one more per
        layer (SB0, ...): the gradients server A reported must be the shell's (_same_gradients)."""
        tol_max, tol_loss, tol_acc = SHELL_TOLERANCE[self.device]
        gap, grad_gap, current = 0.0, 0.0, [None]

        def server(name: str) -> Server:  # one at a time, each started once
            if current[0] != name:
                if current[0] is not None:
                    self._end(current[0])
                current[0] = name
                self._start(name)
            return self.servers[name]

        for model in ("lm", "probe"):
            entries = [e for e in self.pending if e.model == model]
            taken = [t for t in self.taken if t.model == model]
            if not entries and not taken:
                continue
            runs = [Run(e.inputs, shell.sub(e.weights, model + "."), None) for e in entries]
            runs += [Run(t.inputs, t.weights(), t) for t in taken]
            d = runs[0].weights["embed.weight"].shape[1]
            batch = self.tier.batch_size if model == "lm" else self.tier.probes.batch_size

            def ask(name: str, kind: str, layer: int, run: int, arrays: dict) -> dict:
                prefix = f"blocks.{layer}.{'ffn' if kind == 'FFN' else 'mixer'}."
                sent = {"w." + k: v for k, v in shell.sub(runs[run].weights, prefix).items()}
                step = runs[run].taken
                fields = dict(part=kind, dtype="float32", d_model=d, autocast=True)
                if step is not None:  # as in training: the batch whole, the step's randomness and progress
                    fields |= dict(seed=shell.part_seed(step.seed, layer, kind), train=True, progress=step.progress)
                else:
                    fields |= dict(seed=0, train=False)
                return server(name).ask("part", {**arrays, **sent}, **fields)[1]

            def part(kind: str, layer: int, run: int, x: np.ndarray) -> np.ndarray:
                name, what = _shell_server(model, layer), f"{kind}.forward of block {layer}"
                if runs[run].taken is not None:
                    return array(ask(name, kind, layer, run, {"x": x.astype(np.float32)}), "y", x.shape, what)
                y = np.empty_like(x)
                for rows in np.array_split(self.rng.permutation(len(x)), max(1, math.ceil(len(x) / batch))):
                    out = ask(name, kind, layer, run, {"x": x[rows].astype(np.float32)})
                    y[rows] = array(out, "y", (len(rows), *x.shape[1:]), what)
                return y

            def part_vjp(kind: str, layer: int, run: int, x: np.ndarray, dy: np.ndarray) -> tuple:
                r = len(entries) + run  # gradients() counts the taken runs from 0
                arrays = {"x": x.astype(np.float32), "dy": dy.astype(np.float32)}
                out = ask(_shell_server(model, layer, backward=True), kind, layer, r, arrays)
                what = f"the gradients of {kind}.forward of block {layer}"
                names = shell.sub(runs[r].weights, f"blocks.{layer}.{'ffn' if kind == 'FFN' else 'mixer'}.")
                grads = {k: array(out, "d." + k, names[k].shape, what) for k in _named(out, "d.") if k in names}
                return array(out, "dx", x.shape, what), grads

            ends, tape = shell.forward(
                [(r.inputs, r.weights) for r in runs],
                self.patterns[model],
                self.tier.n_heads,
                self.has_ffn,
                part,
                set(range(len(entries), len(runs))),
            )
            for i, e in enumerate(entries):
                gap = max(gap, self._same_scores(e, shell.head(ends[i], runs[i].weights), tol_max, tol_loss, tol_acc))
            done = shell.gradients(
                [(r.inputs, r.taken.targets, r.weights, tape[i], ends[i]) for i, r in enumerate(runs) if r.taken],
                self.patterns[model],
                self.tier.n_heads,
                self.has_ffn,
                part_vjp,
            )
            for t, (loss, grads) in zip(taken, done):
                grad_gap = max(grad_gap, _same_gradients(t, loss, grads, tol_loss, GRADIENT_TOLERANCE[self.device]))
        if current[0] is not None:
            self._end(current[0])
        self.metrics["shell_gap"] = gap
        if self.taken:
            self.metrics["grad_gap"] = grad_gap

    def _same_scores(self, e: Scored, composed: np.ndarray, tol_max: float, tol_loss: float, tol_acc: float) -> float:
        """The largest log-probability gap between the scored logits and the shell's; a tamper
        verdict where they, the loss or the accuracy at the scored tokens differ beyond the tolerances."""
        diff = logprob_gap(e.logits, composed)
        scored = e.targets != IGNORE
        losses = (token_losses(composed, e.targets) - token_losses(e.logits, e.targets))[scored]
        hits = (composed.argmax(-1) == e.targets).astype(float) - (e.logits.argmax(-1) == e.targets)
        loss_gap = float(losses.mean()) if losses.size else 0.0
        acc_gap = float(hits[scored].mean()) if losses.size else 0.0
        if not (diff <= tol_max and abs(loss_gap) <= tol_loss and abs(acc_gap) <= tol_acc):
            raise CandidateError(
                "tamper",
                f"the {e.what} were not scored by the harness's model around the candidate's parts: its "
                f"log-probabilities, composed from each part's outputs alone, differ by up to {diff:.1e} nats, "
                f"its loss by {loss_gap:+.1e} and its accuracy by {acc_gap:+.3f} (the harness's code was changed)",
            )
        return diff

    def check_copies(self, c: Server) -> None:
        """C, loaded from the same weights, scores copies of every row B scored, each with the text after
        a random cut replaced by another row's, in another random order: its logits must equal B's up
        to every cut. B could not tell which rows are checked (all are), nor reach C (it is gone).
        The trained weights are checked last, so C holds them for what follows."""
        tolerance, gap, loaded = CAUSAL_TOLERANCE[self.device], 0.0, None
        for inputs, _, logits, model, copies, what, weights in sorted(
            self.pending, key=lambda e: e.weights is self.weights
        ):
            if weights is not loaded:
                self._load(c, weights)
                loaded = weights
            n, t = inputs.shape
            batch = self.tier.batch_size if model == "lm" else self.tier.probes.batch_size
            which = np.repeat(np.arange(n), copies)
            cuts = self.rng.integers(0, t - 1, len(which))
            donors = (which + self.rng.integers(1, max(n, 2), len(which))) % n
            perturbed = inputs[which].copy()
            for j, (cut, donor) in enumerate(zip(cuts, donors)):
                perturbed[j, cut + 1 :] = (
                    inputs[donor, cut + 1 :] if donor != which[j] else self.rng.integers(0, VOCAB_SIZE, t - cut - 1)
                )
            for rows in np.array_split(self.rng.permutation(len(which)), max(1, math.ceil(len(which) / batch))):
                out = array(
                    c.ask("logits", {"tokens": perturbed[rows]}, model=model)[1],
                    "logits",
                    (len(rows), t, VOCAB_SIZE),
                    f"logits of the {what}",
                )
                for k, j in enumerate(rows):
                    diff = logprob_gap(logits[which[j], : cuts[j] + 1], out[k, : cuts[j] + 1])
                    gap = max(gap, diff)
                    if not diff <= tolerance:
                        raise CandidateError(
                            "non_causal",
                            f"the trained model's log-probabilities at positions <= {cuts[j]} changed "
                            f"by {diff:.1e} nats when only later text changed (checked on {what}; "
                            "or it answered from what it kept of earlier inputs)",
                        )
        self.metrics["causal_gap"] = gap

    # -- hardware --------------------------------------------------------------------------------
    def hardware_in_b(self, b: Server) -> None:
        """Decoding one token per request (the next sent only when its logits are back), timed from
        here; the state it hands back at half and at full context is counted; FLOPs and the compile
        flag are the server's own figures."""
        t = self.tier.seq_len
        self.decode_tokens = self.rng.integers(0, VOCAB_SIZE, (1, t))
        stepped, times, sizes = np.empty((1, t, VOCAB_SIZE)), [], {}
        for i in range(t):
            want = i + 1 in (t // 2, t)
            started = time.perf_counter()
            header, reply = b.ask("decode", {"token": self.decode_tokens[:, i]}, first=i == 0, state=want)
            times.append(time.perf_counter() - started)
            stepped[0, i] = array(reply, "logits", (1, VOCAB_SIZE), "decoded logits")[0]
            if want:
                state = {k: a for k, a in reply.items() if k != "logits"}
                layout = header.get("skeleton")  # its dict keys are the state's too: a whole state once rode in one
                sizes[i + 1] = sum(numbers(a) * 4 for a in state.values()) + len(json.dumps(layout))
                if i + 1 == t // 2:  # resumed in C: nothing of it may stay behind in B
                    self.half_state = (layout, state)
        self.stepped = stepped
        extras, _ = b.ask("extras")
        decode = max(0.0, float(np.mean(times[-DECODE_TOKENS:])) - b.pipe_s)  # the pipe's own time, measured warm
        self.metrics.update(
            decode_ms_per_token=decode * 1e3,
            decode_mode="recurrent" if self.has_step else "recompute",
            state_bytes=sizes[t],
            state_context=t,
            state_bytes_per_token=max(0.0, (sizes[t] - sizes[t // 2]) / (t - t // 2)),
            flops_per_token=number(extras, "flops_per_token", "extras"),
            compile_ok=extras.get("compile_ok") is True,
        )
        for key in ("compile_graph_breaks", "compile_error"):
            if isinstance(extras.get(key), int | str):
                self.metrics[key] = extras[key] if isinstance(extras[key], int) else extras[key][:300]

    def hardware_in_c(self, c: Server) -> None:
        """In C: the forward pass that decoding must agree with (and its latency), and decoding
        resumed from B's state."""
        t = self.tier.seq_len
        rounds = [self.decode_tokens] + [self.rng.integers(0, VOCAB_SIZE, (1, t)) for _ in range(2)]
        prefill, outputs = math.inf, []
        for tokens in rounds:  # new text each round: logits remembered from an earlier request are no faster
            started = time.perf_counter()
            outputs.append(
                array(c.ask("logits", {"tokens": tokens}, model="lm")[1], "logits", (1, t, VOCAB_SIZE), "prefill")
            )
            prefill = min(prefill, time.perf_counter() - started)
        self.metrics["prefill_ms"] = prefill * 1e3
        self.metrics["decode_gap"] = logprob_gap(outputs[0], self.stepped)
        if not self.metrics["decode_gap"] <= DECODE_TOLERANCE[self.device]:
            raise CandidateError(
                "step",
                f"token-by-token decoding disagrees with the forward pass by {self.metrics['decode_gap']:.1e} nats",
            )
        self.resume_in_c(c)

    def resume_in_c(self, c: Server) -> None:
        """The state B returned at half the context is all a decoder may carry: C, which never saw that
        text, resumes from it with other tokens, and its logits must match its own forward pass of the
        same text. State kept out of sight (in a mixer's attributes, keyed by what it returned) does
        not reach C, so decoding goes wrong there instead of showing a state smaller than it is."""
        half, skeleton, state = self.tier.seq_len // 2, *self.half_state
        branch = self.rng.integers(0, VOCAB_SIZE, (1, RESUMED_TOKENS))
        resumed = np.empty((1, RESUMED_TOKENS, VOCAB_SIZE))
        for i in range(RESUMED_TOKENS):
            extra = {"resume": True, "skeleton": skeleton} if i == 0 else {}
            reply = c.ask("decode", {"token": branch[:, i], **(state if i == 0 else {})}, **extra)[1]
            resumed[0, i] = array(reply, "logits", (1, VOCAB_SIZE), "resumed logits")[0]
        tokens = np.concatenate([self.decode_tokens[:, :half], branch], 1)
        forward = array(
            c.ask("logits", {"tokens": tokens}, model="lm")[1], "logits", (1, tokens.shape[1], VOCAB_SIZE), "forward"
        )
        self.metrics["resume_gap"] = logprob_gap(forward[:, half:], resumed)
        if not self.metrics["resume_gap"] <= DECODE_TOLERANCE[self.device]:
            raise CandidateError(
                "step",
                f"decoding resumed in a fresh server from the state returned at position {half} disagrees "
                f"with the forward pass by {self.metrics['resume_gap']:.1e} nats: a decoder's state must be "
                "all it carries from one token to the next",
            )

    def save_weights(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.weights, str(path))


def _model_weights(weights: dict, model: str) -> dict:
    """One model's part of the weights (lm.* or probe.*): a scoring server holds no other."""
    return {k: v for k, v in weights.items() if k.startswith(model + ".")}


def _shell_server(model: str, layer: int, backward: bool = False) -> str:
    """The name of the server that computes the parts of one layer: "S0", "S1", ...; "SP0", ... (probes);
    "SB0", "SPB0", ... for their gradients (after every layer's forward)."""
    return f"S{'P' if model == 'probe' else ''}{'B' if backward else ''}{layer}"


def _parameter_groups(groups, built: dict) -> list[list[str]]:
    """The parameters as server A names them for training: lists of names of one tensor each, every
    name a float weight of the model as built and in one list only. A name it leaves out stays as
    built (it gets no training); one it adds that is not a parameter gets Adam's steps and nothing more."""
    if not (
        isinstance(groups, list)
        and all(isinstance(g, list) and g and all(isinstance(n, str) for n in g) for g in groups)
    ):
        raise CandidateError("crash", "server A sent no valid list of the parameters it trains")
    seen: set = set()
    for names in groups:
        for name in names:
            if (
                name in seen
                or name not in built
                or built[name].dtype.kind != "f"
                or built[name].shape != built[names[0]].shape
            ):
                raise CandidateError(
                    "params",
                    f"server A trains {name[:80]!r}, which is not a float weight of the model as it was built with "
                    "(each once): a name is free text no budget counts",
                )
            seen.add(name)
    return groups


def _same_gradients(t: Taken, loss: float, grads: dict, tol_loss: float, tol_grad: float) -> float:
    """The largest relative error of the gradients server A reported for step `t` against the
    shell's (each parameter's: its norm over the larger of its own and 1e-3 of all of them); a tamper
    verdict where it exceeds `tol_grad` or the reported loss is not the shell's."""
    mine = {
        names[0]: sum((grads[n] for n in names if n in grads), np.zeros(t.params["p." + names[0]].shape))
        for names in t.groups
    }
    total = math.sqrt(sum(float(np.square(g).sum()) for g in mine.values()))
    worst, where = 0.0, ""
    for name, g in mine.items():
        theirs = t.grads.get(name, np.zeros(g.shape))
        error = float(np.linalg.norm(theirs.astype(np.float64) - g)) / max(
            float(np.linalg.norm(g)), 1e-3 * total, 1e-30
        )
        if error > worst:
            worst, where = error, name
    reported = t.loss if isinstance(t.loss, int | float) and not isinstance(t.loss, bool) else math.nan
    if not (worst <= tol_grad and abs(loss - reported) <= tol_loss):
        raise CandidateError(
            "tamper",
            f"server A's training step {t.step} of the {t.model} model was not the harness's: the gradient of "
            f"{where[:80]!r} it reported is {worst:.2g} off the gradient of the harness's model around the "
            f"candidate's parts (bound {tol_grad}), its loss {t.loss!r:.12} where the model's is {loss:.6f} (a part "
            "must compute in another process what it computed in training: its randomness from torch's generator, "
            "which the harness seeds for every call, its schedule from training_progress(), no state kept between "
            "calls)",
        )
    return worst


def _took(taken: list, step: int, arrays: dict, loss) -> None:
    """Add what the server reported for training step `step` (its gradients and loss) to the check kept of it."""
    if taken and taken[-1].step == step:
        taken[-1] = taken[-1]._replace(grads=_named(arrays, "g."), loss=loss)


def _named(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _trained(built: dict, groups: list[list[str]], params: dict) -> dict:
    """The model as built, with the optimizer's parameters under every name each one has."""
    out = dict(built)
    for names in groups:
        for name in names:
            out[name] = params[names[0]].copy()
    return out


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


def _superlinear(timed: dict) -> bool:
    """The clock's verdict on one part: growth it can resolve, beyond the limit."""
    return timed["resolved"] and timed["exponent"] > CLOCK_EXPONENT_LIMIT


def _growth(costs: list[list[float]], lengths: list[int], column: int) -> float:
    """The largest growth exponent of a cost column between neighbouring lengths."""
    return max(
        _exponent(costs[i][column], costs[i + 1][column], lengths[i], lengths[i + 1]) for i in range(len(lengths) - 1)
    )


def _exponent(a: float, b: float, short: int, long: int) -> float:
    if a <= 0 or b <= 0:
        return 0.0 if b <= a else 1.0
    return math.log(b / a) / math.log(long / short)
