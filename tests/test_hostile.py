"""Hostile candidates are rejected (or contained) with the right reason, and legitimate
linear-time mixers are accepted: both directions, through the real sandbox.

Every candidate goes through `runner.evaluate(source, "check")`: real child processes with
every protection this machine offers (`archlab doctor`). They run two at a time in one
module-scoped fixture (the machine has 2 cores); each test then asserts one verdict.
Candidates marked `runtime` skip the static AST gate (`skip_static_checks=True`) so that
the layers behind it — the audit hook, the integrity checks, the OS isolation — are shown
to stop the same attack on their own.
"""

import concurrent.futures
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field

import pytest

from archlab.sandbox import protections, runner
from archlab.sandbox.data import BUILTIN
from archlab.sandbox.fitness import fitness
from archlab.templates import ROOTS, render_root

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


@dataclass
class Case:
    source: str
    expect: str | None  # the rejection reason, or None: accepted
    options: dict = field(default_factory=dict)


def mixer(forward: str, init: str = "", top: str = "", methods: str = "") -> str:
    """A candidate file: HEADER, `top`, then a Mixer with proj = Linear(d, d) plus `init`,
    the given forward body and extra `methods`."""
    body = textwrap.indent(textwrap.dedent(init), " " * 8)
    fwd = textwrap.indent(textwrap.dedent(forward), " " * 8)
    more = textwrap.indent(textwrap.dedent(methods), " " * 4)
    return HEADER + textwrap.dedent(top) + f"""

class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
{body}
    def forward(self, x):
{fwd}
{more}"""


PLAIN = "return self.proj(x)\n"
RUNTIME = {"skip_static_checks": True}  # only the layers behind the AST check stand in the way

# -- legitimate linear-time mixers -------------------------------------------------------------
GATED_LINEAR_ATTENTION = HEADER + '''

def gla(q, k, v, log_a, chunk=32):
    """Gated linear attention, chunkwise: o_t = sum_{s<=t} prod_{s<r<=t} a_r (q_t . k_s) v_s."""
    b, h, t, d = q.shape
    pad = (-t) % chunk
    q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
    g = F.pad(log_a, (0, pad)).reshape(b, h, -1, chunk).cumsum(-1)
    q, k, v = (z.reshape(b, h, -1, chunk, d) for z in (q, k, v))
    causal = torch.ones(chunk, chunk, dtype=torch.bool).tril()
    state = q.new_zeros(b, h, d, d)
    out = []
    for i in range(q.shape[2]):
        gi = g[:, :, i]
        decay = (gi[..., :, None] - gi[..., None, :]).masked_fill(~causal, float("-inf")).exp()
        inner = (q[:, :, i] @ k[:, :, i].transpose(-1, -2)) * decay
        out.append((q[:, :, i] * gi.exp()[..., None]) @ state + inner @ v[:, :, i])
        to_end = (gi[..., -1:] - gi).exp()[..., None]
        state = state * gi[..., -1, None, None].exp() + (k[:, :, i] * to_end).transpose(-1, -2) @ v[:, :, i]
    return torch.stack(out, 2).reshape(b, h, -1, d)[:, :, :t]


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.h, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        log_a = F.logsigmoid(self.gate(x) + 3).transpose(1, 2)
        return self.out(gla(q, k, v, log_a).transpose(1, 2).reshape(b, t, d))
'''

CUMULATIVE_MEAN = mixer("""
h = self.proj(x)
counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]
return h.cumsum(1) / counts
""")

RWKV_WITH_STEP = HEADER + '''

class Mixer(nn.Module):
    """RWKV-style: token shift, a per-channel decaying average of gated values, a receptance gate;
    with step() for recurrent inference."""

    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.mix = nn.Parameter(torch.full((d_model,), 0.5))
        self.decay = nn.Parameter(torch.linspace(-2.0, 3.0, d_model))
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)

    def inputs(self, x, previous):
        xm = x * self.mix + previous * (1 - self.mix)
        return torch.sigmoid(self.key(xm)) * self.value(xm), torch.sigmoid(self.receptance(xm))

    def forward(self, x):
        kv, r = self.inputs(x, F.pad(x[:, :-1], (0, 0, 1, 0)))
        a = torch.sigmoid(self.decay)
        h = x.new_zeros(x.shape[0], x.shape[2])
        out = []
        for t in range(x.shape[1]):
            h = a * h + (1 - a) * kv[:, t]
            out.append(h)
        return self.output(r * torch.stack(out, 1))

    def step(self, x, state=None):
        previous, h = state if state is not None else (torch.zeros_like(x), torch.zeros_like(x))
        kv, r = self.inputs(x, previous)
        a = torch.sigmoid(self.decay)
        h = a * h + (1 - a) * kv
        return self.output(r * h), (x, h)
'''

HYBRID = 'LAYERS = "MA"\n' + CUMULATIVE_MEAN

CUSTOM_BACKWARD_AND_FFN = HEADER + '''

class CausalCumsum(torch.autograd.Function):
    """A cumulative sum over time with a hand-written backward (a reversed cumulative sum)."""

    @staticmethod
    def forward(ctx, x):
        return x.cumsum(1)

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1).cumsum(1).flip(1)


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]
        return CausalCumsum.apply(self.proj(x)) / counts


class FFN(nn.Module):
    def __init__(self, d_model, **kwargs):
        super().__init__()
        self.up = nn.Linear(d_model, 2 * d_model)
        self.down = nn.Linear(2 * d_model, d_model)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))
'''

LEGIT = {
    **{f"root_{name}": Case(render_root(name), None, {"allow_quadratic": name == "transformer"}) for name in ROOTS},
    "gated_linear_attention": Case(GATED_LINEAR_ATTENTION, None),
    "cumulative_mean": Case(CUMULATIVE_MEAN, None),
    "rwkv_token_shift_decay_with_step": Case(RWKV_WITH_STEP, None),
    "hybrid_with_harness_attention": Case(HYBRID, None),
    "custom_backward_and_ffn": Case(CUSTOM_BACKWARD_AND_FFN, None),
    "dropout_in_training": Case(mixer("n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]\n"
                                      "return self.drop(self.proj(x.cumsum(1) / n))\n", init="self.drop = nn.Dropout(0.1)\n"), None),
}

# -- non-causal in several subtle ways ---------------------------------------------------------
NON_CAUSAL = {
    "reversed_cumsum": mixer("return self.proj(x.flip(1).cumsum(1).flip(1))\n"),
    "bidirectional_attention": mixer("""
        b, t, d = x.shape
        q = self.proj(x).view(b, t, 4, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(b, t, d)
        """),
    "next_token_leak_1e-3": mixer("return self.proj(x) + 1e-3 * F.pad(x[:, 1:], (0, 0, 0, 1))\n"),
    "mean_over_time_norm": mixer("h = self.proj(x)\nreturn h - h.mean(dim=1, keepdim=True)\n"),
    "leaks_only_in_eval_mode": mixer("y = self.proj(x)\nreturn y if self.training else y + 0.1 * y.roll(-1, dims=1)\n"),
    "leaks_only_on_long_sequences": mixer(
        "y = self.proj(x)\nreturn y + 0.1 * y.roll(-1, dims=1) if x.shape[1] > 200 else y\n"),
    "chunk_without_intra_chunk_mask": GATED_LINEAR_ATTENTION.replace(
        '.masked_fill(~causal, float("-inf"))', ""),
    "mask_off_by_one": GATED_LINEAR_ATTENTION.replace(".tril()", ".tril(1)"),
    "batchnorm_over_time": mixer("return self.bn(self.proj(x).transpose(1, 2)).transpose(1, 2)\n",
                                 init="self.bn = nn.BatchNorm1d(d_model)\n"),
    "mixes_the_batch": mixer("y = self.proj(x)\nreturn y + y.mean(0, keepdim=True)\n"),
}

# -- quadratic ---------------------------------------------------------------------------------
QUADRATIC = {
    "softmax_attention_in_the_mixer": mixer("""
        b, t, d = x.shape
        q = self.proj(x).view(b, t, 4, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(b, t, d)
        """),
    "masked_linear_attention_t_by_t": mixer("""
        h = self.proj(x)
        scores = (h @ h.transpose(1, 2)).tril() / x.shape[-1]
        return scores @ h
        """),
    "elementwise_t_by_t": mixer("""
        h = self.small(x)
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=x.dtype, device=x.device).tril()[None, :, :, None]
        summed = (mask * h[:, None]).sum(2) / torch.arange(1, t + 1, dtype=x.dtype, device=x.device)[:, None]
        return self.proj(x) + self.back(summed)
        """, init="self.small = nn.Linear(d_model, 8)\nself.back = nn.Linear(8, d_model)\n"),
}

# -- broken, slow, greedy ----------------------------------------------------------------------
BROKEN = {
    "infinite_loop": Case(mixer("while True:\n    pass\n"), "timeout", {"timeout_s": 10}),
    "giant_allocation": Case(mixer(PLAIN, init="self.hog = torch.empty(10**12)\n"), "memory", {"memory_gb": 4}),
    "memory_creep": Case(mixer("self.hog.append(torch.ones(2**26))\nreturn self.proj(x)\n", init="self.hog = []\n"),
                         "memory", {"memory_gb": 3}),
    "nan_output": Case(mixer("return self.proj(x) * float('nan')\n"), "nan"),
    "nan_gradient": Case(mixer("y = self.proj(x)\nreturn y + torch.sqrt(y - y)\n"), "nan"),
    "wrong_shape": Case(mixer("return self.proj(x)[:, :-1]\n"), "shape"),
    "returns_a_tuple": Case(mixer("return self.proj(x), None\n"), "shape"),
    "ten_times_the_parameters": Case(mixer("return self.proj(x) + 0 * self.spare[0]\n",
                                           init="self.spare = nn.Parameter(torch.zeros(840000))\n"), "params"),
    "parameters_hidden_in_a_buffer": Case(mixer("return self.proj(x) + 0 * self.table[0]\n",
                                                init="self.register_buffer('table', torch.zeros(840000))\n"), "params"),
    "syntax_error": Case(HEADER + "class Mixer(nn.Module:\n    pass\n", "syntax"),
    "no_mixer": Case(HEADER + "class Layer(nn.Module):\n    pass\n", "contract"),
    "step_disagrees_with_forward": Case(mixer(PLAIN, methods="""
        def step(self, x, state=None):
            return self.proj(x) * 1.01, state
        """), "step"),
    "exits_the_interpreter": Case(mixer(PLAIN, top="raise SystemExit(0)\n"), "error"),
}


# -- cheats that hide in the candidate's own parts -----------------------------------------------
# Remembers its last input and output; a call that shares a prefix with it gets the old outputs
# for that prefix. Every causality probe compares a pass with a perturbed copy of the same input,
# so on a single instance the two always agree, however much the mixer reads ahead.
REPLAY = """
        n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]
        y = self.past(x.cumsum(1) / n) + LEAK
        old_x, old_y = MEMO.get("x"), MEMO.get("y")
        if old_x is not None and old_x.shape[-1] == x.shape[-1] and old_x.dtype == x.dtype:
            m = min(x.shape[1], old_x.shape[1])
            same = (x[:, None, :m] == old_x[None, :, :m]).all(-1)
            length, best = same.long().cumprod(-1).sum(-1).max(-1)
            old = F.pad(old_y[best][:, :m], (0, 0, 0, x.shape[1] - m))
            keep = (torch.arange(x.shape[1], device=x.device)[None, :] < length[:, None])[..., None]
            y = torch.where(keep, old.to(y.dtype), y)
        MEMO["x"], MEMO["y"] = x.detach(), y.detach()
        return y
"""
def ffn(width: int, into: str) -> str:
    """A GELU MLP `width` times d_model wide as the candidate's FFN, fed `into`."""
    return f"""
        class FFN(nn.Module):
            def __init__(self, d_model, **kwargs):
                super().__init__()
                self.up = nn.Linear(d_model, {width} * d_model)
                self.down = nn.Linear({width} * d_model, d_model)

            def forward(self, x):
                return self.down(F.gelu(self.up({into})))
        """


PEEK = "self.future(F.pad(x[:, 1:], (0, 0, 0, 1)))"  # reads x[t + 1]
REPLAY_INIT = "self.past = nn.Linear(d_model, d_model)\nself.future = nn.Linear(d_model, d_model)\n"
HIDDEN = {
    "replays_cached_outputs_from_the_module": Case(mixer(REPLAY.replace("LEAK", PEEK), init=REPLAY_INIT,
                                                         top="MEMO = {}\n"), "non_causal"),
    "replays_cached_outputs_from_the_instance": Case(
        mixer(REPLAY.replace("LEAK", PEEK).replace("MEMO", "self.memo"), init=REPLAY_INIT + "self.memo = {}\n"), "non_causal"),
    "ffn_with_softmax_attention": Case(mixer(PLAIN, top="""
        class FFN(nn.Module):
            def __init__(self, d_model, **kwargs):
                super().__init__()
                self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)

            def forward(self, x):
                b, t, d = x.shape
                q, k, v = (y.view(b, t, 4, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
                return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        """), "quadratic"),
    "ffn_reads_the_next_position": Case(mixer(PLAIN, top=ffn(2, "x + 0.1 * F.pad(x[:, 1:], (0, 0, 0, 1))")), "non_causal"),
    "ffn_sixteen_times_wider": Case(mixer(PLAIN, top=ffn(16, "x")), "params"),
    "replays_through_a_container_of_torch": Case(mixer(
        REPLAY.replace("LEAK", PEEK).replace("MEMO", "MEMO.setdefault(self.idx, {})", 2)
        .replace('MEMO["x"], MEMO["y"]', 'MEMO[self.idx]["x"], MEMO[self.idx]["y"]'),
        init=REPLAY_INIT + "self.idx = COUNT[0]\nCOUNT[0] += 1\n",
        top='MEMO = torch.linalg.common_notes.setdefault("memo", {})  # a public dict of torch: outlives reloads\nCOUNT = [0]\n'),
        "tamper"),
    "replays_through_an_object_planted_in_torch": Case(mixer(
        REPLAY.replace("LEAK", PEEK).replace('MEMO.get("x"), MEMO.get("y")', 'BOX.memo.get("x"), BOX.memo.get("y")')
        .replace('MEMO["x"], MEMO["y"] = x.detach(), y.detach()', 'BOX.memo = {"x": x.detach(), "y": y.detach()}'),
        init=REPLAY_INIT, top="""
        class Box:
            memo = {}
        BOX = torch.linalg.common_notes.setdefault("box", Box())  # an object of its own, kept where reloads find it
        """), "tamper"),
    "weights_hidden_in_extra_state": Case(mixer("return self.proj(x) + (x @ self.w1) @ self.w2\n", init="""
        self.w1 = torch.randn(d_model, 64 * d_model).requires_grad_()
        self.w2 = torch.zeros(64 * d_model, d_model).requires_grad_()
        """, methods="""
        def get_extra_state(self):
            return torch.cat([self.w1.detach().flatten(), self.w2.detach().flatten()])

        def set_extra_state(self, state):
            pass
        """), "params"),
}

# -- escapes the static check stops ------------------------------------------------------------
STATIC = {
    "file_write": mixer(PLAIN, top="open('/tmp/archlab-pwned', 'w').write('x')\n"),
    "network": mixer(PLAIN, top="import socket\n"),
    "subprocess": mixer(PLAIN, top="import subprocess\nsubprocess.run(['true'])\n"),
    "os_via_torch": mixer(PLAIN, top="torch.os.system('true')\n"),
    "fork_bomb": mixer(PLAIN, top="import os\nwhile True:\n    os.fork()\n"),
    "class_walk": mixer(PLAIN, top="base = ().__class__.__bases__[0].__subclasses__()\n"),
    "getattr_concatenated_dunder": mixer(PLAIN, top="D = '_' * 2\nc = getattr((), D + 'class' + D)\n"),
    "lambda_default_builtins": mixer(PLAIN, top="f = lambda b=__builtins__: b\n"),
    "function_globals": mixer(PLAIN, top="def f():\n    pass\ng = f.__globals__\n"),
    "format_string_walk": mixer(PLAIN, top="s = '{0.__class__}'.format(1)\n"),
    "type_walk_patch": mixer(PLAIN, top="type(torch.zeros(1)).item = lambda self: 0.0\n"),
    "patched_loss": mixer(PLAIN, top="F.cross_entropy = lambda *a, **k: torch.zeros(())\n"),
    "patched_loss_via_alias": mixer(PLAIN, top="g = F\ng.cross_entropy = lambda *a, **k: torch.zeros(())\n"),
    "torch_ops": mixer(PLAIN, top="add = torch.ops.aten.add\n"),
    "torch_load": mixer(PLAIN, top="w = torch.load('weights.pt')\n"),
    "reading_harness_data": mixer(PLAIN, top="import archlab.sandbox.data\n"),
    "private_torch": mixer(PLAIN, top="c = torch._C\n"),
    "global_module_hook": mixer(PLAIN, top="nn.modules.module.register_module_forward_hook(lambda m, i, o: o * 0)\n"),
    "tensor_subclass": mixer(PLAIN, top="class Evil(torch.Tensor):\n    pass\n"),
    "frame_walk": mixer("g = (lambda: (yield))().gi_frame.f_back\nreturn self.proj(x)\n"),
}

# -- the same attacks with the static check switched off: the runtime layers stop them ---------
RUNTIME_CASES = {
    "runtime_file_write": Case(mixer(PLAIN, top="open('/work/archlab-pwned', 'w').write('x')\n"), "forbidden", RUNTIME),
    "runtime_file_write_caught": Case(mixer(PLAIN, top="""
        try:
            open('/work/archlab-pwned', 'w').write('x')
        except Exception:
            pass
        """), "forbidden", RUNTIME),
    "runtime_network": Case(mixer("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n" + PLAIN),
                            "forbidden", RUNTIME),
    "runtime_subprocess": Case(mixer(PLAIN, init="import subprocess\nsubprocess.run(['true'])\n"), "forbidden", RUNTIME),
    "runtime_fork_bomb": Case(mixer(PLAIN, init="import os\nwhile True:\n    os.fork()\n"), "forbidden", RUNTIME),
    "runtime_ctypes": Case(mixer(PLAIN, init="import ctypes\nctypes.CDLL(None)\n"), "forbidden", RUNTIME),
    "runtime_frame_walk": Case(mixer("import sys\ntargets = sys._getframe(1).f_locals\n" + PLAIN), "forbidden", RUNTIME),
    "runtime_traceback_frame": Case(mixer("""
        try:
            1 / 0
        except Exception as e:
            harness_locals = e.__traceback__.tb_frame.f_back.f_locals
        """ + PLAIN), "forbidden", RUNTIME),
    "runtime_gc_walk": Case(mixer("import gc\nobjects = gc.get_objects()\n" + PLAIN), "forbidden", RUNTIME),
    "runtime_reading_harness_data": Case(mixer(PLAIN, top=f"data = open({str(BUILTIN)!r}, 'rb').read()\n"),
                                         "forbidden", RUNTIME),
    "runtime_patched_loss": Case(mixer(PLAIN, top="F.cross_entropy = lambda *a, **k: torch.zeros(())\n"), "tamper", RUNTIME),
    "runtime_patched_tensor_method": Case(mixer(PLAIN, top="torch.Tensor.item = lambda self: 0.0\n"), "tamper", RUNTIME),
    "runtime_global_forward_hook": Case(mixer(PLAIN, top="nn.modules.module.register_module_forward_hook(lambda m, i, o: o * 0)\n"),
                                        "tamper", RUNTIME),
    "runtime_more_threads": Case(mixer(PLAIN, top="torch.set_num_threads(64)\n"), "tamper", RUNTIME),
    "runtime_tensor_subclass_output": Case(mixer("return self.proj(x).as_subclass(Evil)\n", top="""
        class Evil(torch.Tensor):
            pass
        """), "shape", RUNTIME),
}

HOSTILE: dict[str, Case] = {
    **{name: Case(src, "non_causal") for name, src in NON_CAUSAL.items()},
    **{name: Case(src, "quadratic") for name, src in QUADRATIC.items()},
    "transformer_root_when_quadratic_is_not_allowed": Case(render_root("transformer"), "quadratic"),
    **BROKEN,
    **HIDDEN,
    **{name: Case(src, "forbidden") for name, src in STATIC.items()},
    **RUNTIME_CASES,
}
ALL = {**LEGIT, **HOSTILE}


@pytest.fixture(scope="module")
def verdicts() -> dict[str, runner.Result]:
    """Every candidate through the real sandbox, two at a time (the machine has 2 cores)."""

    def one(name: str) -> runner.Result:
        case = ALL[name]
        return runner.evaluate(case.source, "check", threads=1, **{"timeout_s": 120, **case.options})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return dict(zip(ALL, pool.map(one, ALL)))


@pytest.mark.parametrize("name", list(LEGIT))
def test_legitimate_mixer_is_accepted(verdicts, name):
    result = verdicts[name]
    assert result.ok, (name, result.reason, result.detail)
    assert result.metrics["complexity"] == ("superlinear" if name == "root_transformer" else "linear")
    assert result.metrics["mixer_params"] > 0


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_candidate_is_rejected_with_the_right_reason(verdicts, name):
    result = verdicts[name]
    assert not result.ok, (name, result.metrics)
    assert result.reason == HOSTILE[name].expect, (name, result.reason, result.detail)
    assert result.detail  # the engineer gets something to repair from


def test_rejections_say_where_the_problem_is(verdicts):
    assert "line" in verdicts["patched_loss"].detail
    assert "cross_entropy" in verdicts["runtime_patched_loss"].detail
    assert "os.fork" in verdicts["runtime_fork_bomb"].detail
    assert "positions <=" in verdicts["next_token_leak_1e-3"].detail
    assert "T^" in verdicts["softmax_attention_in_the_mixer"].detail


def test_step_metrics_of_recurrent_mixers(verdicts):
    rwkv = verdicts["rwkv_token_shift_decay_with_step"].metrics
    assert rwkv["has_step"] and rwkv["mixer_state_bytes_per_token"] == 0 and rwkv["mixer_state_bytes"] > 0
    kv = verdicts["root_transformer"].metrics
    assert kv["has_step"] and kv["mixer_state_bytes_per_token"] == 2 * 128 * 4  # keys and values, float32
    assert verdicts["cumulative_mean"].metrics["has_step"] is False


def test_nothing_escaped_to_the_file_system():
    from pathlib import Path

    assert not Path("/work/archlab-pwned").exists()
    assert not Path("/tmp/archlab-pwned").exists()


# -- the operating-system layers on their own (no audit hook) ----------------------------------
def test_os_layers_do_what_doctor_says():
    """Whatever `archlab doctor` reports as active really stops a plain Python child that
    dropped none of its ambitions: forks past the process limit, network, writes outside the
    scratch directory. What is reported inactive is not claimed."""
    active = {p.name: p.active for p in protections.report()}
    targets = ("/work/archlab-contained", "/usr/archlab-contained")
    try:
        probe = protections.run_contained("""
import os, socket, time
forks = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        forks += 1
except OSError:
    pass
try:
    s = socket.socket()
    s.settimeout(2)
    s.connect(("1.1.1.1", 53))
    net = True
except OSError:
    net = False
wrote = []
for path in ("/work/archlab-contained", "/usr/archlab-contained"):
    try:
        open(path, "w").close()
        wrote.append(path)
    except OSError:
        pass
print(forks, net, wrote)
""", nproc=32)
        written = [path for path in targets if os.path.exists(path)]
    finally:
        for path in targets:  # what an unprotected machine let through must not stay behind
            if os.path.exists(path):
                os.remove(path)
    assert probe.returncode == 0, probe.stderr
    forks, net, wrote = probe.stdout.split(" ", 2)
    if active["process/thread limit (RLIMIT_NPROC)"]:
        assert int(forks) < 32
    if active["no network (network namespace)"]:
        assert net == "False"
    if active["read-only file system, scratch dir writable"] or active["unprivileged uid"]:
        assert wrote.strip() == "[]" and written == []


def test_doctor_reports_every_protection(cli):
    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    sandbox = facts.get("sandbox", facts)  # `archlab doctor RUN` adds a "run" section beside it
    names = {p["name"] for p in sandbox["protections"]}
    assert {"audit hook (sys.addaudithook)", "memory limit (RLIMIT_AS)", "static checks (AST)"} <= names
    assert sandbox["launcher"] in ("bwrap", "unshare", "plain")


# -- training tiers: what only shows on a trained model ----------------------------------------
LEAKS_ON_EVALUATION_BATCHES = mixer("""
    y = self.proj(x)
    if not self.training and x.shape[0] == 8:  # the micro tier's validation batches: no check uses that shape
        y = y + F.pad(x[:, 1:], (0, 0, 0, 1))
    return y
    """)
READS_DATA_WHILE_TRAINING = mixer("""
    if self.training and not self.done:
        self.done = True
        self.text = open(BUILTIN, 'rb').read()
    return self.proj(x)
    """, init="self.done = False\n", top=f"BUILTIN = {str(BUILTIN)!r}\n")


def test_a_leak_that_hides_from_the_checks_is_caught_on_the_trained_model():
    result = runner.evaluate(LEAKS_ON_EVALUATION_BATCHES, "micro", threads=1)
    assert not result.ok and result.reason == "non_causal", result
    assert "trained model" in result.detail


# The micro tier's validation batches (8 rows; no check uses that shape) read ahead; with the replay,
# a probe on the scored instance would see nothing.
REPLAYS_ON_EVALUATION_BATCHES = mixer(
    REPLAY.replace("LEAK", f"({PEEK} if not self.training and x.shape[0] == 8 else 0)").replace("MEMO", "self.memo")
    .replace("if old_x is not None", "if x.shape[0] == 8 and old_x is not None"),
    init=REPLAY_INIT + "self.memo = {}\n")  # one memo per layer: each replays its own outputs


def test_a_leak_that_replays_cached_outputs_is_caught_on_the_trained_model():
    """The scored model and the one the probes run on are built separately: the replay that fools
    a probe on one instance (see REPLAY) has nothing to replay."""
    result = runner.evaluate(REPLAYS_ON_EVALUATION_BATCHES, "micro", threads=1)
    assert not result.ok and result.reason == "non_causal", result
    assert "trained model" in result.detail


@pytest.mark.parametrize("length, overrides, where", [
    (32, {"probes": {"steps": 10, "eval_examples": 32}}, "probe batches"),  # the probe model's sequences
    (128, {"extrapolation": True}, "twice the training length"),  # micro's extrapolation windows
], ids=["probes", "extrapolation"])
def test_a_leak_at_the_shapes_of_other_metrics_is_caught(length, overrides, where):
    """Recall probes and length extrapolation are scored on shapes the validation batches do not
    have; a mixer that reads ahead only there is caught by the same twin probe."""
    source = mixer(f"y = self.proj(x)\nif not self.training and x.shape[1] == {length}:\n    y = y + {PEEK}\nreturn y\n",
                   init="self.future = nn.Linear(d_model, d_model)\n")
    result = runner.evaluate(source, "micro", threads=1, tier_overrides=overrides)
    assert not result.ok and result.reason == "non_causal", result
    assert where in result.detail
    honest = runner.evaluate(render_root("deltanet"), "micro", threads=1, tier_overrides=overrides)
    assert honest.ok, honest
    assert "mqar_acc" in honest.metrics or "extrapolation_gap" in honest.metrics


def test_twins_share_no_tensor_of_the_loaded_weights():
    """Both twins load the same saved state; a part that keeps the extra-state tensor it is given
    and hangs its outputs on it as a Python attribute would hand them to its twin."""
    source = mixer(
        REPLAY.replace("LEAK", f"({PEEK} if x.shape[0] == 8 else 0)")
        .replace('old_x, old_y = MEMO.get("x"), MEMO.get("y")', 'old_x, old_y = getattr(self.link, "memo", (None, None))')
        .replace('MEMO["x"], MEMO["y"] = x.detach(), y.detach()', 'self.link.memo = (x.detach(), y.detach())')
        .replace("if old_x is not None", "if x.shape[0] == 8 and old_x is not None"),
        init=REPLAY_INIT + "self.link = torch.zeros(1)\n", methods="""
        def get_extra_state(self):
            return torch.zeros(1)

        def set_extra_state(self, state):
            self.link = state
        """)
    result = runner.evaluate(source, "micro", threads=1)
    assert not result.ok and result.reason == "non_causal", result


def test_state_changed_by_forward_is_named():
    result = runner.evaluate(mixer("self.calls += 1\nreturn self.proj(x)\n", init="self.calls = 0\n"), "micro", threads=1)
    assert not result.ok and result.reason == "tamper", result
    assert "'calls'" in result.detail


def test_a_module_level_random_table_is_the_same_when_evaluated():
    """The file runs in the same random state in every process: fixed random features drawn at
    import are those the weights were trained with."""
    source = mixer("h = torch.tanh(x @ TABLE[: x.shape[-1], : x.shape[-1]] * 8)\n"
                   "n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]\n"
                   "return self.proj(h.cumsum(1) / n)\n", top="TABLE = torch.randn(512, 512) / 512 ** 0.5\n")
    result = runner.evaluate(source, "micro", threads=1)
    assert result.ok, result
    assert result.metrics["val_loss"] < result.metrics["train_loss"] + 0.3, result.metrics


def test_an_honest_mixer_may_build_an_optimizer():
    """torch.optim imports torch._dynamo lazily; the evaluation process has it imported before
    the hook is installed, so an honest use is not blocked as forbidden."""
    source = mixer(PLAIN, init="self.inner = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)\n")
    result = runner.evaluate(source, "micro", threads=1)
    assert result.ok, result


def test_extra_state_that_is_not_a_tensor_is_a_contract_rejection():
    source = mixer(PLAIN, methods="""
        def get_extra_state(self):
            return {"scale": torch.ones(1)}

        def set_extra_state(self, state):
            pass
        """)
    result = runner.evaluate(source, "micro", threads=1)
    assert not result.ok and result.reason == "contract", result
    assert "get_extra_state" in result.detail


def test_training_process_cannot_read_the_validation_data():
    result = runner.evaluate(READS_DATA_WHILE_TRAINING, "micro", threads=1, skip_static_checks=True)
    assert not result.ok and result.reason == "forbidden", result


def test_implausible_gain_is_rechecked_flagged_and_not_crowned():
    root = {"val_loss": 9.0, "tokens_per_s": 1.0}  # any trained model is > 10% below this
    result = runner.evaluate(CUMULATIVE_MEAN, "micro", threads=1, reference=root)
    assert result.ok, result
    m = result.metrics
    assert m["flagged"] == "implausible_gain"
    assert m["recheck_val_loss"] == pytest.approx(m["val_loss"], rel=1e-3)
    assert fitness(m, root) <= 0.0  # kept, shown, never crowned
    assert fitness(m, root, trust_flagged=True) > 0.0
    assert math.isfinite(m["val_loss"])


def test_every_blocked_operation_is_named_in_the_sandbox_log(tmp_path):
    """The rejection names the first violation; the log lists each distinct one, so a single
    evaluation shows every fault (a lent GPU's minutes are too few to find them one by one)."""
    source = mixer(PLAIN, init="""
        import subprocess
        for attempt in range(3):
            try:
                open('/work/archlab-pwned', 'w')
            except PermissionError:
                pass
        try:
            subprocess.run(['true'])
        except PermissionError:
            pass
    """)
    log = tmp_path / "sandbox.log"
    result = runner.evaluate(source, "check", threads=1, log_path=log, skip_static_checks=True, timeout_s=120)
    assert not result.ok and result.reason == "forbidden", result
    more = re.search(r"\(and (\d+) more\)", result.detail)
    assert more and int(more.group(1)) >= 3, result.detail  # three writes and a spawn per Mixer built
    blocked = [line.split("blocked: ", 1)[1] for line in log.read_text().splitlines() if "blocked: " in line]
    assert len(blocked) == 2 and "archlab-pwned" in blocked[0] and "no processes" in blocked[1], blocked
