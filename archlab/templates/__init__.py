"""Root designs.

Every built-in root is rendered from one Jinja2 template (`family.py.j2`) and a `Design`:
the offline brain mutates designs, so a child's code differs from its parent's exactly by
the parts a mutation changed. The rendered roots are committed as readable files
(`deltanet.py`, ...); `python -m archlab.templates` regenerates them and a test checks
that they are up to date.
"""

import textwrap
from pathlib import Path
from typing import Literal

import jinja2
from pydantic import BaseModel, ConfigDict

HERE = Path(__file__).parent


class Design(BaseModel):
    """The genes of a templated mixer; every field is one thing a mutation can change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    core: Literal["delta", "attention"] = "delta"
    short_conv: bool = True
    conv_size: int = 4
    feature_map: Literal["silu", "elu1", "relu", "identity"] = "silu"
    qk_norm: bool = True
    beta: Literal["sigmoid", "sigmoid2", "const"] = "sigmoid"
    forget_gate: Literal["none", "data", "fixed"] = "none"
    output_norm: bool = True
    output_gate: Literal["none", "silu", "sigmoid"] = "silu"
    heads: Literal[0.5, 1, 2] = 1
    chunk_size: Literal[16, 32, 64, 128] = 64
    layers: str = ""  # "" = every layer is this mixer; else a pattern of M and A


ROOTS: dict[str, tuple[str, Design]] = {
    "deltanet": (
        "DeltaNet: q/k/v projections, short causal conv, SiLU, L2-normalised q/k, sigmoid beta,\n"
        "chunkwise delta rule, per-head output RMSNorm and SiLU output gate (Yang et al., 2024).",
        Design(),
    ),
    "gated_deltanet": (
        "Gated DeltaNet: DeltaNet with a data-dependent scalar forget gate per head (Yang et al., 2025).",
        Design(forget_gate="data"),
    ),
    "deltanet_ablated": (
        "DeltaNet with known-good parts removed (short conv, output gate, q/k L2 norm): the root\n"
        "of the rediscovery benchmark, whose hidden answer is the full DeltaNet.",
        Design(short_conv=False, output_gate="none", qk_norm=False),
    ),
    "transformer": (
        "Softmax attention (PyTorch SDPA, causal, no positional encoding) as a second root.",
        Design(core="attention", short_conv=False, output_norm=False, output_gate="none"),
    ),
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def render(design: Design, title: str = "A mixer from the archlab template family.", summary: str = "") -> str:
    heads_expr = {0.5: "max(1, n_heads // 2)", 1: "n_heads", 2: "n_heads * 2"}[design.heads]
    return _env.get_template("family.py.j2").render(
        **design.model_dump(), heads_expr=heads_expr, title=title, summary=textwrap.fill(summary, 88)
    )


def render_root(name: str) -> str:
    summary, design = ROOTS[name]
    return render(design, title=f"Root design `{name}`.", summary=summary)


def root_path(name: str) -> Path:
    return HERE / f"{name}.py"


def write_roots() -> None:
    for name in ROOTS:
        root_path(name).write_text(render_root(name))
