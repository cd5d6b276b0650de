"""The candidate contract as code written elsewhere uses it (issue #23): imports for annotations
only, torch.compile on a candidate's own functions, the harness's read-only training progress,
and the parameter budget of `archlab check` / `archlab eval`. Small fixtures of our own, run in
real sandboxed model servers."""

import json
import textwrap
import time

import pytest

import helpers
from archlab import candidate as api
from archlab.sandbox import runner, static
from archlab.sandbox.contract import CandidateError

HEADER = "import torch\nimport torch.nn as nn\n"
MIXER = """

class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        h = self.proj(x)
        return h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)[:, None]
"""


def source(top: str = "", header: str = HEADER, mixer: str = MIXER) -> str:
    return header + textwrap.dedent(top) + mixer


def reason(src: str) -> str | None:
    try:
        static.static_check(src)
    except CandidateError as e:
        assert e.reason == "forbidden", e
        return e.detail
    return None


# -- imports under `if TYPE_CHECKING:` ---------------------------------------------------------------
ANNOTATIONS_ONLY = """
    from __future__ import annotations

    from typing import TYPE_CHECKING, Optional
    import typing

    import torch
    import torch.nn as nn

    if TYPE_CHECKING:  # pragma: no cover
        from transformers.processing_utils import Unpack
        from fla.models.utils import Cache
        import numpy as np
        pass

    if typing.TYPE_CHECKING:
        import pandas


    def helper(x: torch.Tensor, cache: Optional[Cache] = None, **kwargs: Unpack[dict]) -> np.ndarray:
        return x
"""


def test_type_checking_imports_need_not_be_on_the_allowlist():
    src = textwrap.dedent(ANNOTATIONS_ONLY) + MIXER
    assert reason(src) is None
    assert "transformers" in reason(src.replace("if TYPE_CHECKING:  # pragma: no cover", "if True:"))


TYPE_CHECKING_ABUSE = {
    # the test could be true: TYPE_CHECKING (or typing) bound by something else than its import from typing
    "rebound_by_assignment": "from typing import TYPE_CHECKING\nTYPE_CHECKING = True\nif TYPE_CHECKING:\n    import os\n",
    "rebound_by_walrus": "from typing import TYPE_CHECKING\n(TYPE_CHECKING := 1)\nif TYPE_CHECKING:\n    import os\n",
    "rebound_as_parameter": "from typing import TYPE_CHECKING\ndef f(TYPE_CHECKING=1):\n    if TYPE_CHECKING:\n        import os\n",
    "rebound_by_for": "from typing import TYPE_CHECKING\nfor TYPE_CHECKING in [1]:\n    pass\nif TYPE_CHECKING:\n    import os\n",
    "rebound_by_except": (
        "from typing import TYPE_CHECKING\ntry:\n    pass\nexcept Exception as TYPE_CHECKING:\n    pass\n"
        "if TYPE_CHECKING:\n    import os\n"
    ),
    "defined_as_a_class": "class TYPE_CHECKING:\n    pass\nif TYPE_CHECKING:\n    import os\n",
    "never_imported": "if TYPE_CHECKING:\n    import os\n",
    "imported_from_elsewhere": "from torch import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n",
    "imported_under_another_name": "from typing import TYPE_CHECKING as T\nif T:\n    import os\n",
    "typing_is_something_else": "import torch as typing\nif typing.TYPE_CHECKING:\n    import os\n",
    # the block does more than import: it is checked as any code is
    "code_in_the_block": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n    os.system('true')\n",
    "assignment_in_the_block": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n    x = 1\n",
    # else: runs, and is checked as any code is
    "in_the_else_branch": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    import os\n",
    "in_an_elif_branch": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelif True:\n    import os\n",
    "negated_test": "from typing import TYPE_CHECKING\nif not TYPE_CHECKING:\n    import os\n",
    "compound_test": "from typing import TYPE_CHECKING\nif TYPE_CHECKING or True:\n    import os\n",
}


@pytest.mark.parametrize("top", list(TYPE_CHECKING_ABUSE.values()), ids=list(TYPE_CHECKING_ABUSE))
def test_type_checking_blocks_cannot_smuggle_code(top):
    detail = reason(source(top))
    assert detail is not None and ("'os'" in detail or "access to 'system'" in detail or "'TYPE_CHECKING'" in detail), (
        detail
    )


@pytest.mark.e2e
def test_a_type_checking_candidate_is_accepted_in_the_sandbox():
    """Loaded for real in a model server: the annotations stay strings, nothing is imported."""
    result = runner.evaluate(textwrap.dedent(ANNOTATIONS_ONLY) + MIXER, "check", threads=1)
    assert result.ok, result


# -- static rules that real code met: harmless forms of what the rules forbid --------------------------
ACCEPTED = {  # each found in ASI-Arch's published designs (issue #23), in our own words
    "hasattr_dunder": "def is_cache(x):\n    return hasattr(x, '__setitem__') or hasattr(x, \"ema\")\n",
    "module_all": "__all__ = ['Mixer']\n",
    "builtin_name_as_parameter": "def sparse(input, dim=-1):\n    return input - input.amax(dim=dim, keepdim=True)\n"
    "f = lambda open: open + 1\n",
    "item_of_own_view": "class Init(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.out = nn.Linear(4, 8)\n        with torch.no_grad():\n"
    "            self.out.bias.view(2, 4)[:, 3] = 2.0\n            bias = self.out.bias\n"
    "            bias.view(2, 4)[:, -1] += 0.5\n",
}
STILL_FORBIDDEN = {
    "getattr_dunder": ("def f(x):\n    return getattr(x, '__class__')\n", "__class__"),
    "hasattr_variable_name": ("def f(x, name):\n    return hasattr(x, name)\n", "hasattr without a constant"),
    "dunder_string_elsewhere": ("NAME = '__setitem__'\n", "the string"),
    "all_in_a_function": ("def f():\n    __all__ = []\n    return __all__\n", "'__all__'"),
    "builtin_outside_its_function": ("def f(input):\n    return input\nx = input\n", "use of 'input'"),
    "builtin_made_global": ("def f():\n    global input\n    return input\n", "declaring 'input' global"),
    "item_of_an_imported_modules_call": ("torch.zeros(2).view(2)[0] = 1.0\n", "imported modules are read-only"),
    "item_through_getattr": ("getattr(nn, 'Linear')[0] = 1\n", "only attributes of your own objects"),
    "attribute_of_a_call": (
        "class A(nn.Module):\n    def f(self):\n        self.get_submodule('x').forward = None\n",
        "only attributes of your own objects",
    ),
}


@pytest.mark.parametrize("top", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_harmless_forms_real_code_uses_are_accepted(top):
    assert reason(source(top)) is None


@pytest.mark.parametrize("case", list(STILL_FORBIDDEN.values()), ids=list(STILL_FORBIDDEN))
def test_the_forms_around_them_stay_forbidden(case):
    top, words = case
    detail = reason(source(top))
    assert detail is not None and words in detail, detail


# -- torch.compile: the sandbox decides ---------------------------------------------------------------
COMPILED = (
    HEADER
    + """

@torch.compile
def running_mean(h):
    return h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)[:, None]


@torch.compile(mode="max-autotune-no-cudagraphs", dynamic=True, fullgraph=True)
def gate(h):
    return torch.sigmoid(h) * h


def plain(h):
    return h * 0.5


half = torch.compile(plain, backend="inductor")
if half is not plain or torch.compiler.compile(plain) is not plain:
    raise RuntimeError("COMPILED: torch.compile is not the identity here")


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return half(gate(running_mean(self.proj(x))))
"""
)


@pytest.mark.e2e
def test_a_candidates_torch_compile_is_eager_on_the_cpu():
    """@torch.compile, @torch.compile(...) and torch.compile(fn) are accepted; on a CPU the candidate's
    server runs them eagerly (before, inductor's first import failed inside the server, and where it
    runs it builds C++ for ~40 s per function), also when the tier asks for compilation."""
    assert static.static_check(COMPILED) is None
    started = time.monotonic()
    result = runner.evaluate(COMPILED, "micro", threads=1)
    assert result.ok, result
    assert result.env["candidate_compile"] == "eager" and result.metrics["val_loss"] < 6
    assert time.monotonic() - started < 60
    asked = runner.evaluate(COMPILED, "check", threads=1, tier_overrides={"compile": True})
    assert asked.ok and asked.env["candidate_compile"] == "eager", asked


# -- the harness's training progress (archlab/candidate.py) ------------------------------------------
PROGRESS_API = {
    "from_import": ("from archlab.candidate import training_progress\n", None),
    "module_alias": ("import archlab.candidate as progress\n", None),
    "from_archlab": ("from archlab import candidate\n", None),
    "bare_import_binds_archlab": ("import archlab.candidate\n", "binds the name archlab"),
    "the_private_setter": ("from archlab.candidate import _set_training_progress\n", "private attribute"),
    "the_setter_through_the_module": (
        "import archlab.candidate as c\nc._set_training_progress(0.5)\n",
        "private attribute",
    ),
    "replacing_the_reader": ("import archlab.candidate as c\nc.training_progress = lambda: 0.5\n", "read-only"),
    "the_rest_of_archlab": ("from archlab.sandbox import server\n", "'archlab.sandbox'"),
    "archlab_itself": ("import archlab\n", "'archlab'"),
    "another_archlab_module": ("from archlab import sandbox\n", "only archlab.candidate"),
}


@pytest.mark.parametrize("case", list(PROGRESS_API), ids=list(PROGRESS_API))
def test_only_the_progress_reader_is_importable(case):
    top, expected = PROGRESS_API[case]
    detail = reason(source(top))
    assert (detail is None) if expected is None else (detail is not None and expected in detail), detail


def test_progress_outside_a_server_and_its_private_setter():
    assert api.training_progress() == 0.0  # nothing has trained in this process
    try:
        api._set_training_progress(0.25)
        assert api.training_progress() == 0.25
        api._set_training_progress(7)
        assert api.training_progress() == 1.0
    finally:
        api._set_training_progress(0.0)


ANNEALED = (
    HEADER
    + '''from archlab.candidate import training_progress

AT_IMPORT = training_progress()


class Mixer(nn.Module):
    """A gate annealed from the running mean to the identity by the harness's training progress; it
    prints what it sees in training (to the evaluation's log) and refuses any other value than 1.0
    outside training."""

    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        if AT_IMPORT != 1.0:
            raise RuntimeError(f"PROGRESS at import {AT_IMPORT}")
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        p = training_progress()
        if not self.training and p != 1.0:
            raise RuntimeError(f"PROGRESS in evaluation {p}")
        if self.training:
            print(f"progress {x.shape[-1]} {p!r}", flush=True)
        h = self.proj(x)
        mean = h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)[:, None]
        return (1.0 - 0.5 * p) * mean + 0.5 * p * h
'''
)


@pytest.mark.e2e
def test_training_progress_rises_in_training_and_is_one_in_every_measurement(tmp_path):

    assert static.static_check(ANNEALED) is None
    probes = {"steps": 10, "d_model": 32, "seq_len": 24, "batch_size": 8, "eval_examples": 32, "pairs": [2]}
    result = runner.evaluate(
        ANNEALED,
        "micro",
        threads=1,
        log_path=tmp_path / "log",
        tier_overrides={"probes": probes, "val_points": 2},
    )
    assert result.ok, result
    seen = [
        line.split()[2:] for line in (tmp_path / "log").read_text().splitlines() if line.startswith("[A] progress ")
    ]
    for width, steps in ((64, 20), (32, 10)):  # the LM, the probe model
        during = [float(p) for w, p in seen if int(w) == width and float(p) < 1.0]
        assert during == sorted(during) and set(during) == {s / steps for s in range(steps)}, (width, during)
        # (every training step's forward, each layer; the checks' train-mode forwards see 1.0)
    assert "mqar_acc" in result.metrics and result.metrics["val_loss"] < 6


STEP_COUNTER = (
    HEADER
    + '''

class Mixer(nn.Module):
    """A step counter kept in a buffer and advanced in forward: state between calls."""

    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.register_buffer("_step", torch.zeros(1), persistent=False)

    def forward(self, x):
        self._step += 1
        g = torch.clamp(self._step / 50.0, max=1.0)
        h = self.proj(x)
        return g * h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)[:, None]
'''
)


@pytest.mark.e2e
def test_a_step_counter_advanced_in_forward_is_still_rejected():
    result = runner.evaluate(STEP_COUNTER, "micro", threads=1)
    assert not result.ok and result.reason == "non_causal", result


# -- the parameter budget of `archlab check` / `archlab eval` ----------------------------------------
WIDE = source(
    mixer="""

class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        h = self.down(torch.relu(self.up(x)))
        return h.cumsum(1) / torch.arange(1, h.shape[1] + 1, dtype=h.dtype, device=h.device)[:, None]
"""
)  # 131,712 numbers at d_model 128: 1.57x the root DeltaNet mixer's 84,000


def _json(proc) -> dict:
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_check_takes_the_parameter_budget_as_options(tmp_path):
    wide = tmp_path / "wide.py"
    wide.write_text(WIDE)
    default = helpers.cli("check", wide, "--json", "--threads", helpers.THREADS)
    out = _json(default)
    assert default.returncode == 1 and out["reason"] == "params" and "100,800" in out["detail"], (
        out
    )  # floor(84,000 x 1.2)
    roomy = helpers.cli("check", wide, "--json", "--threads", helpers.THREADS, "--param-ratio", "1.6")
    out = _json(roomy)
    assert (
        roomy.returncode == 0 and out["metrics"]["param_limit"] == 134_400 and out["metrics"]["mixer_params"] == 131_712
    ), out
    free = helpers.cli("check", wide, "--json", "--threads", helpers.THREADS, "--no-budget")
    out = _json(free)
    assert free.returncode == 0 and "param_limit" in out["metrics"] and out["metrics"]["param_limit"] is None, out
    shown = helpers.cli("check", wide, "--threads", helpers.THREADS, "--no-budget")
    assert shown.returncode == 0 and "none (--no-budget)" in shown.stdout, shown.stdout
    narrow = tmp_path / "narrow.py"
    narrow.write_text(source())  # 16,512 numbers
    tight = helpers.cli("check", narrow, "--json", "--threads", helpers.THREADS, "--param-ratio", "0.1")
    out = _json(tight)
    assert tight.returncode == 1 and out["reason"] == "params" and "8,400" in out["detail"], out


@pytest.mark.e2e
def test_eval_takes_the_parameter_budget_as_options(tmp_path):
    wide = tmp_path / "wide.py"
    wide.write_text(WIDE.replace("4 * d_model", "8 * d_model"))  # 66,112 numbers at d_model 64 (root: 21,520)
    free = helpers.cli("eval", wide, "--tier", "micro", "--json", "--threads", helpers.THREADS, "--no-budget")
    out = _json(free)
    assert (
        free.returncode == 0 and out["metrics"]["param_limit"] is None and out["metrics"]["mixer_params"] == 66_112
    ), out
    assert out["metrics"]["val_loss"] < 6
    ratio = helpers.cli("eval", wide, "--tier", "micro", "--json", "--threads", helpers.THREADS, "--param-ratio", "3")
    out = _json(ratio)
    assert ratio.returncode == 1 and out["reason"] == "params" and "64,560" in out["detail"], out  # 21,520 x 3


@pytest.mark.parametrize("command", ["check", "eval"])
@pytest.mark.parametrize(
    "args",
    [
        ["--param-ratio", "0"],
        ["--param-ratio", "-1.5"],
        ["--param-ratio", "nan"],
        ["--param-ratio", "inf"],
        ["--param-ratio", "2", "--no-budget"],
    ],
    ids=["zero", "negative", "nan", "inf", "both"],
)
def test_bad_budget_options_are_usage_errors(tmp_path, command, args):
    narrow = tmp_path / "narrow.py"
    narrow.write_text(source())
    line = helpers.assert_user_error(helpers.cli(command, narrow, *args, timeout=60))
    assert ("--param-ratio" in line) and ("--no-budget" in line if "--no-budget" in args else "above 0" in line), line


def test_budget_options_are_explained_in_the_help():
    for command in ("check", "eval"):
        text = " ".join(helpers.cli(command, "--help").stdout.split())
        assert "--param-ratio" in text and "--no-budget" in text and "root DeltaNet mixer" in text, text
