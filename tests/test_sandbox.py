"""The sandbox: causality checks of the scorer against in-process servers (loopback.py), the static
checks, then the runner with real model servers (sandboxed child processes) and the trusted scorer."""

import math
import re
import tempfile
import textwrap
import threading
import time

import pytest
import torch
from safetensors.numpy import load_file

import helpers
import loopback
from archlab.sandbox import contract, runner, static
from archlab.sandbox.contract import CandidateError
from archlab.sandbox.model import LM
from archlab.sandbox.tiers import TIERS, resolve
from archlab.search.fitness import breakdown
from archlab.templates import ROOTS, render_root

THREADS = 1


# -- causality: original and perturbed copy go to two different servers ---------------------------
HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def mixer(forward: str) -> str:
    """A candidate whose Mixer projects its input and then applies `forward` (h = self.proj(x))."""
    return HEADER + textwrap.dedent(f"""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                h = self.proj(x)
                {forward}
    """)


LEAKS = {
    "reversed_cumsum": mixer("return self.proj(x.flip(1).cumsum(1).flip(1))"),  # every output sums t..end
    "leak_1e-3": mixer("return h + 1e-3 * F.pad(x[:, 1:], (0, 0, 0, 1))"),  # a small copy of the next token
    "leak_1e-7": mixer("return h + 1e-7 * F.pad(x[:, 1:], (0, 0, 0, 1))"),
    "mean_over_time": mixer("return h - h.mean(dim=1, keepdim=True)"),  # a classic accidental leak
    "eval_mode_leak": mixer("return h if self.training else h + h.roll(-1, dims=1)"),  # causal while training
}
CUMULATIVE_MEAN = mixer("return h.cumsum(1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]")
D = 32


def checks_tier(d_model: int = D, **kw):
    return resolve("check", {"d_model": d_model, "causality_length": 80, **kw})


@pytest.mark.parametrize("name", list(LEAKS))
def test_causality_check_rejects_leaks(name):
    ev = loopback.evaluation(LEAKS[name], checks_tier())
    assert ev.dtype == "float64", "checked in float64: a leak of 1e-9 relative is caught"
    with pytest.raises(CandidateError) as e:
        loopback.causality(ev, "Mixer")
    assert e.value.reason == "non_causal"
    assert "changed" in e.value.detail


def test_causality_check_accepts_cumulative_mean():
    ev = loopback.evaluation(CUMULATIVE_MEAN, checks_tier())
    loopback.causality(ev, "Mixer")
    parts = [op for op, _ in ev.a.requests + ev.b.requests]
    assert parts and set(parts) == {"part"}
    assert ev.dtype == "float64" and len(ev.a.requests) + len(ev.b.requests) == 2 * 5, (
        "3 seeds at the check length + 1 at the training length in float32 and its float64 twin, 2 sides"
    )


def test_causality_check_accepts_the_deltanet_root():
    loopback.causality(loopback.evaluation(render_root("deltanet"), resolve("check", {"d_model": 64})))


def test_causality_check_covers_the_candidates_ffn():
    source = CUMULATIVE_MEAN + textwrap.dedent("""
        class FFN(nn.Module):
            def __init__(self, d_model, **kwargs):
                super().__init__()
                self.up = nn.Linear(d_model, 2 * d_model)
                self.down = nn.Linear(2 * d_model, d_model)

            def forward(self, x):
                return self.down(F.gelu(self.up(x + x.roll(-1, dims=1))))  # mixes in the next position
    """)
    ev = loopback.evaluation(source, checks_tier())
    assert ev.has_ffn
    loopback.causality(ev, "Mixer")
    with pytest.raises(CandidateError) as e:
        loopback.causality(ev, "FFN")
    assert e.value.reason == "non_causal" and "FFN" in e.value.detail


# -- static checks (in-process) ------------------------------------------------------------------
MIXER = """
class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
"""


def candidate(
    body: str = "",
    mixer: str = MIXER,
    header: str = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n",
) -> str:
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


# -- the runner: real model servers and the trusted scorer ------------------------------------------------
def evaluate(source: str, tier: str = "check", **kw) -> runner.Result:
    return runner.evaluate(source, tier, threads=THREADS, **kw)


@pytest.mark.e2e
def test_runner_accepts_the_deltanet_root(tmp_path):
    log = tmp_path / "log.txt"
    result = evaluate(render_root("deltanet"), log_path=log)
    assert result.ok, result
    assert result.reason is None
    assert result.metrics["mixer_params"] > 0 and result.metrics["params"] > result.metrics["mixer_params"]
    assert result.metrics["wall_s"] > 0 and result.metrics["complexity"] == "linear" and result.metrics["has_step"]
    assert result.env["torch"] == torch.__version__ and result.env["launcher"] in ("bwrap", "unshare", "plain")
    text = log.read_text()
    assert text.count("[server]") >= 2, "both servers write to the evaluation's log"
    assert text.rstrip().endswith("[sandbox] accepted:"), text[-500:]


@pytest.mark.e2e
def test_runner_without_a_log_path_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(
        tempfile, "tempdir", str(tmp_path)
    )  # the evaluation's directory (and its log) lands in tmp_path
    result = evaluate("def broken(:\n")
    assert not result.ok and result.reason == "syntax", result
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_runner_times_out_and_leaves_no_process(tmp_path, monkeypatch):
    """A server that spins is stopped by its CPU-time limit (timeout_s sets it); the evaluation
    is a timeout, and no server, launcher or directory of it is left behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the evaluation's directory lands in tmp_path
    log = tmp_path / "log.txt"
    source = candidate(
        mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                while True:
                    pass

            def forward(self, x):
                return x
        """
    )
    mine = lambda: helpers.sandbox_servers_writing(log)  # noqa: E731
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(mine())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = evaluate(source, timeout_s=5, log_path=log)
    finally:
        done.set()
        watcher.join()
    assert seen, "the watcher never saw a model server (the test would prove nothing)"
    assert not result.ok and result.reason == "timeout", result
    assert "CPU-seconds" in result.detail, result.detail
    leftovers = [p for p in seen if helpers.alive(p)]
    helpers.kill_pids(leftovers)
    assert leftovers == [], leftovers
    assert not any(tmp_path.glob("archlab-sandbox-*")), "the evaluation's directory was not removed"


REJECTED = {
    "syntax": candidate(mixer="class Mixer(nn.Module:\n    pass\n"),
    "contract": candidate(mixer="class Layer(nn.Module):\n    pass\n"),
    "shape": candidate(
        mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x)[:, :-1]
        """
    ),
    "non_causal": candidate(
        mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x.flip(1).cumsum(1).flip(1))
        """
    ),
    "nan_in_gradient": candidate(
        mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                y = self.proj(x)
                return y + torch.sqrt(y - y)  # finite forward, NaN gradient
        """
    ),
    "nan_in_output": candidate(
        mixer="""
        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)

            def forward(self, x):
                return self.proj(x) * float("nan")
        """
    ),
}
TOO_MANY_PARAMS = candidate(
    mixer="""
    class Mixer(nn.Module):
        def __init__(self, d_model, n_heads, **kwargs):
            super().__init__()
            self.proj = nn.Linear(d_model, d_model)
            self.spare = nn.Parameter(torch.zeros(10 * 84000))  # 10x the DeltaNet root's mixer at width 128

        def forward(self, x):
            return self.proj(x) + 0 * self.spare[0]
    """
)
EXPECTED_REASON = {"nan_in_gradient": "nan", "nan_in_output": "nan"}


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(REJECTED))
def test_runner_rejects_with_reason(case):
    result = evaluate(REJECTED[case])
    assert not result.ok
    assert result.reason == EXPECTED_REASON.get(case, case), result
    assert result.detail
    assert result.metrics["wall_s"] > 0


def stored_numbers(source: str, d_model: int, n_heads: int) -> int:
    """What a mixer of `source` stores (parameters and buffers), counted here, in-process."""
    torch.manual_seed(0)
    return sum(v.numel() for v in contract.build_mixer(contract.load(source), d_model, n_heads).state_dict().values())


@pytest.mark.e2e
def test_runner_rejects_ten_times_the_parameters():
    tier = TIERS["check"]
    limit = math.floor(stored_numbers(render_root("deltanet"), tier.d_model, tier.n_heads) * 1.2)
    result = evaluate(TOO_MANY_PARAMS)
    assert not result.ok and result.reason == "params", result
    assert result.env["torch"] == torch.__version__, "a rejection records what produced it too"
    assert f"{limit:,}" in result.detail, result.detail
    assert f"{stored_numbers(TOO_MANY_PARAMS, tier.d_model, tier.n_heads):,}" in result.detail, result.detail


ALIAS_PATCH = candidate("g = F\ng.cross_entropy = lambda logits, targets, *a, **k: logits.sum() * 0.0\n")


@pytest.mark.e2e
def test_candidate_cannot_patch_the_loss_through_an_alias():
    """`import torch.nn.functional as F; g = F; g.cross_entropy = ...` replaces the loss inside the
    candidate's own server. The static check names it at once (forbidden)."""
    result = evaluate(ALIAS_PATCH)
    assert not result.ok and result.reason == "forbidden", result


@pytest.mark.e2e
def test_a_patched_loss_is_named_by_the_gradient_check():
    """Without the diagnostics the patch runs: the server trains on a loss of 0 and says so, and the
    scorer's gradient check finds that neither that loss nor its gradients are the harness's model's
    (before the check, the model stayed untrained: what is scored is computed from the logits)."""
    result = evaluate(ALIAS_PATCH, "micro", skip_static_checks=True)
    assert not result.ok and result.reason == "tamper", result
    assert "training step" in result.detail and re.search(r"its loss -?0\.0 where the model.s is 5", result.detail), (
        result
    )


@pytest.mark.e2e
def test_micro_evaluation_of_deltanet(tmp_path):
    weights = tmp_path / "weights" / "node.safetensors"
    result = evaluate(render_root("deltanet"), "micro", weights_out=weights)
    assert result.ok, result
    m = result.metrics
    for key in ("val_loss", "val_bpb", "tokens_per_s", "params", "wall_s"):
        assert m[key] > 0, (key, m)
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2), rel=1e-12)
    assert m["val_loss"] < math.log(256)  # it learned something beyond a uniform guess over bytes
    assert m["train_tokens"] == 20 * 8 * 64
    assert m["mixer_params"] < m["params"]
    # The trained weights: safetensors, the language model's under `lm.`; they load into the model shell.
    saved = load_file(str(weights))
    assert saved and all(k.startswith("lm.") for k in saved), sorted(saved)[:5]
    assert sum(v.size for v in saved.values()) == m["params"]
    lm = LM(contract.load(render_root("deltanet")), TIERS["micro"])
    lm.load_state_dict({k[3:]: torch.from_numpy(v) for k, v in saved.items()}, strict=True)
    failed = evaluate("def broken(:\n", "micro", weights_out=tmp_path / "never.safetensors")
    assert not failed.ok and not (tmp_path / "never.safetensors").exists()


@pytest.mark.e2e
def test_probe_weights_are_saved_beside_the_language_models(tmp_path):
    weights = tmp_path / "w.safetensors"
    tier = {
        "probes": {
            "d_model": 32,
            "n_layers": 1,
            "seq_len": 32,
            "batch_size": 8,
            "steps": 5,
            "pairs": [2],
            "eval_examples": 16,
        },
        "extrapolation": False,
        "hardware": False,
        "val_windows": 8,
        "steps": 5,
    }
    result = evaluate(render_root("deltanet"), "micro", tier_overrides=tier, weights_out=weights)
    assert result.ok, result
    assert 0 <= result.metrics["mqar_acc_p2"] <= 1 and 0 <= result.metrics["selcopy_acc"] <= 1
    assert result.metrics["mqar_acc"] == result.metrics["mqar_acc_p2"]
    saved = load_file(str(weights))
    assert {k.split(".")[0] for k in saved} == {"lm", "probe"}
    assert saved["probe.embed.weight"].shape == (256, 32) and saved["lm.embed.weight"].shape == (256, 64)


@pytest.mark.e2e
def test_compile_check_penalises_a_mixer_torch_compile_cannot_take_whole():
    """Hardware tiers try torch.compile's graph capture on the mixer: the root is captured whole;
    a mixer with a data-dependent .item() breaks the graph, is still accepted, and pays the
    fitness's compile penalty."""
    root = render_root("deltanet")
    head, sep, body = root.rpartition("    def forward(self, x: torch.Tensor) -> torch.Tensor:\n")
    breaking = (
        head
        + sep
        + "        if float(x.abs().max()) > 1e9:  # a host sync: TorchDynamo must break the graph here\n            x = x * 1.0\n"
        + body
    )
    tier = {"hardware": True}
    good = evaluate(root, "micro", tier_overrides=tier)
    bad = evaluate(breaking, "micro", tier_overrides=tier)
    assert good.ok and bad.ok, (good, bad)
    assert good.metrics["compile_ok"] is True and good.metrics["compile_graph_breaks"] == 0
    assert bad.metrics["compile_ok"] is False and bad.metrics["compile_graph_breaks"] >= 1
    assert "graph break" in bad.metrics["compile_error"]
    terms = breakdown(bad.metrics, good.metrics)
    assert terms["compile"] < 0 and "compile" not in breakdown(good.metrics, good.metrics)
    for key in ("decode_ms_per_token", "prefill_ms", "peak_mem_mb", "state_bytes", "flops_per_token", "quant_loss"):
        assert key in good.metrics, key
    assert good.metrics["decode_mode"] == "recurrent"


@pytest.mark.e2e
def test_torch_normal_operation_under_the_audit_hook():
    """Every request of a whole evaluation (training, probes, long windows, FLOPs, decoding, int8)
    runs in servers with the audit hook installed: torch's own operation must never trip it."""
    tier = {
        "d_model": 32,
        "seq_len": 32,
        "batch_size": 4,
        "steps": 3,
        "val_windows": 8,
        "complexity_lengths": [64],
        "probes": {"d_model": 32, "steps": 2, "batch_size": 8, "seq_len": 32, "pairs": [2, 4], "eval_examples": 8},
    }
    for root in ("deltanet", "transformer"):
        result = evaluate(render_root(root), "explore", tier_overrides=tier, allow_quadratic=True, param_limit=-1)
        assert result.ok, (root, result.reason, result.detail)
        for key in ("quant_loss", "mqar_acc", "val_loss_2x", "decode_ms_per_token", "flops_per_token"):
            assert key in result.metrics, (root, key)
