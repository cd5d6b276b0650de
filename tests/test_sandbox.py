"""The sandbox: static and causality checks in-process, then the runner with real child processes."""

import math
import tempfile
import textwrap
import threading
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import helpers
from archlab.sandbox import checks, contract, runner, static
from archlab.sandbox.contract import CandidateError
from archlab.sandbox.fitness import breakdown
from archlab.templates import ROOTS, render_root

THREADS = 1


# -- causality (in-process) ----------------------------------------------------------------------
class ReversedCumsum(nn.Module):
    """Every output sums the inputs from t to the end: anti-causal."""

    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x.flip(1).cumsum(1).flip(1))


class TinyFutureLeak(nn.Module):
    """Causal except for a 1e-3 weighted copy of the next token."""

    def __init__(self, d_model, weight=1e-3):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.weight = weight

    def forward(self, x):
        nxt = F.pad(x[:, 1:], (0, 0, 0, 1))
        return self.proj(x) + self.weight * nxt


class TimeMeanNorm(nn.Module):
    """Normalises with statistics over the whole sequence (a classic accidental leak)."""

    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        h = self.proj(x)
        return h - h.mean(dim=1, keepdim=True)


class EvalOnlyLeak(nn.Module):
    """Causal while training, leaks the future in evaluation mode."""

    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        y = self.proj(x)
        return y if self.training else y + y.roll(-1, dims=1)


class CumulativeMean(nn.Module):
    """The running mean over positions <= t: causal."""

    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        h = self.proj(x)
        counts = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]
        return h.cumsum(1) / counts


D = 32


def identical(cls, *args, **kwargs):
    """A factory of identical instances, as check_causality wants (contract.twins for candidates)."""
    def make():
        torch.manual_seed(0)
        return cls(*args, **kwargs)
    return make


@pytest.mark.parametrize("make", [
    identical(ReversedCumsum, D), identical(TinyFutureLeak, D), identical(TinyFutureLeak, D, weight=1e-7),
    identical(TimeMeanNorm, D), identical(EvalOnlyLeak, D),
], ids=["reversed_cumsum", "leak_1e-3", "leak_1e-7", "mean_over_time", "eval_mode_leak"])
def test_causality_check_rejects_leaks(make):
    with pytest.raises(CandidateError) as e:
        checks.check_causality(make, D, length=80)
    assert e.value.reason == "non_causal"
    assert "changed" in e.value.detail


def test_causality_check_accepts_cumulative_mean():
    checks.check_causality(identical(CumulativeMean, D), D, length=80)


def test_causality_check_accepts_the_deltanet_root():
    module = contract.load(render_root("deltanet"))
    checks.check_causality(contract.twins(module, lambda m: contract.build_mixer(m, 64, 4)), 64)


# -- static checks (in-process) ------------------------------------------------------------------
MIXER = """
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
"""


def candidate(body: str = "", mixer: str = MIXER, header: str = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n") -> str:
    return header + textwrap.dedent(body) + "\n" + textwrap.dedent(mixer)


FORBIDDEN = {
    "import_os": "import os\n",
    "open": "DATA = open('/etc/passwd').read()\n",
    "dunder_import": "m = __import__('os')\n",
    "class_bases": "base = ().__class__.__bases__\n",
    "patch_cross_entropy": "def f(*a, **k):\n    return torch.zeros(())\ntorch.nn.functional.cross_entropy = f\n",
    "patch_alias_module": "F.cross_entropy = lambda *a, **k: 0\n",
    "from_subprocess": "from subprocess import run\n",
    "torch_os": "torch.os.system('true')\n",
    "torch_load": "w = torch.load('weights.pt')\n",
    "import_importlib": "import importlib\n",
    "relative_import": "from . import something\n",
    "eval": "eval('1 + 1')\n",
    "dunder_string": "name = '__class__'\n",
}


@pytest.mark.parametrize("body", list(FORBIDDEN.values()), ids=list(FORBIDDEN))
def test_static_check_rejects(body):
    with pytest.raises(CandidateError) as e:
        static.static_check(candidate(body))
    assert e.value.reason == "forbidden"
    assert e.value.detail.startswith("line ")


def test_static_check_rejects_dunders_reached_with_computed_names():
    """getattr with a computed name walks to `().__class__` just like the literal spelling
    (and from there to every loaded module): the static check must not let it through."""
    body = "D = '_' * 2\nobject_type = getattr((), D + 'class' + D)\n"
    with pytest.raises(CandidateError) as e:
        static.static_check(candidate(body))
    assert e.value.reason == "forbidden"


@pytest.mark.parametrize("name", list(ROOTS))
def test_static_check_accepts_every_root(name):
    static.static_check(render_root(name))


def test_static_check_reports_syntax_errors():
    with pytest.raises(CandidateError) as e:
        static.static_check("def broken(:\n")
    assert e.value.reason == "syntax" and "line 1" in e.value.detail


# -- the runner: real child processes -------------------------------------------------------------
def evaluate(source: str, tier: str = "check", **kw) -> runner.Result:
    return runner.evaluate(source, tier, threads=THREADS, **kw)


def test_runner_accepts_the_deltanet_root():
    result = evaluate(render_root("deltanet"))
    assert result.ok, result
    assert result.reason is None
    assert result.metrics["mixer_params"] > 0 and result.metrics["params"] > result.metrics["mixer_params"]
    assert result.metrics["wall_s"] > 0
    assert result.env["torch"] == torch.__version__


def test_runner_times_out_and_leaves_no_process(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the scratch dir lands in tmp_path
    source = candidate(mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                while True:
                    pass

            def forward(self, x):
                return x
        """)
    mine = lambda: helpers.pids_matching(lambda pid: str(tmp_path) in helpers.cmdline(pid) and helpers.alive(pid))
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(mine())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        result = evaluate(source, timeout_s=5)
    finally:
        done.set()
        watcher.join()
    elapsed = time.monotonic() - started
    assert seen, "the watcher never saw the sandbox worker (the test would prove nothing)"
    assert not result.ok and result.reason == "timeout", result
    assert 5 <= elapsed < 15
    leftovers = mine()
    helpers.kill_pids(leftovers)
    assert leftovers == [], [helpers.cmdline(p) for p in leftovers]
    assert not any(tmp_path.glob("archlab-sandbox-*")), "the scratch directory was not removed"


REJECTED = {
    "syntax": candidate(mixer="class Mixer(nn.Module:\n    pass\n"),
    "contract": candidate(mixer="class Layer(nn.Module):\n    pass\n"),
    "shape": candidate(mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x)[:, :-1]
        """),
    "non_causal": candidate(mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x.flip(1).cumsum(1).flip(1))
        """),
    "nan_in_gradient": candidate(mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                y = self.proj(x)
                return y + torch.sqrt(y - y)  # finite forward, NaN gradient
        """),
    "nan_in_output": candidate(mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x) * float("nan")
        """),
}
TOO_MANY_PARAMS = candidate(mixer="""
    class Mixer(nn.Module):
        def __init__(self, d_model, n_heads, **kwargs):
            super().__init__()
            self.proj = nn.Linear(d_model, d_model)
            self.spare = nn.Parameter(torch.zeros(10 * 84000))  # 10x the DeltaNet root's mixer at width 128

        def forward(self, x):
            return self.proj(x) + 0 * self.spare[0]
    """)
EXPECTED_REASON = {"nan_in_gradient": "nan", "nan_in_output": "nan"}


@pytest.mark.parametrize("case", list(REJECTED))
def test_runner_rejects_with_reason(case):
    result = evaluate(REJECTED[case])
    assert not result.ok
    assert result.reason == EXPECTED_REASON.get(case, case), result
    assert result.detail
    assert result.metrics["wall_s"] > 0


def test_runner_rejects_ten_times_the_parameters():
    root = contract.build_mixer(contract.load(render_root("deltanet")), 128, 4)  # the check tier's width
    limit = math.floor(checks.count_params(root) * 1.2)
    result = evaluate(TOO_MANY_PARAMS)
    assert not result.ok and result.reason == "params", result
    assert f"{limit:,}" in result.detail, result.detail


def test_candidate_cannot_patch_the_loss_through_an_alias():
    """`import torch.nn.functional as F; g = F; g.cross_entropy = ...` replaces the harness's
    loss in the worker (the candidate runs in the harness's process), so a candidate could
    score any loss it likes. It must be rejected (forbidden or tamper), not accepted."""
    source = candidate("g = F\ng.cross_entropy = lambda logits, targets, *a, **k: logits.sum() * 0.0\n")
    result = evaluate(source)
    assert not result.ok and result.reason in ("forbidden", "tamper"), result


def test_micro_evaluation_of_deltanet():
    result = evaluate(render_root("deltanet"), "micro")
    assert result.ok, result
    m = result.metrics
    for key in ("val_loss", "val_bpb", "tokens_per_s", "params", "wall_s"):
        assert m[key] > 0, (key, m)
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-12)
    assert m["val_loss"] < math.log(256)  # it learned something beyond a uniform guess over bytes
    assert m["train_tokens"] == 20 * 8 * 64
    assert m["mixer_params"] < m["params"]


def test_compile_check_penalises_a_mixer_torch_compile_cannot_take_whole():
    """Hardware tiers try torch.compile's graph capture on the mixer: the root is captured whole;
    a mixer with a data-dependent .item() breaks the graph, is still accepted, and pays the
    fitness's compile penalty."""
    root = render_root("deltanet")
    head, sep, body = root.rpartition("    def forward(self, x: torch.Tensor) -> torch.Tensor:\n")
    breaking = head + sep + "        if float(x.abs().max()) > 1e9:  # a host sync: TorchDynamo must break the graph here\n            x = x * 1.0\n" + body
    tier = {"hardware": True}
    good = evaluate(root, "micro", tier_overrides=tier)
    bad = evaluate(breaking, "micro", tier_overrides=tier)
    assert good.ok and bad.ok, (good, bad)
    assert good.metrics["compile_ok"] is True and good.metrics["compile_graph_breaks"] == 0
    assert bad.metrics["compile_ok"] is False and bad.metrics["compile_graph_breaks"] >= 1
    assert "graph break" in bad.metrics["compile_error"]
    terms = breakdown(bad.metrics, good.metrics)
    assert terms["compile"] < 0 and "compile" not in breakdown(good.metrics, good.metrics)


def test_a_kernel_cache_is_copied_in_and_only_a_trusted_evaluation_writes_it_back(tmp_path):
    # GPU evaluations compile and autotune Triton kernels into the sandbox's cache; the root's
    # cache is kept (keep_kernel_cache) and copied into later sandboxes, which never write it back.
    seed = tmp_path / "kernel-cache"
    seed.mkdir()
    (seed / "triton").mkdir()
    (seed / "triton" / "kernel.cubin").write_bytes(b"compiled by the root")
    fresh = tmp_path / "never-written"
    result = runner.evaluate(render_root("deltanet"), "micro", threads=1, kernel_cache=fresh, param_limit=-1)
    assert result.ok and not fresh.exists(), "without keep_kernel_cache nothing is written back"
    broken = runner.evaluate("def broken(:\n", "micro", threads=1, kernel_cache=seed, keep_kernel_cache=True)
    assert not broken.ok and sorted(p.name for p in seed.iterdir()) == ["triton"], "a failed evaluation keeps nothing"
    before = seed.stat().st_ino
    kept = runner.evaluate(render_root("deltanet"), "micro", threads=1, kernel_cache=seed, keep_kernel_cache=True, param_limit=-1)
    assert kept.ok, kept.detail
    assert seed.stat().st_ino != before, "the trusted evaluation's cache replaced the directory"
    # ... and that cache held the seed's kernel: it had been copied in
    assert (seed / "triton" / "kernel.cubin").read_bytes() == b"compiled by the root"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("kernel-cache.")] == [], "no half-copied leftovers"
