"""The candidate contract as code written elsewhere uses it (issue #23): imports for annotations
only, torch.compile on a candidate's own functions, the harness's read-only training progress,
and the parameter budget of `archlab check` / `archlab eval`. Small fixtures of our own, run in
real sandboxed model servers."""

import textwrap
import time

import pytest

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
    "rebound_by_except": ("from typing import TYPE_CHECKING\ntry:\n    pass\nexcept Exception as TYPE_CHECKING:\n    pass\n"
                          "if TYPE_CHECKING:\n    import os\n"),
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
    assert detail is not None and ("'os'" in detail or "access to 'system'" in detail or "'TYPE_CHECKING'" in detail), detail


def test_a_type_checking_candidate_is_accepted_in_the_sandbox():
    """Loaded for real in a model server: the annotations stay strings, nothing is imported."""
    result = runner.evaluate(textwrap.dedent(ANNOTATIONS_ONLY) + MIXER, "check", threads=1)
    assert result.ok, result


# -- torch.compile: the sandbox decides ---------------------------------------------------------------
COMPILED = HEADER + '''

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
'''


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
