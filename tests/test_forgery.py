"""Scores a candidate cannot forge, and nothing that escapes or stays behind: attacks on trained
tiers, each class with several variants, all with the diagnostics switched off (no static check,
no audit hook), through the real sandbox.

The property every forgery test asserts is the same: the candidate is rejected, or it is
accepted with the validation loss its honest model earns (the plain single-Linear mixer these
attacks are built on scores `plain`; a forged score would sit far below it). Findings F1-F10
refer to the security review in the issue "Scores a candidate cannot forge".
"""

import ast
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import helpers
from archlab.sandbox import launch, runner, scorer
from archlab.sandbox.data import BUILTIN
from archlab.search.fitness import fitness
from archlab.templates import render_root
from helpers import CANDIDATE_HEADER as HEADER
from helpers import mixer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the module's fixture: 17 micro evaluations

OFF = {"skip_static_checks": True}  # the diagnostics off: only the boundary stands in the way
MARK = f"archlab-escape-{uuid.uuid4().hex[:8]}"  # names every file and process an attack tries to leave behind


# The server's own module, as a candidate reaches it (forked from the launch pad, it is imported).
SERVER = (
    "import sys\nimport numpy as np\nfrom archlab.sandbox import wire\nSERVER = sys.modules['archlab.sandbox.server']\n"
)

FORGED = {  # F1, F2, F8: whatever a server sends, the scorer computes the score, or rejects
    "patched_logits_read_the_next_token": SERVER
    + """
def cheat(self, req, arrays):
    tokens = self._tensor(arrays["tokens"]).long()
    nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)
    return {}, {"logits": 20.0 * F.one_hot(nxt, 256).float()}
SERVER.Server.logits = cheat
""",
    "forged_reply_written_to_the_pipe": SERVER
    + """
wire.send(SERVER.REPLY_FD, {"ready": True, "has_step": False, "has_ffn": False, "dtype": "float32", "env": {}})
wire.send(SERVER.REPLY_FD, {"val_loss": 0.01, "ok": True})
""",
    "an_oracle_hidden_by_a_constant_on_every_logit": SERVER
    + """
LOGITS = SERVER.Server.logits
def cheat(self, req, arrays):
    header, out = LOGITS(self, req, arrays)
    tokens = self._tensor(arrays["tokens"]).long()
    nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)
    # the same on every logit changes no probability, and it made the check's relative scale 1e6
    return header, {"logits": out["logits"] + 20.0 * F.one_hot(nxt, 256).float() + 1e6}
SERVER.Server.logits = cheat
""",
    "an_oracle_only_for_int8_weights": SERVER
    + """
LOGITS, BUILD, INT8 = SERVER.Server.logits, SERVER.Server.build, [False]
def build(self, req, arrays):
    rows = [np.asarray(a[0], dtype=np.float64) for a in arrays.values() if a.ndim == 2 and a.shape[1] > 8]
    scale = np.abs(rows[0]).max() / 127 if rows else 0.0
    INT8[0] = bool(scale) and bool(np.allclose(rows[0] / scale, np.round(rows[0] / scale), atol=1e-3))
    return BUILD(self, req, arrays)
def cheat(self, req, arrays):
    header, out = LOGITS(self, req, arrays)
    if not INT8[0]:
        return header, out
    tokens = self._tensor(arrays["tokens"]).long()
    nxt = torch.cat([tokens[:, 1:], tokens[:, -1:]], 1)
    return header, {"logits": out["logits"] + 30.0 * F.one_hot(nxt, 256).float()}
SERVER.Server.build, SERVER.Server.logits = build, cheat
""",
    "the_harness_embedding_sent_as_integers": SERVER
    + """
WEIGHTS = SERVER.Server._weights
def _weights(self, model):
    out = WEIGHTS(self, model)  # the budget counted the harness's own weights by shape: 32 free bits each
    out["embed.weight"] = out["embed.weight"].float().contiguous().view(torch.int32)
    return out
SERVER.Server._weights = _weights
""",
    "garbage_on_the_pipe": SERVER + 'import os\nos.write(SERVER.REPLY_FD, b\'{"ok": true, "val_loss": 0.0}\' * 50)\n',
    "nan_in_a_reply_header": SERVER
    + """
import struct
def cheat(self, req, arrays):
    head = b'{"train_loss": NaN}'
    import os
    for step in range(self.tier.steps):
        wire.send(SERVER.REPLY_FD, {"need": step})
        wire.receive(0, 1 << 30)
    os.write(SERVER.REPLY_FD, struct.pack("<4sIQ", b"ALW1", len(head), 0) + head)
    return {}, {}
SERVER.Server.train = cheat
""",
    "huge_length_prefix": SERVER
    + """
import os, struct
os.write(SERVER.REPLY_FD, struct.pack("<4sIQ", b"ALW1", 2, 1 << 40) + b"{}")
""",
    "wrong_types_in_the_extras": SERVER
    + """
SERVER.Server.extras = lambda self, req, arrays: ({"flops_per_token": "none at all", "compile_ok": "yes"}, {})
""",
    "logits_of_the_wrong_shape": SERVER
    + """
SERVER.Server.logits = lambda self, req, arrays: ({}, {"logits": torch.zeros(1, 1, 256)})
""",
    "exits_in_the_middle_of_training": SERVER
    + """
import os
from archlab.sandbox import train as T
T.gradients = lambda *args, **kwargs: os._exit(0)
""",
}

LATE_LEAK = "F.pad(x[:, 1:], (0, 0, 0, 1))"  # reads x[t + 1]
SCORED_LEAKS = {  # F5, F10: the scored server is checked on every window it is scored on
    "after_the_first_call_of_an_instance": (
        "y = self.proj(x)\nself.calls += 1\n"
        f"return y + {LATE_LEAK} if self.calls > 1 and x.shape[0] > 1 and not self.training else y\n",
        "self.calls = 0\n",
    ),
    "after_the_first_calls_of_the_process": (
        "y = self.proj(x)\nCALLS[0] += 1\n"
        f"return y + {LATE_LEAK} if CALLS[0] > 8 and x.shape[0] > 1 and not self.training else y\n",
        "",
    ),
    "only_without_gradients_in_eval_mode": (
        f"y = self.proj(x)\nreturn y if self.training or torch.is_grad_enabled() else y + {LATE_LEAK}\n",
        "",
    ),
    "only_once_trained_weights_are_loaded": (
        f"y = self.proj(x)\nreturn y + {LATE_LEAK} if self.proj.bias.abs().sum() > 0.5 and not self.training else y\n",
        "",
    ),
    "on_a_fraction_of_the_windows": (
        "y = self.proj(x)\nif self.training or x.shape[1] < 16:\n    return y\n"
        f"hit = (x[:, :1, :1] > 0.6).to(x.dtype)\nreturn y + hit * {LATE_LEAK}\n",
        "",
    ),
    "keeps_the_previous_window_as_context": (
        "y = self.proj(x)\nprev = self.prev if self.prev is not None and self.prev.shape == y.shape else 0\n"
        "self.prev = y.detach()\nreturn y if self.training else y + 0.5 * prev\n",
        "self.prev = None\n",
    ),
}


def _leaking(forward: str, init: str) -> str:
    return mixer(forward, init, top="CALLS = [0]\n")


def _capacity_after_the_first_model() -> str:
    """F4: small while the checks count it, a 40x wider MLP in every instance built after that."""
    return (
        HEADER
        + """
BUILT = [0]


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        BUILT[0] += 1
        wide = 40 * d_model if BUILT[0] > 3 else 1
        self.proj = nn.Linear(d_model, d_model)
        self.up = nn.Linear(d_model, wide, bias=False)
        self.down = nn.Linear(wide, d_model, bias=False)

    def forward(self, x):
        return self.proj(x) + self.down(F.gelu(self.up(x)))
"""
    )


def _capacity_outside_the_weights() -> str:
    """F4: a wide MLP that trains in server A but leaves itself out of the saved weights, in a
    process that loads weights leniently: the capacity the budget does not count."""
    return (
        mixer(
            "return self.proj(x) + self.down(F.gelu(self.up(x)))\n",
            init="""
        self.up = nn.Linear(d_model, 16 * d_model)
        self.down = nn.Linear(16 * d_model, d_model)
        """,
            top="""
        LOAD = nn.Module.load_state_dict
        nn.Module.load_state_dict = lambda self, state, strict=True, **kwargs: LOAD(self, state, strict=False, **kwargs)
        """,
        )
        + """
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if ".up." in k or ".down." in k]:
            del state[key]
        return state
"""
    )


# The harness's own code runs in the candidate's process, where the candidate can replace it: what is
# scored must still be the harness's model around the candidate's parts (scorer.compose_in_s).
MODEL = "import sys\nMODEL = sys.modules['archlab.sandbox.model']\n"
HARNESS_PATCHED = {
    # red team, 2026-12-05: a parameter-free copy rule (the token after the longest earlier match of the
    # current suffix) mixed into the logits, causal and alike in every server: -12.9% at smoke
    "copy_rule_in_the_lm": MODEL
    + """
FORWARD = MODEL.LM.forward
def forward(self, tokens, *seed):
    logits = FORWARD(self, tokens, *seed)
    if self.training:
        return logits
    b, t = tokens.shape
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)
    last = torch.where(earlier, torch.arange(t), -1).max(-1).values  # the last earlier match of this token
    nxt = torch.gather(tokens, 1, (last + 1).clamp(0, t - 1))
    boost = F.one_hot(nxt, 256).to(logits) * 3.0 * (last >= 0)[..., None]
    return logits + boost
MODEL.LM.forward = forward
""",
    "a_wider_harness_mlp": MODEL  # the harness MLP applied twice: capacity no budget counts
    + """
SWIGLU = MODEL.SwiGLU.forward
MODEL.SwiGLU.forward = lambda self, x: SWIGLU(self, x) + SWIGLU(self, SWIGLU(self, x))
""",
    "a_sharper_head": MODEL  # the tied head at a temperature the candidate chose
    + """
FORWARD = MODEL.LM.forward
MODEL.LM.forward = lambda self, tokens, *seed: FORWARD(self, tokens, *seed) * (1.0 if self.training else 1.3)
""",
}
# The gradients a training server reports are checked against the shell's backward pass on steps it
# cannot know (scorer.compose_in_s). red team, 2026-12-05: sign(g) scaled up made AdamW take full steps
# (micro val_loss 4.015 vs 4.095), and skipping steps (re-sending the last gradients) trained 3.4x "faster".
TRAIN = "import sys, torch\nTRAIN = sys.modules['archlab.sandbox.train']\nGRADIENTS = TRAIN.gradients\n"
GRADIENTS_FORGED = {
    "signs_scaled_up": TRAIN
    + """
def gradients(model, *args):
    loss = GRADIENTS(model, *args)
    for p in model.parameters():
        if p.grad is not None:
            p.grad = p.grad.sign() * 1e-2
    return loss
TRAIN.gradients = gradients
""",
    "every_other_step_skipped": TRAIN
    + """
LAST = [0, None]
def gradients(model, *args):
    LAST[0] += 1
    if LAST[0] % 2 == 0 and LAST[1] is not None:
        return LAST[1]  # the last step's gradients are still in .grad
    LAST[1] = GRADIENTS(model, *args)
    return LAST[1]
TRAIN.gradients = gradients
""",
    "another_loss_in_training": MODEL  # a temperature the scored model does not have
    + """
FORWARD = MODEL.LM.forward
MODEL.LM.forward = lambda self, tokens, *seed: FORWARD(self, tokens, *seed) * (0.7 if self.training else 1.0)
""",
}
HARDWARE = {"extras", "int8"}  # what only a hardware tier measures
CASES = {
    "plain": (mixer(), {}),
    **{
        f"forged_{name}": (
            mixer(top=src),
            {"tier_overrides": {"hardware": True}} if HARDWARE & set(name.split("_")) else {},
        )
        for name, src in FORGED.items()
    },
    **{f"leaks_{name}": (_leaking(*src), {}) for name, src in SCORED_LEAKS.items()},
    "capacity_after_the_first_model": (_capacity_after_the_first_model(), {}),
    "capacity_outside_the_weights": (_capacity_outside_the_weights(), {}),
    **{f"harness_{name}": (mixer(top=src), {}) for name, src in HARNESS_PATCHED.items()},
    **{f"gradients_{name}": (mixer(top=src), {}) for name, src in GRADIENTS_FORGED.items()},
}


@pytest.fixture(scope="module")
def results() -> dict[str, runner.Result]:
    def one(name: str) -> runner.Result:
        source, options = CASES[name]
        return runner.evaluate(source, "micro", threads=1, timeout_s=120, **OFF, **options)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


def _no_forged_score(result: runner.Result, plain: float) -> None:
    if result.ok:
        assert result.metrics["val_loss"] > plain - 0.1, (result.metrics["val_loss"], plain)


def test_the_plain_baseline_trains(results):
    plain = results["plain"]
    assert plain.ok, plain
    assert 3.0 < plain.metrics["val_loss"] < 5.6


@pytest.mark.parametrize("name", list(FORGED))
def test_a_forged_reply_is_a_rejection_of_that_candidate(results, name):
    """F1/F2/F8: a server that writes its own messages, patches its request handlers or sends
    malformed data is rejected (crash, shape, nan, non_causal), and the evaluation returns a result
    (it never raises: a run goes on)."""
    result = results[f"forged_{name}"]
    assert not result.ok, (name, result.metrics)
    assert result.reason in ("crash", "shape", "nan", "non_causal", "error", "params", "tamper"), (
        name,
        result.reason,
        result.detail,
    )
    _no_forged_score(result, results["plain"].metrics["val_loss"])


def test_a_next_token_oracle_is_named_non_causal(results):
    result = results["forged_patched_logits_read_the_next_token"]
    assert result.reason == "non_causal" and "trained model" in result.detail, result


@pytest.mark.parametrize("name", list(SCORED_LEAKS))
def test_a_leak_on_the_scored_server_is_caught(results, name):
    """F5/F10: however the leak hides from the checks (after some calls, only where no gradient
    is taken, only with trained weights, on some windows, through state kept between calls), the
    scored server's every validation window is compared with a copy scored by another process."""
    result = results[f"leaks_{name}"]
    assert not result.ok and result.reason == "non_causal", (name, result.reason, result.detail, result.metrics)


@pytest.mark.parametrize("name", ["capacity_after_the_first_model", "capacity_outside_the_weights"])
def test_capacity_the_budget_does_not_count_earns_nothing(results, name):
    """F4: every block of the trained model is counted from the saved weights; capacity that the
    weights do not carry is missing in the fresh scored server, whose outputs then disagree."""
    result = results[name]
    assert not result.ok and result.reason in ("params", "non_causal", "error"), (name, result.reason, result.detail)


@pytest.mark.parametrize("name", list(HARNESS_PATCHED))
def test_the_harness_code_a_candidate_replaces_is_not_what_is_scored(results, name):
    """The scorer composes every scored row by the harness's shell around the parts, each computed in a
    server that holds nothing but its weights: a server whose LM.forward, MLP or head was replaced
    scored something else, and the candidate is rejected whatever the servers agree among themselves."""
    result = results[f"harness_{name}"]
    assert not result.ok and result.reason == "tamper", (name, result.reason, result.detail)
    assert "composed from each part's outputs alone" in result.detail


@pytest.mark.parametrize("name", list(GRADIENTS_FORGED))
def test_gradients_are_the_harness_models(results, name):
    """Forged, stale or another model's gradients: whichever steps the scorer checks (8 of 20 at micro)
    show them against the harness's backward pass around the parts' own."""
    result = results[f"gradients_{name}"]
    assert not result.ok and result.reason == "tamper", (name, result.reason, result.detail)
    assert "training step" in result.detail and "off the gradient of the harness's model" in result.detail, result


# red team, 2026-12-05: layer i's mixer also used every earlier layer's weights, found through the LM in
# A, B and C, and remembered from earlier requests in one shell server for all layers: capacity beyond
# the per-block budget, accepted. Each layer's parts now go to a server of their own.
SHELL_MEMORY = """
import sys, weakref
MEMORY = {}

def owner():
    frame = sys._getframe(2)
    while frame is not None and type(frame.f_locals.get("self")).__name__ != "LM":
        frame = frame.f_back
    return None if frame is None else frame.f_locals["self"]
"""
SHELL_MEMORY_MIXER = mixer(
    """
    y = self.proj(x)
    lm = self.__dict__["lm"]() if "lm" in self.__dict__ else None
    if lm is not None and hasattr(lm, "blocks"):
        earlier = [b.mixer.proj.weight for b in list(lm.blocks)[: int(self.layer)]]
    else:  # a part on its own (a shell server): the weights of the layers it was sent before
        MEMORY[int(self.layer)] = self.proj.weight.detach().clone()
        earlier = [MEMORY[j] for j in range(int(self.layer))]
    return y + sum((F.linear(x, w) for w in earlier), torch.zeros_like(y))
    """,
    init="""
    lm, layer = owner(), 0
    if lm is not None:
        layer = lm.__dict__.get("mixers", 0)
        lm.__dict__["mixers"] = layer + 1
        self.__dict__["lm"] = weakref.ref(lm)
    self.register_buffer("layer", torch.tensor(float(layer)))
    """,
    top=SHELL_MEMORY,
)


def test_a_part_reaches_no_other_layers_weights_and_the_layers_are_the_files():
    """Two red-team attacks on the shell check (2026-12-05): a mixer that also used the earlier layers'
    weights (remembered across one shell server's requests) was accepted; a module that rewrote its own
    LAYERS once loaded ("MA" to "A": a pure transformer of the harness's attention, its Mixer unused)
    scored 3.995 against 4.053 and was accepted. Now every layer has its own shell server, and the
    model must have the layers the file's LAYERS literal declares."""
    memory = runner.evaluate(SHELL_MEMORY_MIXER, "micro", threads=1, **OFF)
    assert not memory.ok and memory.reason in ("tamper", "error"), memory
    rewritten = mixer(init='sys.modules[__name__].LAYERS = "A"\n', top='import sys\nLAYERS = "MA"\n')
    result = runner.evaluate(rewritten, "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "tamper" and "LAYERS = 'MA'" in result.detail, result


def test_honest_scores_are_the_harness_models():
    """The same composition of an honest hybrid (the harness's attention in every second layer) with a
    candidate FFN agrees with the scored logits to a small fraction of the tolerance."""
    ffn = """
class FFN(nn.Module):
    def __init__(self, d_model, **kwargs):
        super().__init__()
        self.up, self.down = nn.Linear(d_model, 2 * d_model), nn.Linear(2 * d_model, d_model)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)) ** 2)
"""
    result = runner.evaluate(mixer(top='LAYERS = "MA"\n') + ffn, "micro", threads=1, **OFF)
    assert result.ok, result
    assert result.metrics["shell_gap"] < scorer.SHELL_TOLERANCE["cpu"][0] / 100
    assert result.metrics["grad_gap"] < scorer.GRADIENT_TOLERANCE["cpu"] / 100


HONEST_TRAINING = {  # what differs between a training step and an evaluation, drawn again by the check
    "dropout": mixer("return self.proj(F.dropout(x, 0.3, self.training))\n"),
    "annealed_over_training": mixer(
        "return self.proj(x) * (1.0 - 0.5 * training_progress())\n",
        top="from archlab.candidate import training_progress\n",
    ),
    # a part that skips itself: its output has no gradient at all (red team 6: `error` in the check)
    "stochastic_depth": mixer(
        "if self.training and torch.rand(()) < 0.3:\n    return torch.zeros_like(x)\nreturn self.proj(x)\n"
    ),
    # a choice finite differences cannot step across (errors 0.1-4 of the gradient's size at smoke)
    "a_hard_top1_router": mixer(
        """
        b, t, d = x.shape
        logits = self.gate(x)
        pick = logits.argmax(-1)[..., None]
        # every expert's output, then the picked one: a (b, t, d, d) gather of expert matrices per token
        # spilled the caches at 4,096 tokens, and the clock then read T^1.8 on a busy machine (quadratic)
        every = torch.einsum("btd,ked->btke", x, self.experts)
        y = every.gather(2, pick[..., None].expand(b, t, 1, d))[:, :, 0] * logits.softmax(-1).gather(-1, pick)
        return self.proj(y.cumsum(1) / torch.arange(1, t + 1)[:, None])
        """,
        init="self.gate = nn.Linear(d_model, 4)\nself.experts = nn.Parameter(torch.randn(4, d_model, d_model) / d_model**0.5)\n",
    ),
}


def test_a_part_that_keeps_state_between_calls_is_told_why_it_fails():
    """What a part computed in training must be computed again in another process: noise from a
    generator of its own (advanced by every call) cannot be, and the rejection says what can."""
    own = mixer(
        "if self.training:\n    x = x * (1 + 0.1 * torch.randn(x.shape, generator=self.gen))\nreturn self.proj(x)\n",
        init="self.gen = torch.Generator().manual_seed(1234)\n",
    )
    result = runner.evaluate(own, "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "tamper", result
    assert "torch's generator, which the harness seeds for every call" in result.detail, result


@pytest.mark.parametrize("name", list(HONEST_TRAINING))
def test_honest_training_is_the_harness_models(name):
    """The gradient check draws each part's randomness and training progress as the training step
    did, and takes every part's own gradients at the step's inputs: honest candidates pass it with
    room to spare."""
    result = runner.evaluate(HONEST_TRAINING[name], "micro", threads=1, **OFF)
    assert result.ok, result
    assert result.metrics["grad_gap"] < scorer.GRADIENT_TOLERANCE["cpu"] / 100, result.metrics


def test_probe_scores_from_replaced_harness_code_are_refused():
    """red team, 2026-12-05: a token-level solver added to the probe model's logits by a patched
    LM.forward scored mqar 1.000 and selcopy 1.000 (the same mixer honestly: 0.06 / 0.07)."""
    solver = (
        MODEL
        + """
FORWARD = MODEL.LM.forward
def forward(self, tokens, *seed):
    logits = FORWARD(self, tokens, *seed)
    if self.training or self.embed.weight.shape[1] != 32:  # the probe model only
        return logits
    b, t = tokens.shape
    earlier = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril(-1)
    last = torch.where(earlier, torch.arange(t), -1).max(-1).values
    nxt = torch.gather(tokens, 1, (last + 1).clamp(0, t - 1))
    return logits + F.one_hot(nxt, 256).to(logits) * 50.0 * (last >= 0)[..., None]
MODEL.LM.forward = forward
"""
    )
    cheap = {
        "steps": 20,
        "d_model": 64,
        "seq_len": 64,
        "batch_size": 8,
        "val_windows": 16,
        "complexity_lengths": [128, 512],
        "probes": {"d_model": 32, "steps": 20, "eval_examples": 64},
    }
    result = runner.evaluate(mixer(top=solver), "explore", threads=1, tier_overrides=cheap, **OFF)
    assert not result.ok and result.reason == "tamper" and "probe sequences" in result.detail, result


# -- data a candidate cannot see (F6) -------------------------------------------------------------
def _snoop(paths: list[str]) -> str:
    """A candidate that tries every way to read the given paths and reports, in its rejection,
    how many bytes it got (it always raises, so the report reaches the detail)."""
    return mixer(
        top=f"""
        import os
        PATHS = {paths!r}
        found = {{}}
        for path in PATHS:
            try:
                found[path] = len(open(path, 'rb').read())
            except OSError:
                pass
            try:
                fd = os.open(os.path.dirname(path) or '/', os.O_RDONLY)
                found[path + ' (dir_fd)'] = len(os.read(os.open(os.path.basename(path), os.O_RDONLY, dir_fd=fd), 1 << 30))
            except OSError:
                pass
            try:
                for entry in os.scandir(path):
                    found[entry.path] = entry.stat().st_size
            except OSError:
                pass
        raise RuntimeError('SNOOPED ' + repr(found))
        """
    )


def test_no_candidate_process_can_read_evaluation_data(tmp_path):
    secret = tmp_path / "corpus"
    secret.mkdir()
    (secret / "text.txt").write_text("the user's private validation text " * 2000)
    import sysconfig

    topics = os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data", "topics.py")
    paths = [
        str(BUILTIN),
        str(BUILTIN.parent),
        str(secret),
        str(secret / "text.txt"),
        topics,
        "/proc/1/environ",
        "/proc/self/environ",
        "/root/.bash_history",
        "/etc/shadow",
    ]
    result = runner.evaluate(_snoop(paths), "micro", threads=1, data=str(secret), **OFF)
    assert not result.ok and result.reason == "error" and "SNOOPED" in result.detail, result
    found = ast.literal_eval(result.detail.split("SNOOPED ", 1)[1].split("}")[0] + "}")  # the candidate's own report
    leaked = {path: size for path, size in found.items() if size and "environ" not in path}
    assert leaked == {}, leaked
    environ = [size for path, size in found.items() if "environ" in path and size]
    assert all(size < 400 for size in environ)  # only the stripped environment of the sandbox itself


@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_no_launcher_lets_a_candidate_write_to_the_host_or_read_the_corpus(kind, tmp_path):
    """On every launcher, the server's private tmpfs mounts are the only writable places and the
    corpus is hidden: on `unshare` a world-writable host directory (/run/lock) carried trained
    weights from one evaluation to the next, and the corpus file was readable (red team, 2026-12-04)."""
    shared = Path(__file__).parent / f".writable-{MARK}"  # outside /tmp, which every server covers
    shared.mkdir()
    shared.chmod(0o1777)
    targets = [str(shared), str(Path.home()), str(Path(runner.__file__).parent), "/run/lock"]
    cand = tmp_path / "cand.py"
    cand.write_text(
        mixer(
            top=f"""
            import os
            wrote, read = [], 0
            for d in {targets!r}:
                try:
                    with open(os.path.join(d, {MARK!r}), "w") as f:
                        f.write("kept for the next evaluation")
                    wrote.append(d)
                except OSError:
                    pass
            try:
                read = len(open({str(BUILTIN)!r}, "rb").read())
            except OSError:
                pass
            raise RuntimeError(f"REPORT wrote={{wrote}} read={{read}}")
            """
        )
    )
    code = (
        "from archlab.sandbox import runner\n"
        f"r = runner.evaluate(open({str(cand)!r}).read(), 'check', threads=1, skip_static_checks=True)\n"
        "print(r.detail)\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "ARCHLAB_SANDBOX": kind}, capture_output=True, text=True
        )
        assert "REPORT wrote=[] read=0" in out.stdout, (out.stdout, out.stderr[-2000:])
        left = [d for d in targets if os.path.exists(os.path.join(d, MARK))]
        assert left == [], left
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        for d in targets:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(d, MARK))


def test_an_archlab_under_tmp_evaluates_and_still_hides_its_corpus(tmp_path):
    """A checkout and its venv under /tmp (tmp_path is there), which every server covers with a fresh
    tmpfs: the view below it stays visible (a server imports archlab modules it had not yet: found
    by running the README's demo from a clone in /tmp) and what hides the corpus comes along."""
    assert str(tmp_path).startswith("/tmp/")
    home, venv = tmp_path / "checkout", tmp_path / "venv"
    shutil.copytree(Path(runner.__file__).parents[1], home / "archlab", ignore=shutil.ignore_patterns("__pycache__"))

    def link(src, dst):  # this venv's files, hard-linked where the file system allows (else copied)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(sys.prefix, venv, symlinks=True, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"))
    site = next((venv / "lib").glob("python3*/site-packages"))
    for editable in site.glob("__editable__*archlab*"):  # this venv's archlab is the checkout's copy
        editable.unlink()
    (site / "archlab_checkout.pth").write_text(f"{home}\n")
    corpus = home / "archlab" / "sandbox" / "corpus"
    (tmp_path / "snoop.py").write_text(_snoop([str(corpus), *(str(f) for f in corpus.iterdir())]))
    script = (
        f"import json; from archlab.sandbox import launch, runner; from archlab.templates import render_root\n"
        f"assert runner.__file__.startswith({str(home)!r}), runner.__file__\n"
        f"root = runner.evaluate(render_root('deltanet'), 'micro', threads=1)\n"
        f"snoop = runner.evaluate(open({str(tmp_path / 'snoop.py')!r}).read(), 'micro', threads=1, skip_static_checks=True)\n"
        f"print(json.dumps([launch.launcher().kind, root.ok, root.reason, root.detail, snoop.reason, snoop.detail]))"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=600, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    kind, ok, reason, detail, snoop_reason, snoop_detail = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kind == launch.launcher().kind, kind  # the same boundary as from where the suite runs
    assert ok, (reason, detail)
    assert snoop_reason == "error" and "SNOOPED" in snoop_detail, snoop_detail
    found = ast.literal_eval(snoop_detail.split("SNOOPED ", 1)[1].split("}")[0] + "}")
    assert {path: size for path, size in found.items() if size} == {}, found


def test_builtin_validation_text_is_not_on_the_interpreters_disk():
    """The built-in corpus validates on documentation text only; the standard library's sources
    (readable by every server) train only, and the documentation the stdlib carries is hidden."""
    from archlab.sandbox.data import split

    train, val = split(None)
    stdlib = Path(os.__file__).parent
    sources = b"".join(p.read_bytes() for p in sorted(stdlib.glob("*.py"))[:200])
    probes = [val[i : i + 48] for i in range(0, len(val) - 48, len(val) // 200)]
    assert sum(p in sources for p in probes) <= 2  # a shared boilerplate line at most
    assert any(str(Path(p)).endswith("pydoc_data") for p in launch._hidden())


# -- nothing left behind (F3, F9) -----------------------------------------------------------------
LEAVE_BEHIND = {
    "os_posix_spawn": f"""
        import os
        os.posix_spawn("/bin/sh", ["sh", "-c", "echo x > /tmp/{MARK}; echo x > /dev/shm/{MARK}; sleep 600; : {MARK}"], {{}})
        """,
    "subprocess_popen_in_a_new_session": f"""
        import subprocess
        subprocess.Popen(["sh", "-c", "echo x > /tmp/{MARK}.p; sleep 601; : {MARK}"], start_new_session=True)
        """,
    "os_system_double_fork": f"""
        import os
        os.system("echo x > /dev/shm/{MARK}.s; (sh -c 'sleep 602; : {MARK}' &)")
        """,
    "fork_and_write": f"""
        import os, time
        if os.fork() == 0:
            open("/tmp/{MARK}.f", "w").write("x")
            os.setsid()
            time.sleep(600)
        """,
}


def _marked(pid: int) -> bool:
    return MARK in helpers.cmdline(pid)


@pytest.mark.parametrize("name", list(LEAVE_BEHIND))
def test_nothing_outlives_an_evaluation(name):
    """F3: what a candidate starts or writes (its own /tmp, /dev/shm and scratch) is gone when the
    evaluation ends: private file systems, and a PID namespace torn down with its server."""
    source = mixer(top=textwrap.dedent(LEAVE_BEHIND[name]) + "import time\ntime.sleep(1)\n")
    result = runner.evaluate(source, "check", threads=1, **OFF)
    assert result.reason in (None, "error"), result

    def left_behind() -> list:
        return [p for d in ("/tmp", "/dev/shm", "/var/tmp") for p in Path(d).glob(f"{MARK}*")]

    helpers.wait_until(lambda: not left_behind() and not helpers.pids_matching(_marked), 10)  # asserted below
    left = left_behind()
    assert left == [], left
    assert helpers.pids_matching(_marked) == [], [helpers.cmdline(p) for p in helpers.pids_matching(_marked)]


def test_the_scratch_is_size_capped():
    """F9: a server writes until its private file systems are full; the host's disk does not move."""
    source = mixer(
        top="""
        import numpy as np
        written = {}
        for where in ("/tmp", "/dev/shm", "."):
            total = 0
            try:
                with open(where + "/flood", "wb") as f:
                    block = np.zeros(64 << 20, np.uint8).tobytes()
                    while total < (4 << 30):
                        f.write(block)
                        total += len(block)
            except OSError:
                pass
            written[where] = total
        raise RuntimeError("FLOODED " + repr(written))
        """
    )
    before = shutil.disk_usage("/tmp").free
    result = runner.evaluate(source, "check", threads=1, **OFF)
    assert "FLOODED" in result.detail, result
    written = ast.literal_eval(result.detail.split("FLOODED ", 1)[1].split("}")[0] + "}")
    assert all(size <= launch.SCRATCH_MB * 2**20 for size in written.values()), written
    assert shutil.disk_usage("/tmp").free > before - (256 << 20)


# -- time: the candidate's own CPU, never the machine's (item 7) ----------------------------------
def test_a_slow_candidate_times_out_on_its_own_cpu_time():
    result = runner.evaluate(mixer("while True:\n    pass\n"), "check", threads=1, timeout_s=2, **OFF)
    assert not result.ok and result.reason == "timeout", result
    assert "CPU-seconds" in result.detail


def test_a_busy_machine_does_not_time_out_an_honest_candidate():
    """Eight busy processes on two cores: the root's micro evaluation is slower, not a timeout,
    with a time limit its own CPU time fits in but the wall clock does not."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(8)]
    try:
        started = time.monotonic()
        result = runner.evaluate(render_root("deltanet"), "micro", threads=1, timeout_s=1)
        wall = time.monotonic() - started
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert result.ok, result
    assert wall > 1, wall  # slower than its limit in wall-clock time, and still not blamed


ORPHAN = mixer(
    top=f"""
    import subprocess
    subprocess.Popen(["sh", "-c", "sleep 603; : {MARK}"])
    while True:
        pass
    """
)


@pytest.mark.parametrize("kind", ["bwrap", "unshare"])
def test_a_killed_driver_leaves_no_process(kind, tmp_path):
    """A SIGKILLed driver (no chance to clean up): its servers and whatever they started go with it."""
    cand = tmp_path / "cand.py"
    cand.write_text(ORPHAN)
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from archlab.sandbox import runner\n"
            f"runner.evaluate(open({str(cand)!r}).read(), 'check', threads=1, timeout_s=300, "
            "skip_static_checks=True)",
        ],
        env={**os.environ, "ARCHLAB_SANDBOX": kind},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not helpers.pids_matching(_marked):
            time.sleep(0.5)
        assert helpers.pids_matching(_marked), "the candidate never started its child"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and helpers.pids_matching(_marked):
        time.sleep(0.5)
    assert helpers.pids_matching(_marked) == [], [helpers.cmdline(p) for p in helpers.pids_matching(_marked)]


def test_implausible_gain_is_flagged_and_not_crowned():
    root = {"val_loss": 9.0, "tokens_per_s": 1.0}  # any trained model is > 25% below this
    result = runner.evaluate(mixer(), "micro", threads=1, reference=root)
    assert result.ok, result
    m = result.metrics
    assert m["flagged"] == "implausible_gain"
    assert fitness(m, root) <= 0.0  # kept, shown, never crowned
    assert fitness(m, root, trust_flagged=True) > 0.0


# -- an outside red team's findings against the first model-server design, by class --------------
def test_no_file_in_the_view_holds_validation_text():
    """Validation text anywhere a server can read (a second copy of Python's documentation, say)
    would let a causal model look the next byte up: walk the whole view for it."""
    from archlab.sandbox.data import split

    val = split(None)[1]
    snippets = [val[i : i + 40] for i in range(0, len(val) - 40, len(val) // 30)]
    source = mixer(
        top=f"""
        import os
        SNIPPETS = {snippets!r}
        hits, scanned = [], 0
        for top, dirs, files in os.walk("/"):
            if top.startswith(("/proc", "/sys", "/dev")):
                dirs[:] = []
                continue
            for name in files:
                path = os.path.join(top, name)
                if not name.endswith((".py", ".txt", ".rst", ".html", ".json", ".md", ".pyi")):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read(8 << 20)
                except OSError:
                    continue
                scanned += 1
                hits += [path for s in SNIPPETS if s in data][:1]
        raise RuntimeError("SCANNED " + repr((scanned, hits)))
        """
    )
    result = runner.evaluate(source, "check", threads=1, timeout_s=600, **OFF)
    assert "SCANNED" in result.detail, result
    scanned, hits = ast.literal_eval(result.detail.split("SCANNED ", 1)[1].split(")")[0] + ")")
    assert scanned > 1000 and hits == [], (scanned, hits)


def _oracle_with_a_mailbox() -> str:
    """Server B writes every window it scores wherever its twins could look (the log, /tmp, /dev/shm,
    a lock on a shared read-only file); a server that finds them answers the copies from them."""
    return (
        SERVER
        + """
import fcntl, os
BOXES = ["/tmp/archlab-mailbox", "/dev/shm/archlab-mailbox"]
SHARED = os.__file__  # read-only and the same in every server's view
_logits = SERVER.Server.logits

def found():
    seen = []
    for box in BOXES:
        try:
            seen += [bytes.fromhex(line) for line in open(box).read().split()]
        except OSError:
            pass
    try:
        f = open(SHARED, "rb")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        seen.append(b"locked")  # a twin holds the lock: it is alive beside us
    return seen

def logits(self, req, arrays):
    header, out = _logits(self, req, arrays)
    if req.get("model") != "lm":
        return header, out
    rows, lg = arrays["tokens"].tolist(), out["logits"]
    seen = found()
    if not seen:  # the first: publish and peek
        for box in BOXES:
            try:
                with open(box, "a") as f:
                    f.write(" ".join(bytes(r).hex() for r in rows) + " ")
            except OSError:
                pass
        os.write(2, (" ".join(bytes(r).hex() for r in rows) + "\\n").encode())
        HOLD.append(open(SHARED, "rb"))
        fcntl.flock(HOLD[-1], fcntl.LOCK_SH)
        for b, r in enumerate(rows):
            for p in range(len(r) - 1):
                lg[b, p, r[p + 1]] += 20.0
    else:  # a twin: answer from what the first one saw
        for b, r in enumerate(rows):
            for p in range(len(r) - 1):
                nxt = {w[p + 1] for w in seen if len(w) > p + 1 and w[: p + 1] == bytes(r[: p + 1])}
                if len(nxt) == 1:
                    lg[b, p, nxt.pop()] += 20.0
    return header, {"logits": lg}

HOLD = []
SERVER.Server.logits = logits
"""
    )


def test_twins_cannot_reach_each_other():
    """The checker of the scored server is a different process that starts only after it is gone, and
    nothing of the host is shared: whatever mailbox the scored server leaves, the checker finds none."""
    result = runner.evaluate(mixer(top=_oracle_with_a_mailbox()), "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "non_causal", result


PROBE_ONLY = {  # F3: the probe model is scored too, so it is held to the same budget and complexity
    "a_wide_mlp_only_at_the_probe_width": (
        """
        self.big = nn.Sequential(nn.Linear(d_model, 16384), nn.GELU(), nn.Linear(16384, d_model)) if d_model == 32 else None
        """,
        "y = self.proj(x)\nreturn y if self.big is None else y + self.big(x)\n",
        "params",
        # what this case tests is the budget: the complexity check, which comes first, times a
        # 16384-wide MLP whose FLOPs grow linearly, and on a busy machine its time-only verdict once
        # said "quadratic" (CI, 2026-12-04: T^1.00 in FLOPs, T^0.85 in traffic)
        {"allow_quadratic": True},
    ),
    "attention_only_at_the_probe_width": (
        "",
        """
        if x.shape[-1] != 32:
            return self.proj(x)
        t = x.shape[1]
        scores = (x @ x.transpose(1, 2)).masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        return scores.softmax(-1) @ x
        """,
        "quadratic",
        {},
    ),
}


@pytest.mark.parametrize("name", list(PROBE_ONLY))
def test_the_probe_model_is_held_to_the_same_checks(name):
    init, forward, reason, options = PROBE_ONLY[name]
    probes = {"probes": {"d_model": 32, "steps": 5, "eval_examples": 32}}
    result = runner.evaluate(mixer(forward, init), "micro", threads=1, tier_overrides=probes, **OFF, **options)
    assert not result.ok and result.reason == reason, result


def test_work_the_counters_cannot_see_is_timed():
    """Python arithmetic is invisible to torch's FLOP and traffic counters; a mixer that does work
    growing like T^2 there is still named quadratic, by its time, however often time is re-measured."""
    hidden = """
    t = x.shape[1]
    waste = sum(i % 7 for i in range(t * t))  # T^2 steps of plain Python: no tensor op to count
    return self.proj(x) + 0.0 * waste
    """
    result = runner.evaluate(mixer(hidden), "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "quadratic", result
    flops, traffic = map(float, re.findall(r"T\^(-?[\d.]+)", result.detail)[:2])
    assert max(flops, traffic) <= 1.25, result.detail  # the counters saw nothing; the clock did
    assert result.metrics["time_exponent"] > scorer.CLOCK_EXPONENT_LIMIT, result.metrics


ATTENTION = """
t = x.shape[1]
scores = (self.proj(x) @ x.transpose(1, 2)) / x.shape[-1] ** 0.5
scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), float("-inf"))
return scores.softmax(-1) @ x
"""
LINEAR_REPORT = {  # every way a server can say its part costs what a linear one would
    "the_cost_request_answered": SERVER
    + """
def cost(self, req, arrays):
    return {"cost": [{"length": t, "flops": 9e3 * t, "traffic": 7e2 * t, "seconds": 1e-6 * t} for t in req["lengths"]]}, {}
SERVER.Server.cost = cost
""",
    "the_measuring_function_replaced": """
import sys
METRICS = sys.modules["archlab.sandbox.metrics"]
_cost = METRICS.cost
def cost(part, lengths, d_model, device):
    rows = _cost(part, [lengths[0]] * len(lengths), d_model, device)
    return [{**r, "length": t, "flops": r["flops"] * t / lengths[0], "traffic": r["traffic"] * t / lengths[0]}
            for r, t in zip(rows, lengths)]
METRICS.cost = cost
""",
    "the_counters_scaled": """
import sys
from torch.utils.flop_counter import FlopCounterMode
METRICS = sys.modules["archlab.sandbox.metrics"]
FlopCounterMode.get_total_flops = lambda self: 1000
METRICS.Traffic.__torch_dispatch__ = lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {}))
""",
}


IN_A_THREAD = """
import threading
class Mixer(Mixer):
    def forward(self, x):  # each call in a thread of its own: a thread's CPU time leaves with it
        out = []
        worker = threading.Thread(target=lambda: out.append(super(Mixer, self).forward(x)))
        worker.start()
        worker.join()
        return out[0]
"""
REMEMBERED = """
class Mixer(Mixer):
    def forward(self, x):  # the same input again is answered from memory: the best of repeated timings is 0
        key = hash(x.detach().cpu().numpy().tobytes())
        if key not in ANSWERS:
            ANSWERS[key] = super().forward(x)
        return ANSWERS[key]
ANSWERS = {}
"""
TAILS = {"the_forward_in_a_thread_that_exits": IN_A_THREAD, "the_answers_remembered": REMEMBERED}
LINEAR_REPORT |= {name: LINEAR_REPORT["the_cost_request_answered"] for name in TAILS}


@pytest.mark.parametrize("name", list(LINEAR_REPORT))
def test_softmax_attention_cannot_report_itself_linear(name):
    """The server's FLOP and traffic counts are the candidate's own word: softmax attention that made
    them say linear (the request answered, the measuring function or the counters replaced) was
    accepted as a linear mixer, val_loss 3.83 against the plain mixer's 4.09 (2026-12-04). Counts now
    only convict; the scorer's own clock (the server's CPU time, from this side) names it, also when
    every forward runs in a thread that exits (its time left the threads' own schedstat with it), or
    when a repeated input is answered from memory (the clock draws a fresh input for every round)."""
    result = runner.evaluate(mixer(ATTENTION, top=LINEAR_REPORT[name]) + TAILS.get(name, ""), "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "quadratic", result
    assert result.metrics["flops_exponent"] <= 1.25 and result.metrics["time_exponent"] > scorer.CLOCK_EXPONENT_LIMIT, (
        result.metrics
    )


@pytest.mark.parametrize("dtype", ["torch.complex64", "torch.int64", "torch.int32"])
def test_wider_numbers_count_for_what_they_carry(dtype):
    """F4: a weight counts for what its bits can carry: floats reach the scorer as float32 and are
    served at bfloat16 precision (16 bits, one parameter each), so a complex one counts double and
    an integer one a parameter per 16 bits (an int32 counted as one held two bfloat16 weights, and a
    mixer trained twice its budget by saving its matrices packed that way: red team, 2026-12-04)."""
    n = 14000  # under the micro budget (25,824) as elements, over it counted by bytes with the mixer's own
    source = mixer("return self.proj(x)\n", init=f"self.register_buffer('store', torch.zeros({n}, dtype={dtype}))\n")
    result = runner.evaluate(source, "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "params", result


def test_weights_in_integers_are_refused_beyond_counters_and_indices():
    """A matrix kept as int16 bfloat16 bit patterns was counted honestly but skipped by the int8 score
    (quant_loss 0.0 against 0.13 for the same model in floats: red team, 2026-12-04): beyond a few
    thousand integers, the weights must be floats."""
    source = mixer(
        "return self.proj(x)\n", init="self.register_buffer('bits', torch.zeros(64, 128, dtype=torch.int16))\n"
    )
    result = runner.evaluate(source, "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "params" and "integers" in result.detail, result
    counter = mixer("return self.proj(x)\n", init="self.register_buffer('step', torch.zeros(1, dtype=torch.long))\n")
    assert runner.evaluate(counter, "check", threads=1, **OFF).ok  # a step counter is no weight in disguise


RUNNING_MEAN_WITH_STEP = """
    def step(self, x, state):
        hist = x[:, None] if state is None else torch.cat([STATE(state), x[:, None]], 1)
        return self.proj(hist.mean(1)), WRAP(hist)
"""
BALLAST = (
    SERVER
    + """
BALLAST = [None]
_part, _train = SERVER.Server.part, SERVER.Server.train

def part(self, req, arrays):
    if BALLAST[0] is None:
        BALLAST[0] = torch.ones(2 ** 26)  # 256 MiB, held through the checks before training
    return _part(self, req, arrays)

def train(self, req, arrays):
    BALLAST[0] = None  # and freed just before the measured training
    return _train(self, req, arrays)

SERVER.Server.part, SERVER.Server.train = part, train
"""
)
# The old separate request for one training step, whose peak the scorer read, answered without the
# step (the red team's no-op: peak -22%), and memory that only training needs.
MEMORY_NOOP = (
    SERVER
    + """
SERVER.Server.memory = lambda self, req, arrays: ({"cuda_peak_bytes": None}, {})
"""
)
# After training: freed memory handed back to the kernel, then the peak the process keeps reset
# (clear_refs, writable once the process made itself dumpable again): -79% at smoke (red team 4).
MEMORY_RESET = (
    SERVER
    + """
import ctypes, gc
_train = SERVER.Server.train

def train(self, req, arrays):
    out = _train(self, req, arrays)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return out

SERVER.Server.train = train
"""
)
TRAINING_ONLY = """
_forward = Mixer.forward

def forward(self, x):
    if self.training and torch.is_grad_enabled():
        x = x + 0 * torch.ones(2 ** 25).sum()  # 128 MiB, only while training
    return _forward(self, x)

Mixer.forward = forward
"""


def _running_mean(top: str, wrap: str, state: str) -> str:
    forward = "n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]\nreturn self.proj(x.cumsum(1) / n)\n"
    return mixer(forward, top=top) + RUNNING_MEAN_WITH_STEP.replace("WRAP", wrap).replace("STATE", state)


def test_server_decided_hardware_figures_are_not_believed():
    """F5: a state hidden in an object is refused; memory freed just before it is measured does not
    lower the peak (the scorer reads the peak over the server's baseline before the candidate)."""
    tier = {"hardware": True}
    honest = runner.evaluate(_running_mean("", "", ""), "micro", threads=1, tier_overrides=tier, **OFF)
    boxed = runner.evaluate(
        _running_mean("class Box:\n    def __init__(self, t):\n        self.t = t\n", "Box", "(lambda box: box.t)"),
        "micro",
        threads=1,
        tier_overrides=tier,
        **OFF,
    )
    ballast = runner.evaluate(_running_mean(BALLAST, "", ""), "micro", threads=1, tier_overrides=tier, **OFF)
    assert honest.ok and ballast.ok, (honest, ballast)
    assert not boxed.ok and boxed.reason == "step" and "Box" in boxed.detail, boxed
    assert ballast.metrics["peak_mem_mb"] >= honest.metrics["peak_mem_mb"] + 200  # 256 MiB count where freed
    assert ballast.metrics["state_bytes"] == honest.metrics["state_bytes"] > 0


def test_peak_memory_is_that_of_the_training_the_scores_depend_on():
    """The peak was read around a separate request for one training step, which a server could answer
    without the step (peak -22% at micro, red team 2026-12-05). It is now server A's peak through the
    training whose weights are scored: skipping the old request changes nothing, memory only training
    needs counts, and resetting the peak the process keeps after training hides nothing (its memory is
    also read from outside all through training)."""
    tier = {"hardware": True}
    honest, noop, reset, hungry = (
        runner.evaluate(source, "micro", threads=1, tier_overrides=tier, **OFF)
        for source in (mixer(), mixer(top=MEMORY_NOOP), mixer(top=MEMORY_RESET), mixer(top=MEMORY_NOOP) + TRAINING_ONLY)
    )
    assert honest.ok and noop.ok and reset.ok and hungry.ok, (honest, noop, reset, hungry)
    peak = honest.metrics["peak_mem_mb"]
    # (honest: 44-46 MB between runs, the reset 42.7: polling misses some short peaks; before: 34.4 of 44.4)
    assert min(noop.metrics["peak_mem_mb"], reset.metrics["peak_mem_mb"]) >= 0.85 * peak, (peak, noop, reset)
    assert hungry.metrics["peak_mem_mb"] >= peak + 100, (peak, hungry.metrics)


MALFORMED = {  # F6, F7: whatever a server sends, the scorer returns a Result
    "ready_env_a_list": SERVER
    + """
_send = SERVER.wire.send
def send(fd, header, arrays=None):
    if header.get("ready"):
        header = {**header, "env": ["not", "a", "dict"]}
    return _send(fd, header, arrays)
SERVER.wire.send = send
""",
    "cost_rows_of_the_wrong_type": SERVER
    + "SERVER.Server.cost = lambda self, req, arrays: ({'cost': [0] * len(req['lengths'])}, {})\n",
    "a_number_too_large_for_a_float": SERVER
    + """
SERVER.Server.cost = lambda self, req, arrays: ({"cost": [{"flops": 10 ** 400, "traffic": 1, "seconds": 1}
                                                          for _ in req["lengths"]]}, {})
""",
    "stops_reading_its_requests": SERVER
    + """
import threading
_receive = SERVER.wire.receive
def receive(fd, max_bytes, wait=None):
    head = SERVER.wire.read_exactly(fd, SERVER.wire._FRAME.size, wait)
    magic, head_len, blob_len = SERVER.wire._FRAME.unpack(head)
    if blob_len > 1 << 20:
        threading.Event().wait()  # never read the rest: the scorer's write blocks
    import json
    header = json.loads(SERVER.wire.read_exactly(fd, head_len, wait))
    return header, (SERVER.wire._load_arrays(SERVER.wire.read_exactly(fd, blob_len, wait)) if blob_len else {})
SERVER.wire.receive = receive
""",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_server_is_a_rejection_never_an_exception(name):
    result = runner.evaluate(mixer(top=MALFORMED[name]), "check", threads=1, timeout_s=1, **OFF)
    assert not result.ok and result.reason in ("crash", "timeout"), result


def test_an_empty_weight_is_not_a_crash_of_the_scorer():
    result = runner.evaluate(
        mixer(init="self.unused = nn.Parameter(torch.empty(4, 0))\n"),
        "micro",
        threads=1,
        tier_overrides={"hardware": True},
    )
    assert result.ok, result


RUNNING_MEAN = """
h = self.proj(x)
return h.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]
"""
DECODERS = {  # step() for RUNNING_MEAN: what a decoder carries from one token to the next
    "the_state_it_returns": (
        """
        def step(self, x_t, state):
            h = self.proj(x_t)
            total, n = (h, torch.ones(())) if state is None else (state[0] + h, state[1] + 1)
            return total / n, (total, n)
        """,
        None,
    ),
    "history_kept_in_an_attribute": (
        """
        def step(self, x_t, state):
            if state is None or getattr(self, "kept", None) is None:
                self.kept = []
            self.kept.append(self.proj(x_t))
            return torch.stack(self.kept).mean(0), ()
        """,
        "step",
    ),
    "history_kept_by_the_id_it_returns": (
        """
        def step(self, x_t, state):
            import random
            if not hasattr(self, "kept"):
                self.kept = {}
            key = random.random() if state is None else float(state)
            self.kept.setdefault(key, []).append(self.proj(x_t))
            return torch.stack(self.kept[key]).mean(0), torch.tensor(key, dtype=torch.float64)
        """,
        "step",
    ),
}


DECODERS["history_in_a_dict_key"] = (  # counted: the skeleton's keys are the state's bytes too
    """
    def step(self, x_t, state):
        import base64, numpy
        h = self.proj(x_t)
        if state is not None:
            (key,) = state
            raw = numpy.frombuffer(base64.b64decode(key), numpy.float32)
            h = h + torch.from_numpy(raw[1:].copy()).reshape(h.shape) * raw[0]
        n = 1.0 if state is None else raw[0] + 1
        total = h.detach().float().numpy()
        key = base64.b64encode(numpy.float32(n).tobytes() + (total / n).astype(numpy.float32).tobytes()).decode()
        return h / n, {key: torch.zeros(0)}
    """,
    None,
)


@pytest.mark.parametrize("name", list(DECODERS))
def test_a_decoders_state_is_all_it_carries(name):
    """A step() that kept its history out of sight (in its attributes, or keyed by a number it returned)
    decoded exactly like its forward pass and was measured with a state of 0 bytes, while the honest
    running mean carries 520 (2026-12-05): a state smaller than it is earns the state and archive
    credit. Now C, which never saw the text, resumes from the state B returned at half the context."""
    methods, reason = DECODERS[name]
    hardware = {"hardware": True}  # decoding, state and latency are measured at micro too
    result = runner.evaluate(mixer(RUNNING_MEAN, methods=methods), "micro", threads=1, tier_overrides=hardware, **OFF)
    if reason is None:  # 520 bytes: the running mean's sum and count, in each of micro's two blocks
        assert result.ok and result.metrics["state_bytes"] >= 520 and result.metrics["resume_gap"] < 1e-3, result
    else:
        assert not result.ok and result.reason == reason and "resumed" in result.detail, result


# -- red team, 2026-12-05 -----------------------------------------------------------------------------
NAMES_CARRY_WEIGHTS = (
    SERVER
    + """
import base64, json, zlib
def pack(d):
    meta = {k: list(v.shape) for k, v in d.items()}
    blob = b"".join(v.float().numpy().tobytes() for v in d.values())
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(meta).encode() + b"\\0" + blob, 1)).decode()
def unpack(text):
    meta, blob = zlib.decompress(base64.urlsafe_b64decode(text)).split(b"\\0", 1)
    out, at = {}, 0
    for k, shape in json.loads(meta).items():
        n = int(np.prod(shape))
        out[k], at = np.frombuffer(blob[at:at + 4 * n], np.float32).reshape(shape).copy(), at + 4 * n
    return out
_weights, _build = SERVER.Server._weights, SERVER.Server.build
def weights(self, model):
    out = _weights(self, model)
    hidden = {k: out.pop(k) for k in [k for k in out if ".big." in k]}
    if hidden:
        out["blocks.0.mixer.Z" + pack(hidden)] = torch.zeros(0)
    return out
def build(self, req, arrays):
    for k in [k for k in arrays or {} if k.startswith("blocks.0.mixer.Z")]:
        del arrays[k]
        arrays.update(unpack(k[len("blocks.0.mixer.Z"):]))
    return _build(self, req, arrays)
SERVER.Server._weights, SERVER.Server.build = weights, build
"""
)


def test_weights_packed_into_names_are_refused():
    """An MLP 10x the budget, sent as the name of an empty tensor (names are free text no budget counts),
    unpacked in B and C before loading: accepted with mixer_params 4,160 (red team). The trained
    weights must have the names and shapes the model was built with, before any training text."""
    big = "self.big = nn.Sequential(nn.Linear(d_model, 32 * d_model), nn.GELU(), nn.Linear(32 * d_model, d_model))\n"
    source = mixer("return self.proj(x) + self.big(x)\n", init=big, top=NAMES_CARRY_WEIGHTS)
    # (the budget is what this tests: the clock, which comes first, can name a part this wide quadratic from
    # caches alone; see test_the_probe_model_is_held_to_the_same_checks)
    result = runner.evaluate(source, "micro", threads=1, allow_quadratic=True, **OFF)
    assert not result.ok and result.reason == "params" and "built with" in result.detail, result


def test_attention_in_children_the_kernel_would_reap_is_timed():
    """Forked children whose parent ignores SIGCHLD are reaped by the kernel onto nobody's CPU time:
    softmax attention computed in them passed the clock (red team). SIGCHLD's disposition is fixed
    now; a child left unreaped is a zombie whose time the clock reads."""
    top = """
    import os, signal
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    except OSError:
        pass
    def in_a_child(q, x):
        r, w = os.pipe()
        if os.fork() == 0:
            t = x.shape[1]
            s = (q @ x.transpose(1, 2)).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
            out = memoryview((s.softmax(-1) @ x).contiguous().numpy().tobytes())
            while out:
                out = out[os.write(w, out):]
            os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 20):
            chunks.append(chunk)
        os.close(r)
        return torch.frombuffer(bytearray(b"".join(chunks)), dtype=x.dtype).view(x.shape)
    """
    forward = """
    if torch.is_grad_enabled():
        t = x.shape[1]
        s = (self.proj(x) @ x.transpose(1, 2)).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        return s.softmax(-1) @ x
    return in_a_child(self.proj(x), x) + 0.0 * self.proj(x)
    """
    result = runner.evaluate(mixer(forward, top=top), "micro", threads=1, **OFF)
    assert not result.ok and result.reason == "quadratic", result


# The training recipe is the harness's: a server only reports each step's gradients at the parameters
# it is sent, and the scorer runs the optimizer (optim.py). Before, a patched optimizer (4x the
# learning rate, warm-up 2) took val_loss 23% lower at micro (red team 4).
OWN_RECIPE = (
    SERVER
    + """
TRAIN = sys.modules["archlab.sandbox.train"]
_gradients = TRAIN.gradients
def gradients(model, *args, **kwargs):
    loss = _gradients(model, *args, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.01 * p.grad  # its own steps, on its own copy
                p.grad *= 4.0  # and larger gradients
    return loss
TRAIN.gradients = gradients
"""
)


def test_the_optimizer_is_the_scorers():
    """A server's own steps change nothing (its copy is overwritten by the next step's parameters), its
    scaled gradients are refused (the gradient check), and so is a buffer that training moves: what a
    model learns is a parameter, which only the scorer's optimizer trains."""
    trained_buffer = mixer(
        "if self.training:\n    with torch.no_grad():\n        self.w -= 0.01 * x.mean()\nreturn self.proj(x) + self.w\n",
        init='self.register_buffer("w", torch.zeros(d_model))\n',
    )
    own, buffer = (
        runner.evaluate(source, "micro", threads=1, **OFF) for source in (mixer(top=OWN_RECIPE), trained_buffer)
    )
    assert not own.ok and own.reason == "tamper" and "training step" in own.detail, own
    assert not buffer.ok and buffer.reason == "tamper" and "buffer 'blocks.0.mixer.w'" in buffer.detail, buffer


def test_a_matrix_kept_flat_is_quantised_like_a_matrix():
    """The int8 score rounded matrices only: the same weights kept as a vector and reshaped in forward()
    scored quant_loss 0 against 0.16 as a matrix (red team). Every float weight is rounded now."""
    init = """
    w = torch.randn(d_model, d_model) * d_model ** -0.5
    w[:, 0] = 40.0  # one large, unused entry per row: rounding the row to int8 costs the rest
    self.w = nn.Parameter(w.reshape(-1) if FLAT else w)
    self.register_buffer("mask", (torch.arange(d_model) > 0).float().expand(d_model, d_model).clone(), persistent=False)
    self.d = d_model
    """
    forward = "return F.linear(x, self.w.view(self.d, self.d) * self.mask)\n"
    losses = {
        flat: runner.evaluate(
            mixer(forward, init=init, top=f"FLAT = {flat}\n"),
            "micro",
            threads=1,
            tier_overrides={"hardware": True},
            **OFF,
        ).metrics["quant_loss"]
        for flat in (False, True)
    }
    assert losses[False] > 0.05 and losses[True] >= 0.5 * losses[False], losses


# Server A fills the probe model's FFN weights with the LM's bigram table (counted from its training
# batches); wherever both models are loaded, the LM's logits come from that table.
PROBE_AS_NGRAM = (
    SERVER
    + """
TRAIN = sys.modules["archlab.sandbox.train"]
COUNTS = torch.ones(256, 256)
_gradients, _logits = TRAIN.gradients, SERVER.Server.logits

def ffn(named):
    return sorted(k for k in named if ".ffn." in k)

def gradients(model, inputs, targets, *a, **k):
    loss = _gradients(model, inputs, targets, *a, **k)
    if model.embed.weight.shape[1] != 64 or inputs.shape[1] > 64:  # the LM's batches, not the probe's
        COUNTS.index_put_((inputs.reshape(-1).cpu(), targets.reshape(-1).cpu()), torch.ones(inputs.numel()), accumulate=True)
    else:  # the probe model's FFN steered towards the table by the gradients it reports
        params = dict(model.named_parameters())
        table = (COUNTS / COUNTS.sum(1, keepdim=True)).log().reshape(-1)
        at = 0
        for key in ffn(params):
            p = params[key]
            n = min(p.numel(), max(0, table.numel() - at))
            target = p.detach().clone().reshape(-1)
            target[:n] = table[at : at + n]
            p.grad = (p.detach() - target.reshape(p.shape)).clone()
            at += p.numel()
    return loss

def logits(self, req, arrays):
    head, out = _logits(self, req, arrays)
    if req["model"] == "lm" and "probe" in self.models:
        probe = self.models["probe"].state_dict()
        table = torch.cat([probe[k].reshape(-1).float() for k in ffn(probe)])[: 256 * 256].reshape(256, 256)
        out = {"logits": table[self._tensor(arrays["tokens"]).long()]}
    return head, out

TRAIN.gradients, SERVER.Server.logits = gradients, logits
"""
)


def test_the_probe_models_weights_are_no_capacity_for_the_lm():
    """The probe model's weights (held to the probe's budget, trained by server A as it pleases) were
    loaded beside the LM's in the scoring server: an LM that read its bigram table from them scored
    val_loss 2.82 against 3.39 at explore (2026-12-05). The LM is now scored by a server that never
    holds them, the probes by one that never holds the LM's."""
    cheap = {"steps": 40, "val_windows": 16, "hardware": False, "probes": {"steps": 40}}
    honest, forged = (
        runner.evaluate(source, "explore", threads=1, tier_overrides=cheap, **OFF)
        for source in (mixer(), mixer(top=PROBE_AS_NGRAM))
    )
    assert honest.ok and "mqar_acc" in honest.metrics, honest
    assert not forged.ok or forged.metrics["val_loss"] >= honest.metrics["val_loss"] - 0.01, (honest, forged)
