"""The candidate's side of the sandbox: a model server.

Forked by a launch pad (zygote.py) that imported and warmed up torch, isolated in namespaces of
its own (launch.isolate). It reads its job from stdin, contains itself (rlimits, no
capabilities, seccomp) and says it is warm; then it
waits for the candidate's source (the scorer sends it only when no other server of the same
candidate is alive), installs the audit hook (a diagnostic; off with `diagnostics: false`),
runs the candidate's file and answers requests on its stdout (main() moves its own printing to
stderr, a pipe the scorer drains into the log) until stdin closes. It returns outputs only: a part's
outputs for given inputs, logits for given tokens, decoded steps and states, its weights
after training on the batches it is sent, and the few measurements of its own that
metrics.py lists. It never sees a data file, a target it is scored on, or a verdict.
"""

import math
import os
import platform
import time
import traceback

import numpy as np

from archlab import candidate as candidate_api
from archlab.sandbox import wire
from archlab.sandbox.errors import CandidateError, out_of_memory, rejected

REPLY_FD = 1  # main() moves the scorer's pipe off stdout, so a print() of the candidate lands in the log
MAX_REQUEST = 1 << 31


class Server:
    def __init__(self, job: dict):
        import torch

        from archlab.sandbox.model import pick_device
        from archlab.sandbox.tiers import Tier

        self.job = job
        self.tier = Tier.model_validate(job["tier"])
        self.seed = int(job.get("seed", 0))
        self.device = pick_device(job.get("device"))
        torch.set_num_threads(int(job.get("threads", 1)))
        self.models: dict = {}
        self.candidate = None
        self.states = None  # decoding's, between decode requests

    # -- requests --------------------------------------------------------------------------------
    def part(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """A fresh Mixer (or FFN) built in random state `seed` (or holding the weights sent as "w.NAME":
        a trained one), in float64/float32, train or eval mode, at the tier's width or `d_model`, applied
        to `x` with dropout drawn from `seed` too (so two servers draw the same masks), as a model's
        logits are (bf16 autocast on a GPU) when `autocast`, on `threads` CPU threads if given (the
        clock's requests ask for one: the CPU time of more threads includes their waiting for each
        other, which grows with the machine's load and the tensors' size), at training progress
        `progress` if given (a training step's part, for the gradient check; 1.0 otherwise). With `dy`
        (the gradient of its output), the gradients of its input ("dx") and weights ("d.NAME") too."""
        import contextlib

        import torch

        from archlab.sandbox.model import autocast, guard

        d = int(req.get("d_model", self.tier.d_model))
        module = self._build_part(req["part"], int(req["seed"]), getattr(torch, req["dtype"]), bool(req["train"]), d)
        weights = {k[2:]: self._tensor(v) for k, v in arrays.items() if k.startswith("w.")}
        if weights:
            try:
                module.load_state_dict(weights, strict=True)
            except (RuntimeError, KeyError, ValueError) as e:
                raise CandidateError("error", f"the trained {req['part']}'s weights do not fit a fresh one: {e}"[:600])
        x = self._tensor(arrays["x"]).to(getattr(torch, req["dtype"]))
        threads = torch.get_num_threads()
        torch.set_num_threads(int(req.get("threads", threads)))
        candidate_api._set_training_progress(float(req.get("progress", 1.0)))
        grad = bool(req.get("grad")) or "dy" in arrays
        try:
            with (
                torch.set_grad_enabled(grad),
                autocast(self.device) if req.get("autocast") else contextlib.nullcontext(),
            ):
                torch.manual_seed(int(req["seed"]))
                y = self._call(module, x.requires_grad_(grad), req["part"])
            if "dy" in arrays:
                if y.requires_grad:  # not where a part skipped itself (stochastic depth: zeros, no gradient)
                    dy = self._tensor(arrays["dy"]).to(device=y.device, dtype=y.dtype)
                    guard(lambda: torch.autograd.backward(y, dy))
                grads = {"d." + k: p.grad for k, p in module.named_parameters() if p.grad is not None}
                return {}, {"dx": x.grad if x.grad is not None else torch.zeros_like(x), **grads}
        finally:
            torch.set_num_threads(threads)
            candidate_api._set_training_progress(1.0)
        return {}, {"y": (y.float() if req.get("autocast") else y).detach()}

    def step(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """The mixer's step() over every position of `x` (evaluation mode), its outputs stacked."""
        import torch

        from archlab.sandbox.metrics import flat_state

        mixer = self._build_part("Mixer", int(req["seed"]), getattr(torch, req["dtype"]), False)
        x = self._tensor(arrays["x"]).to(getattr(torch, req["dtype"]))
        outs, state = [], None
        with torch.no_grad():
            for t in range(x.shape[1]):
                try:
                    y, state = mixer.step(x[:, t], state)
                except CandidateError:
                    raise
                except Exception as e:  # an allocation failing in step() is a "step" rejection too, as it always was
                    raise rejected(e, "Mixer.step", "step", memory=False) from e
                if type(y) is not torch.Tensor or y.shape != x[:, t].shape:  # noqa: E721
                    raise CandidateError(
                        "step", f"Mixer.step must return (tensor of shape {tuple(x[:, t].shape)}, state)"
                    )
                outs.append(y)
        return {}, {"y": torch.stack(outs, 1), **flat_state(state)}

    def cost(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        import torch

        from archlab.sandbox import metrics

        d = int(req.get("d_model", self.tier.d_model))
        part = self._build_part(req["part"], 0, torch.float32, False, d)
        return {"cost": metrics.cost(part, [int(t) for t in req["lengths"]], d, self.device)}, {}

    def build(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """A fresh model of the tier's shape (or the probe model's), in the training's random state;
        replies with its weights (the scorer counts them), or loads the weights it is sent."""
        model = self._new_model(req["model"])
        facts = {"pattern": model.pattern}  # which layers are the harness's attention (the scorer's shell)
        if arrays:
            try:
                model.load_state_dict({k: self._tensor(v) for k, v in arrays.items()}, strict=True)
            except (RuntimeError, KeyError, ValueError) as e:
                raise CandidateError(
                    "error", f"the trained weights do not fit a freshly built model: {e}"[:600]
                ) from None
            model.to(self.device)
            return facts, {}
        return facts, self._weights(model)

    def check_lm(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """One forward/backward of the whole model on the tokens given: are loss and gradients finite?"""
        import torch

        from archlab.sandbox.model import autocast, guard, lm_loss

        model = self._new_model("lm").train()
        tokens = self._tensor(arrays["tokens"]).long().to(self.device)
        with autocast(self.device):
            loss = guard(lambda: lm_loss(model, tokens, tokens))
        guard(loss.backward)
        finite = bool(torch.isfinite(loss)) and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters()
        )
        return {"finite": finite}, {}

    def train(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """A fresh model's gradients on the batches the scorer sends, one per request for the next step,
        each at the parameters sent with it ("p.NAME") and with the seed of its parts' randomness
        (model.Block); each request after the first carries the previous step's gradients
        ("g.NAME"), the first the parameters' names, the final reply the last step's gradients and
        the buffers ("b.NAME": the scorer checks that training left them as built)."""
        import torch

        from archlab.sandbox import train
        from archlab.sandbox.tiers import probe_tier

        which = req["model"]
        tier = probe_tier(self.tier) if which == "probe" else self.tier
        if self.device.type == "cuda":  # a GPU's peak is the allocator's, which only the server can read
            torch.cuda.reset_peak_memory_stats(self.device)
        model = self._new_model(which).train()
        params = train.parameters(model)
        loss, grads = float("nan"), {}
        try:
            for step in range(tier.steps):
                # (the last step's loss, for the scorer's progress display and loss curve; the wire refuses NaN)
                header = {"need": step, "loss": loss if math.isfinite(loss) else None}
                if step == 0:
                    header["params"] = [names for names, _ in params]
                wire.send(REPLY_FD, header, {k: _array(v) for k, v in grads.items()} or None)
                request, batch = wire.receive(0, MAX_REQUEST)
                with torch.no_grad():
                    for names, p in params:
                        p.copy_(self._tensor(batch["p." + names[0]]))
                inputs, targets = (
                    self._tensor(batch[k]).long().to(self.device, non_blocking=True) for k in ("inputs", "targets")
                )
                candidate_api._set_training_progress(step / tier.steps)  # between steps (archlab/candidate.py)
                loss = train.gradients(
                    model, inputs, targets, int(request["seed"]), self.device, f"{which} training loss at step {step}"
                )
                grads = {"g." + names[0]: p.grad for names, p in params if p.grad is not None}
                if step % 50 == 49:
                    print(f"[server] {which} step {step + 1}/{tier.steps} loss {loss:.3f}", flush=True)
        finally:
            candidate_api._set_training_progress(1.0)  # frozen for every measurement
        named = {n for names, _ in params for n in names}
        buffers = {"b." + k: v for k, v in self._weights(model).items() if k not in named}
        torch.manual_seed(self.seed)
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return {"train_loss": loss, "cuda_peak_bytes": peak}, grads | buffers

    def logits(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        import torch

        from archlab.sandbox.model import autocast, guard

        model = self._model(req["model"])
        tokens = self._tensor(arrays["tokens"]).long().to(self.device)
        with torch.no_grad(), autocast(self.device):
            logits = guard(lambda: model(tokens))
        return {}, {"logits": logits.float()}

    def decode(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """One token of inference (batch 1) after the ones sent before (`first`: a new sequence;
        `resume`: after the state sent with it, as another server returned it with its `skeleton`):
        its logits, and the state (when asked: the scorer counts its bytes, and may resume it in
        another server). The scorer sends the next token only once these logits are back, and times
        each request."""
        import torch

        from archlab.sandbox.metrics import flat_state, restore_state, state_skeleton
        from archlab.sandbox.model import autocast, guard

        model = self._model("lm")
        token = self._tensor(arrays["token"]).long().to(self.device)
        if req.get("first"):
            self.states = None
        if req.get("resume"):
            tensors = {k: self._tensor(v) for k, v in arrays.items() if k != "token"}
            self.states = restore_state(req.get("skeleton"), tensors, self.device)
        with torch.no_grad(), autocast(self.device):
            logits, self.states = guard(lambda: model.step(token, self.states))
        if not req.get("state"):
            return {}, {"logits": logits.float()}
        state = flat_state(self.states, "state")
        return {"skeleton": state_skeleton(self.states, "state")}, {"logits": logits.float(), **state}

    def extras(self, req: dict, arrays: dict) -> tuple[dict, dict]:
        """FLOPs of one forward over seq_len tokens, and whether torch.compile takes the mixer."""
        import torch

        from archlab.sandbox import metrics

        model = self._model("lm")
        tokens = torch.randint(0, 256, (1, self.tier.seq_len), device=self.device)
        out = {"flops_per_token": metrics.forward_flops(model, tokens, self.device) / self.tier.seq_len}
        mixer = next((b.mixer for b in model.blocks if b.mixer.__class__.__module__ == "candidate"), None)
        if mixer is not None:
            out.update(metrics.compile_metrics(mixer, self.tier.seq_len, self.tier.d_model, self.device))
        return out, {}

    OPS = ("part", "step", "cost", "build", "check_lm", "train", "logits", "decode", "extras")

    # -- helpers ---------------------------------------------------------------------------------
    def _tensor(self, array):
        import torch

        return torch.from_numpy(array.copy())

    def _new_model(self, which: str):
        import torch

        from archlab.sandbox.model import LM
        from archlab.sandbox.tiers import probe_tier

        torch.manual_seed(self.seed + (1 if which == "probe" else 0))
        model = LM(self.candidate, probe_tier(self.tier) if which == "probe" else self.tier).to(self.device)
        self.models[which] = model
        return model

    def _model(self, which: str):
        if which not in self.models:
            raise CandidateError("error", f"internal: no {which} model in this server")
        return self.models[which].eval()

    def _weights(self, model) -> dict:
        import torch

        out = {}
        for key, value in model.state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise CandidateError(
                    "contract",
                    f"state_dict entry {key!r} is a {type(value).__name__}: a part's state "
                    "(parameters, buffers, get_extra_state) must be tensors",
                )
            value = value.detach().cpu()
            out[key] = value.float() if value.is_floating_point() else value
        return out

    def _build_part(self, part: str, seed: int, dtype, train: bool, d_model: int | None = None):
        import torch

        from archlab.sandbox import contract

        torch.manual_seed(seed)
        d = d_model or self.tier.d_model
        module = (
            contract.build_mixer(self.candidate, d, self.tier.n_heads)
            if part == "Mixer"
            else contract.build_ffn(self.candidate, d)
        )
        if module is None:
            raise CandidateError("contract", "the candidate defines no FFN")
        return module.to(device=self.device, dtype=dtype).train(train)

    def _call(self, module, x, part: str):
        import torch

        from archlab.sandbox.model import guard

        y = guard(lambda: module(x.to(self.device)))
        if type(y) is not torch.Tensor or y.shape != x.shape:  # noqa: E721
            raise CandidateError(
                "shape",
                f"{part}.forward: input {tuple(x.shape)} gave {type(y).__name__} {tuple(getattr(y, 'shape', ()))}",
            )
        return y

    def widest_dtype(self) -> str:
        """float64 when the mixer runs in it (its causality checks are then ~1e6 times more sensitive)."""
        import torch

        try:
            with torch.no_grad():
                self._build_part("Mixer", 0, torch.float64, False)(
                    torch.zeros(1, 4, self.tier.d_model, dtype=torch.float64, device=self.device)
                )
            return "float64"
        except Exception:
            return "float32"


def warm_up(device, *, train: bool, count: bool) -> None:
    """Run the server's own torch paths once before the candidate exists (in the launch pad, and
    on a GPU in each server): torch finishes its lazy imports while the standard library is still
    readable (a dropped uid may not read it under the fallback launchers). `train`: a backward pass;
    `count`: the FLOP counter (each imports TorchDynamo, ~1.2 s of CPU)."""
    import importlib
    import types

    import torch

    from archlab.sandbox import metrics
    from archlab.sandbox import train as training
    from archlab.sandbox.model import LM, Attention, autocast, lm_loss
    from archlab.sandbox.tiers import Tier

    # torch._dynamo: the compile check; importlib.readers: what a candidate's torch.compile imports first
    for name in ("encodings.idna", "unicodedata", "torch._dynamo", "importlib.readers"):
        importlib.import_module(name)
    tiny = types.ModuleType("warmup")
    tiny.Mixer = lambda d_model, n_heads: Attention(d_model, n_heads)
    tier = Tier(name="warmup", d_model=16, n_heads=2, n_layers=1, seq_len=8, batch_size=2, steps=1)
    model = LM(tiny, tier).to(device)
    inputs = torch.randint(0, 256, (2, 8), device=device)
    if train:
        training.gradients(model, inputs, inputs, 0, device, "warm-up")
    model.eval()
    with torch.no_grad(), autocast(device):
        lm_loss(model, inputs, inputs)
        if count:
            metrics.forward_flops(model, inputs[:1], device)
            metrics.cost(model.blocks[0].mixer, [8], 16, device)
            if device.type == "cpu":  # TorchDynamo's graph capture imports ~1,200 modules the first time (~0.9 s)
                metrics.compile_metrics(model.blocks[0].mixer, 8, 16, device)
        _, states = model.step(inputs[:1, 0], None)
        model.step(inputs[:1, 1], states)


def eager_compile(model=None, **options):
    """torch.compile as a candidate's server has it when the sandbox does not compile: the identity,
    as a decorator (`@torch.compile`, `@torch.compile(mode=...)`) and as a call (`torch.compile(fn)`)."""
    if model is None:
        return lambda fn: fn
    return model


def set_compile(enabled: bool) -> bool:
    """The sandbox decides whether a candidate's torch.compile compiles (contract.py): where it does not
    (the tier does not ask for it, or no GPU), `torch.compile` and `torch.compiler.compile` become the
    identity before the candidate's file runs. The harness keeps the real one (metrics.REAL_COMPILE)."""
    import torch

    from archlab.sandbox import metrics  # noqa: F401  (captures the real torch.compile first)

    if not enabled:
        torch.compile = eager_compile
        torch.compiler.compile = eager_compile
    return enabled


def provide_fla(device_type: str) -> str:
    """What a candidate's `import fla` will get: the real flash-linear-attention where it can run (its
    version), else archlab's pure-PyTorch stand-ins ("fallback", put first on sys.path and imported
    now, before the server contains itself): see archlab/sandbox/compat."""
    import importlib

    from archlab.sandbox import compat

    which = compat.provide_fla(device_type)
    if which == compat.FALLBACK:
        for name in ("fla", "fla.modules", "fla.modules.l2norm", "fla.layers.utils", "fla.models.utils"):
            importlib.import_module(name)
    return which


def _reply_error(e: BaseException) -> dict:
    if isinstance(e, CandidateError):
        return {"reason": e.reason, "detail": e.detail}
    if isinstance(e, SystemExit | KeyboardInterrupt | GeneratorExit) and not out_of_memory(e):
        return {"reason": "error", "detail": f"the candidate tried to leave the interpreter ({type(e).__name__})"}
    error = rejected(e)
    return {"reason": error.reason, "detail": error.detail}


def serve(job: dict) -> None:
    """Contain (the launch pad warmed up this process's torch before forking it: on a GPU the
    server warms up CUDA itself first, still trusted code only), then wait for the candidate's
    source (sent only when no other server of the same candidate is alive) and load it."""
    from archlab.sandbox import launch

    started = time.monotonic()
    guard = None
    try:
        import torch

        from archlab.sandbox import contract

        server = Server(job)
        if server.device.type == "cuda":  # CUDA cannot be initialised before a fork
            role = job.get("role")
            warm_up(server.device, train=role == "A", count=role == "A" or (role == "B" and server.tier.hardware))
        fla = provide_fla(server.device.type)
        launch.contain(
            memory_gb=job.get("memory_gb"), nproc=job.get("nproc", launch.DEFAULT_NPROC), cpu_s=job.get("cpu_s")
        )
        print(f"[server] {time.monotonic() - started:.2f}s warm and contained", flush=True)
        wire.send(REPLY_FD, {"warm": True})
        while True:  # until the candidate's source arrives (only once no other server of it is alive)
            load, arrays = wire.receive(0, MAX_REQUEST)
            if not load.get("ping"):
                break
            wire.send(REPLY_FD, {}, {"logits": np.zeros((1, 256), np.float32)})  # what a decoding step returns
        compiling = set_compile(server.tier.compile and server.device.type == "cuda")
        candidate_api._set_training_progress(1.0)  # every request but training is a measurement
        if load.get("diagnostics", True):
            from archlab.sandbox.guard import AuditGuard

            guard = AuditGuard()
            guard.install()
        server.candidate = contract.load(load["source"])
        contract.check_shape(
            contract.build_mixer(server.candidate, server.tier.d_model, server.tier.n_heads), server.tier.d_model
        )
        mixer_type = server.candidate.Mixer
        wire.send(
            REPLY_FD,
            {
                "ready": True,
                "has_step": callable(getattr(mixer_type, "step", None)),
                "has_ffn": getattr(server.candidate, "FFN", None) is not None,
                "dtype": server.widest_dtype(),
                "env": {
                    "torch": torch.__version__,
                    "device": server.device.type,
                    "python": platform.python_version(),
                    "candidate_compile": "compiled" if compiling else "eager",
                    "cuda": torch.version.cuda if server.device.type == "cuda" else None,
                    "gpu": torch.cuda.get_device_name(server.device) if server.device.type == "cuda" else None,
                    "fla": fla,
                },
            },
        )
    except wire.WireError:
        os._exit(0)  # the scorer did not need this server after all
    except BaseException as e:  # noqa: BLE001  (SystemExit from candidate code is a rejection too)
        _finish(guard, e)
    while True:
        try:
            req, arrays = wire.receive(0, MAX_REQUEST)
        except wire.WireError:
            os._exit(0)  # the scorer is done (or gone)
        op = req.get("op")
        try:
            if op not in Server.OPS:
                raise CandidateError("error", f"internal: unknown request {op!r}")
            header, out = getattr(server, op)(req, arrays)
            if guard is not None and guard.violations:
                raise CandidateError("forbidden", guard.summary())
            wire.send(REPLY_FD, header, {k: _array(v) for k, v in out.items()} if out else None)
        except BaseException as e:  # noqa: BLE001
            _finish(guard, e)


def _array(tensor):
    """A reply's tensor as numpy, which has no bfloat16: half-precision floats (a state under GPU
    autocast) travel as float32."""
    import torch

    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()


def _finish(guard, e: BaseException) -> None:
    """Report the rejection (a blocked operation decides the reason, caught or not) and leave."""
    error = _reply_error(e)
    if guard is not None and guard.violations:
        error = {"reason": "forbidden", "detail": guard.summary()}
    elif not isinstance(e, CandidateError):
        traceback.print_exception(e)
    print(f"[server] rejected: {error['reason']}: {error['detail']}", flush=True)
    try:
        wire.send(REPLY_FD, {"error": error})
    finally:
        os._exit(0)


def main() -> None:
    """A forked server (zygote.py): stdin and stdout are the scorer's pipes, stderr its log."""
    global REPLY_FD
    REPLY_FD = os.dup(1)
    os.dup2(2, 1)
    job, _ = wire.receive(0, wire.MAX_HEADER)
    serve(job)
    os._exit(0)
