"""Sandbox parts tested in-process (fast): tiers and overrides, fitness and the Pareto archive,
the hardened static checks, integrity snapshots, probes, step(), int8 quantization, and torch's
normal operation under the audit hook (in a child process: a hook cannot be removed)."""

import math
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from archlab.sandbox import checks, contract, harness, protections
from archlab.sandbox.data import IGNORE, KEY_BASE, SEPARATOR, VALUE_BASE, mqar_batch, selective_copy_batch
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.fitness import OBJECTIVES, ParetoArchive, Weights, breakdown, fitness, pareto_front
from archlab.sandbox.static import static_check
from archlab.sandbox.tiers import TIERS, Probes, TierError, resolve
from archlab.templates import Design, render, render_root


# -- tiers -------------------------------------------------------------------------------------
def test_tiers_are_named_documented_configurations():
    assert list(TIERS) == ["check", "micro", "smoke", "explore", "verify"]
    assert TIERS["check"].steps == 0 and TIERS["micro"].steps > 0
    assert TIERS["micro"].probes is None and not TIERS["micro"].hardware  # micro stays a few seconds
    assert TIERS["explore"].probes is not None and TIERS["explore"].hardware and TIERS["explore"].extrapolation
    assert TIERS["verify"].seeds > 1


def test_tier_overrides_merge_and_validate():
    tier = resolve("explore", {"steps": 800, "probes": {"steps": 50}})
    assert tier.steps == 800 and tier.probes.steps == 50 and tier.probes.pairs == Probes().pairs
    assert resolve("micro") is TIERS["micro"]
    with pytest.raises(TierError, match="nonsense"):
        resolve("smoke", {"nonsense": 1})
    with pytest.raises(TierError):
        resolve("smoke", {"steps": "many"})
    with pytest.raises(TierError, match="unknown tier"):
        resolve("huge")


# -- fitness -----------------------------------------------------------------------------------
ROOT = {"val_loss": 2.0, "tokens_per_s": 1000.0}


def test_fitness_is_backward_compatible():
    assert fitness({"val_loss": 1.9, "tokens_per_s": 1000.0}, ROOT) == pytest.approx(0.1)
    slower = fitness({"val_loss": 1.9, "tokens_per_s": 500.0}, ROOT, 0.05)
    assert slower == pytest.approx(0.1 - 0.05 * math.log(2))
    assert fitness({"val_loss": 1.9, "tokens_per_s": 2000.0}, ROOT) == pytest.approx(0.1)  # faster is no bonus


def test_fitness_hardware_penalties_apply_when_both_sides_have_the_metric():
    root = {**ROOT, "decode_ms_per_token": 1.0, "peak_mem_mb": 100.0, "quant_loss": 0.01, "state_bytes": 1000,
            "state_bytes_per_token": 0.0, "mqar_acc": 0.5}
    same = {**root, "val_loss": 1.9}
    assert fitness(same, root) == pytest.approx(0.1)
    heavy = {**same, "decode_ms_per_token": 2.0, "peak_mem_mb": 400.0, "quant_loss": 0.11, "state_bytes_per_token": 1024.0,
             "compile_ok": False}
    terms = breakdown(heavy, root)
    assert terms["latency"] == pytest.approx(-0.02 * math.log(2))
    assert terms["memory"] == pytest.approx(-0.02 * math.log(4))
    assert terms["quant"] == pytest.approx(-0.5 * 0.1)
    assert terms["state"] < 0 and terms["compile"] == -0.05
    assert terms["fitness"] == pytest.approx(sum(v for k, v in terms.items() if k != "fitness"))
    assert fitness(heavy, root, weights={"latency": 0, "memory": 0, "quant": 0, "state": 0, "compile": 0}) == pytest.approx(0.1)
    assert fitness({**same, "mqar_acc": 0.9}, root, weights=Weights(recall=1.0)) == pytest.approx(0.1 + 0.4)


def test_flagged_results_are_never_crowned():
    flagged = {"val_loss": 1.0, "tokens_per_s": 1000.0, "flagged": "implausible_gain"}
    assert fitness(flagged, ROOT) == 0.0
    assert fitness(flagged, ROOT, trust_flagged=True) == pytest.approx(1.0)


def test_pareto_archive_over_quality_latency_memory():
    assert OBJECTIVES == ("val_loss", "decode_ms_per_token", "peak_mem_mb")
    archive = ParetoArchive()
    assert archive.add(1, {"val_loss": 2.0, "decode_ms_per_token": 1.0, "peak_mem_mb": 100})
    assert archive.add(2, {"val_loss": 1.9, "decode_ms_per_token": 2.0, "peak_mem_mb": 100})  # better quality, slower
    assert not archive.add(3, {"val_loss": 2.1, "decode_ms_per_token": 2.0, "peak_mem_mb": 200})  # dominated
    assert archive.add(4, {"val_loss": 1.8, "decode_ms_per_token": 0.5, "peak_mem_mb": 50})  # dominates both
    assert archive.front() == [4]
    assert ParetoArchive.of({1: {"val_loss": 2.0}, 2: {"val_loss": 1.0}, 3: None}).front() == [2]
    assert pareto_front([(1, 2.0, 1.0), (2, 1.0, 2.0), (3, 3.0, 3.0)]) == [2, 1]


# -- static checks -----------------------------------------------------------------------------
ACCEPTED = {
    "self_private": "class A:\n    def __init__(self):\n        self._cache = None\n        x = self._cache\n",
    "local_tensor_items": "import torch\nout = torch.zeros(3)\nout[0] = 1.0\nout.add_(1)\n",
    "fla_import": "try:\n    from fla.ops.delta_rule import chunk_delta_rule\nexcept Exception:\n    chunk_delta_rule = None\n",
    "docstring_mentions_dunders": '"""See archlab/templates/__init__.py and __main__."""\n',
    "getattr_constant": "import torch\nrelu = getattr(torch, 'relu')\n",
    "autograd_function": "import torch\nclass F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n        return x\n",
    "main_guard": "if __name__ == '__main__':\n    pass\n",
}
REJECTED = {
    "alias_chain": "import torch\nt = torch\nT = t.Tensor\nT.item = None\n",
    "walrus_alias": "import torch.nn.functional as F\nif (g := F):\n    g.cross_entropy = None\n",
    "call_result_patch": "import torch\ntorch.zeros(1).__class__.item = None\n",
    "getattr_as_value": "import functools\nf = functools.partial(getattr, 1)\n",
    "hasattr_computed": "n = 'x'\nhasattr(1, n)\n",
    "torch_library": "import torch\nlib = torch.library.Library('aten', 'IMPL')\n",
    "torch_jit": "import torch\nf = torch.jit.script\n",
    "type_hints_eval": "import typing\ntyping.get_type_hints(int)\n",
    "mro_walk": "x = type(1).mro()\n",
    "del_module_attr": "import torch\ndel torch.relu\n",
    "set_default_dtype": "import torch\ntorch.set_default_dtype(torch.float64)\n",
    "metaclass": "class A(metaclass=type):\n    pass\n",
    "dispatch_mode": "import torch\nclass M(torch.utils.TorchDispatchMode):\n    pass\n",
    "star_import": "from torch import *\n",
    "null_bytes": "x = 1\x00",
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_static_check_accepts(name):
    static_check(ACCEPTED[name])


@pytest.mark.parametrize("name", list(REJECTED))
def test_static_check_rejects(name):
    with pytest.raises(CandidateError) as e:
        static_check(REJECTED[name])
    assert e.value.reason in ("forbidden", "syntax")


def test_static_check_survives_absurd_input():
    for source in ("(" * 100_000, "x = " + "+".join(["1"] * 50_000), "a" * 300_000):
        with pytest.raises(CandidateError):
            static_check(source)


# -- integrity ---------------------------------------------------------------------------------
def test_integrity_names_what_was_replaced():
    import torch.nn.functional as F

    snapshot = protections.Integrity([F], [torch.nn.Linear], threads=torch.get_num_threads())
    snapshot.verify("untouched")
    original = F.cross_entropy
    try:
        F.cross_entropy = lambda *a, **k: torch.zeros(())
        with pytest.raises(CandidateError) as e:
            snapshot.verify("after training")
        assert e.value.reason == "tamper" and "cross_entropy" in e.value.detail and "after training" in e.value.detail
    finally:
        F.cross_entropy = original
    try:
        torch.nn.Linear.extra = 1
        with pytest.raises(CandidateError, match="extra"):
            snapshot.verify("added")
    finally:
        del torch.nn.Linear.extra
    snapshot.verify("restored")


# -- probes --------------------------------------------------------------------------------------
def test_mqar_batches_score_only_recall():
    inputs, targets = mqar_batch(4, 3, 16, torch.Generator().manual_seed(0), keys=8, values=8)
    for row, target in zip(inputs, targets):
        keys, values = row[0:6:2].tolist(), row[1:6:2].tolist()
        assert len(set(keys)) == 3 and all(KEY_BASE <= k < KEY_BASE + 8 for k in keys)
        scored = (target != IGNORE).nonzero().flatten().tolist()
        assert len(scored) == 3
        for pos in scored:  # at a repeated key, the target is the value that followed it
            assert target[pos] == values[keys.index(row[pos].item())] and target[pos] >= VALUE_BASE


def test_selective_copy_batches():
    inputs, targets = selective_copy_batch(2, 4, 12, 20, torch.Generator().manual_seed(0))
    for row, target in zip(inputs, targets):
        data = [t for t in row[:12].tolist() if t]
        assert len(data) == 4 and row[12] == SEPARATOR
        assert target[12:16].tolist() == data and row[13:16].tolist() == data[:3]


# -- step(), quantization, model-level causality -------------------------------------------------
@pytest.mark.parametrize("design", [Design(), Design(forget_gate="data"), Design(forget_gate="fixed", conv_size=2),
                                    Design(core="attention", short_conv=False), Design(short_conv=False, beta="const")],
                         ids=["deltanet", "gated", "fixed_decay", "attention", "no_conv"])
def test_template_step_agrees_with_forward(design):
    metrics = checks.check_step(contract.twins(contract.load(render(design)), lambda m: contract.build_mixer(m, 32, 4)), 32)
    assert metrics["has_step"]
    assert (metrics["mixer_state_bytes_per_token"] > 0) == (design.core == "attention")


def test_int8_quantization_is_close_but_not_identical():
    model = harness.LM(contract.load(render_root("deltanet")), TIERS["micro"])
    q = harness.quantized_copy(model)
    for (name, a), b in zip(model.state_dict().items(), q.state_dict().values()):
        if a.dim() >= 2:
            assert not torch.equal(a, b), name
            assert (a - b).abs().max() <= a.abs().amax() / 127, name
        else:
            assert torch.equal(a, b), name


def test_trained_model_causality_probe():
    model = harness.LM(contract.load(render_root("deltanet")), TIERS["micro"]).eval()
    gen = torch.Generator().manual_seed(0)
    inputs, other = torch.randint(0, 256, (2, 2, 64), generator=gen)
    with torch.no_grad():
        harness._model_causality(model, model(inputs), inputs, other, torch.device("cpu"), gen)  # passes

        class Peek(torch.nn.Module):
            def forward(self, x):
                return x + 0.5 * x.roll(-1, dims=1)

        model.blocks[0].mixer = Peek()
        with pytest.raises(CandidateError, match="trained model"):
            harness._model_causality(model, model(inputs), inputs, other, torch.device("cpu"), gen)


# -- torch under the audit hook ----------------------------------------------------------------
def test_torch_normal_operation_under_the_audit_hook(tmp_path):
    """Train, evaluate, count FLOPs, decode with step(), quantize and save weights with the
    hook installed: torch's own operation must never trip it."""
    script = textwrap.dedent(f"""
        import torch
        from archlab.sandbox import contract, harness, protections
        from archlab.sandbox.data import Corpus
        from archlab.sandbox.tiers import resolve
        from archlab.templates import render_root
        torch.set_num_threads(1)
        device = torch.device("cpu")
        corpus = Corpus.load()
        harness.warm_up(device)
        out = open({str(tmp_path / 'weights.pt')!r}, "wb")
        guard = protections.AuditGuard(writable=[{str(tmp_path / 'cache')!r}])
        guard.install()
        tier = resolve("explore", dict(d_model=32, seq_len=32, batch_size=4, steps=3, val_windows=8,
                                       probes=dict(d_model=32, steps=2, batch_size=8, seq_len=32, pairs=[2, 4], eval_examples=8)))
        for root in ("deltanet", "transformer"):
            candidate = contract.load(render_root(root))
            harness.check_candidate(candidate, resolve("check", dict(d_model=32, complexity_lengths=(32, 64))), None,
                                    allow_quadratic=True)
            model, _ = harness.train_lm(candidate, tier, corpus, 0, device)
            probe, _ = harness.train_probes(candidate, tier, 0, device)
            torch.save({{"lm": model.state_dict(), "probe": probe.state_dict()}}, out)
            weights = {{"lm": model.state_dict(), "probe": probe.state_dict()}}
            metrics = harness.evaluate_trained(candidate, tier, corpus, weights, device, rng=torch.Generator().manual_seed(0))
            assert "quant_loss" in metrics and "mqar_acc" in metrics and "val_loss_2x" in metrics, metrics
        print("violations:", guard.violations)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "violations: []" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_files_changed_through_a_directory_fd_are_judged_where_they_really_are(tmp_path):
    """shutil.rmtree removes a tree with os.remove('name', dir_fd) (Triton cleans its launcher
    build directory so, seen on a GPU): inside the writable cache that is allowed; the same
    relative names through a directory fd outside it are refused, even when the working
    directory, against which the bare name would resolve, is writable."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    cache.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("stored data")
    script = textwrap.dedent(f"""
        import os, tempfile
        from archlab.sandbox import protections
        os.chdir({str(cache)!r})
        guard = protections.AuditGuard(writable=[{str(cache)!r}])
        guard.install()
        with tempfile.TemporaryDirectory(dir={str(cache)!r}) as build:
            os.mkdir(os.path.join(build, "sub"))
            for name in ("launcher.c", "sub/launcher.so"):
                open(os.path.join(build, name), "w").close()
        print("cleaned:", not os.path.exists(build), guard.violations)
        fd = os.open({str(outside)!r}, os.O_RDONLY)
        for what, call in (("remove", lambda: os.remove("keep", dir_fd=fd)), ("mkdir", lambda: os.mkdir("new", dir_fd=fd)),
                           ("rename", lambda: os.rename("keep", "moved", src_dir_fd=fd, dst_dir_fd=fd))):
            try:
                call()
                print(what, "done")
            except PermissionError:
                print(what, "blocked")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cleaned: True []" in proc.stdout, proc.stdout
    assert [line.split()[1] for line in proc.stdout.splitlines()[1:]] == ["blocked"] * 3, proc.stdout
    assert (outside / "keep").read_text() == "stored data" and sorted(p.name for p in outside.iterdir()) == ["keep"]


def test_the_gpu_toolchain_may_run_under_the_audit_hook_and_nothing_else(tmp_path):
    """Triton compiles every new kernel with ptxas (subprocess.Popen, then os.posix_spawn on Python
    3.12+) and its launcher with cc (stdout to /dev/null): with cuda=True a trusted library may
    start a toolchain program; the candidate may not, and no library may start anything else."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("ptxas", "sh"):
        (tools / name).write_text("#!/bin/sh\necho ran $0\n")
        (tools / name).chmod(0o755)
    (tools / "cc").write_text("#!/bin/sh\necho built > $1\n")
    (tools / "cc").chmod(0o755)
    (tmp_path / "compiler_lib.py").write_text(textwrap.dedent('''
        import subprocess
        def run(path):  # what triton.backends.nvidia.compiler does for ptxas: a full path, close_fds=False
            return subprocess.run([path, "--version"], check=True, close_fds=False, capture_output=True, text=True).stdout
        def build(cc, out):  # what triton.runtime.build does for a kernel's launcher
            subprocess.check_call([cc, out], stdout=subprocess.DEVNULL)
    '''))
    (tmp_path / "candidate.py").write_text(textwrap.dedent('''
        import os
        def spawn(path):
            return os.posix_spawn(path, [path], {})
    '''))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import compiler_lib, candidate
        from archlab.sandbox import protections
        protections.AuditGuard(writable=[{str(tmp_path)!r}], cuda=True).install()
        print(compiler_lib.run({str(tools / 'ptxas')!r}).strip())
        compiler_lib.build({str(tools / 'cc')!r}, {str(tmp_path / 'launcher.so')!r})
        for what, call in (("other", lambda: compiler_lib.run({str(tools / 'sh')!r})),
                           ("candidate", lambda: candidate.spawn({str(tools / 'ptxas')!r}))):
            try:
                call()
                print(what, "spawned")
            except PermissionError as e:
                print(what, "blocked:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ran {tools / 'ptxas'}", proc.stdout
    assert lines[1].startswith("other blocked:") and "no processes" in lines[1], proc.stdout
    assert lines[2].startswith("candidate blocked:"), proc.stdout
    assert (tmp_path / "launcher.so").read_text() == "built\n"


def test_a_kernel_launcher_built_by_triton_may_be_loaded_and_nothing_else(tmp_path):
    """Triton's runtime/build.py loads the launcher it just compiled from its cache (an import of a
    .so): allowed with cuda=True when library code (fla) asked for the kernel, not when the candidate
    calls Triton's build step itself, not from outside the writable cache, not without CUDA."""
    build = tmp_path / "site" / "triton" / "runtime" / "build.py"
    build.parent.mkdir(parents=True)
    build.write_text(textwrap.dedent('''
        import importlib.util
        def load(name, path):  # triton.runtime.build._load_module_from_path
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    '''))
    (tmp_path / "site" / "kernels_lib.py").write_text("def launch(build, path):\n    return build.load('__triton_launcher', path)\n")
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    for d in (cache, elsewhere):
        d.mkdir()
        (d / "launcher.so").write_bytes(b"not an ELF file: loading it fails after the hook allowed it")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(tmp_path / 'site')!r})
        spec = importlib.util.spec_from_file_location("triton_build", {str(build)!r})
        build = importlib.util.module_from_spec(spec); spec.loader.exec_module(build)
        import kernels_lib, types
        candidate = types.ModuleType("candidate")  # compiled as the sandbox loads it (contract.load)
        exec(compile("def launch(build, path):\\n    return build.load('__triton_launcher', path)\\n", "candidate.py", "exec"),
             vars(candidate))
        from archlab.sandbox import protections
        cuda = sys.argv[1] == "cuda"
        protections.AuditGuard(writable=[{str(cache)!r}], cuda=cuda).install()
        for what, call in (("library", lambda: kernels_lib.launch(build, {str(cache / 'launcher.so')!r})),
                           ("candidate", lambda: candidate.launch(build, {str(cache / 'launcher.so')!r})),
                           ("elsewhere", lambda: kernels_lib.launch(build, {str(elsewhere / 'launcher.so')!r}))):
            try:
                call()
            except PermissionError:
                print(what, "blocked")
            except ImportError:
                print(what, "loaded")
    """)
    for device, expected in (("cuda", ["library loaded", "candidate blocked", "elsewhere blocked"]),
                             ("cpu", ["library blocked", "candidate blocked", "elsewhere blocked"])):
        proc = subprocess.run([sys.executable, "-c", script, device], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines() == expected, (device, proc.stdout)


def test_inductor_in_the_sandbox_compiles_in_process_without_pickled_caches():
    """On a GPU the compile check runs inductor under the audit hook, which refuses unpickling a
    class for anyone: inductor's worker pool (results come back pickled) and its FX-graph and
    AOT-autograd caches (entries are pickles) must be off in the sandbox's environment."""
    probe = protections.run_contained("""
import pickle, torch
from torch._inductor import config
from torch._inductor.async_compile import AsyncCompile
from torch._functorch import config as functorch_config
from archlab.sandbox import protections
print(config.compile_threads, AsyncCompile.use_process_pool(), config.fx_graph_cache, functorch_config.enable_autograd_cache)
blob = pickle.dumps(torch.Size([2]))
protections.AuditGuard(writable=[], cuda=True).install()
try:
    pickle.loads(blob)
    print("unpickled")
except PermissionError:
    print("refused")
""", timeout=120, preimport=("pickle", "torch", "torch._inductor.async_compile", "torch._functorch.config",
                             "archlab.sandbox.protections"))  # after the uid drop the libraries may be unreadable
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == ["1", "False", "False", "False", "refused"], probe.stdout


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("std::bad_alloc"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB")])
def test_every_shape_of_memory_exhaustion_is_a_memory_rejection(error):
    """torch's CUDA wheels running on a CPU report a failed host allocation as
    RuntimeError('std::bad_alloc') (seen with Python 3.12 + torch 2.13+cu130): still 'memory'."""
    def fail():
        raise error

    with pytest.raises(CandidateError) as raised:
        harness.guard(fail)
    assert raised.value.reason == "memory", raised.value


def test_an_ordinary_runtime_error_is_not_memory():
    def fail():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x4)")

    with pytest.raises(CandidateError) as raised:
        harness.guard(fail)
    assert raised.value.reason == "error" and "shapes cannot be multiplied" in raised.value.detail


# -- state shared between twins ----------------------------------------------------------------
def test_shared_state_sees_writes_into_module_containers_but_not_imports():
    alias = types.ModuleType("shared_state_alias")
    alias.modules = sys.modules  # bound under a public name elsewhere too, as triton.language.extra does
    sys.modules["shared_state_alias"] = alias
    notes = torch.linalg.common_notes
    try:
        state = checks.SharedState()
        sys.modules["shared_state_new"] = types.ModuleType("shared_state_new")  # an import changes sys.modules
        state.verify()
        notes.setdefault("box", {}).setdefault("inner", {})
        state = checks.SharedState()
        notes["box"]["inner"]["x"] = torch.zeros(1)  # two levels down
        with pytest.raises(CandidateError, match="common_notes"):
            state.verify()
    finally:
        notes.pop("box", None)
        sys.modules.pop("shared_state_alias", None)
        sys.modules.pop("shared_state_new", None)
