"""The candidate contract: what a candidate file must define, and how it is loaded.

A candidate defines `class Mixer(nn.Module)` with `__init__(self, d_model, n_heads, **kw)`
and `forward(x) -> y` mapping (batch, time, d_model) to the same shape and dtype. It may
also define `class FFN(nn.Module)` (`__init__(self, d_model, **kw)`) to replace the
harness MLP and `LAYERS = "MMA..."` to interleave the harness's softmax attention (A).
Loading happens only inside a model server (server.py).

torch.compile: a candidate may decorate or wrap its own functions (`@torch.compile`,
`@torch.compile(mode=...)`, `torch.compile(fn)`), and the sandbox decides whether that compiles.
Inside a candidate's servers `torch.compile` and `torch.compiler.compile` are the identity
(eager) unless the tier asks for compilation (`compile: true`, e.g. `--set compile=true`) and
the server runs on a GPU; on a CPU they are always eager (inductor's C++ build would cost tens
of seconds per function and changes no metric that is scored). The evaluation's environment
says which (`candidate_compile`: "eager" | "compiled"). Whether torch.compile takes the mixer
whole is measured separately, by the harness (metrics.compile_metrics).

Training progress: a candidate keeps no state between calls; what needs to know how far
training has gone (an annealed gate, a temperature) reads `training_progress()` from
`archlab.candidate`, the one part of archlab it may import: 0.0 at the first training step,
step / steps during training (the server sets it between optimizer steps, for the language
model and for the probe model alike), 1.0, frozen, after training and in every other request
(checks, evaluation, validation, probes, decoding). A step counter kept in a buffer and advanced
in forward is still state between calls (a `non_causal` rejection once twins disagree).
"""

import inspect
import sys
import types

import torch
import torch.nn as nn

from archlab.sandbox.errors import CandidateError, rejected  # noqa: F401  (CandidateError re-exported)

LOAD_SEED = 1234  # the random state a candidate's file is executed in: module-level random tables are the
# same in every model server of an evaluation


def load(source: str, name: str = "candidate") -> types.ModuleType:
    """Execute a candidate file as module `name` (its code objects are named `{name}.py`, which
    is how the audit hook recognises the candidate's own frames)."""
    try:
        code = compile(source, f"{name}.py", "exec")
    except SyntaxError as e:
        raise CandidateError("syntax", f"line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise CandidateError("syntax", f"cannot compile: {type(e).__name__}: {e}"[:300]) from None
    module = types.ModuleType(name)
    module.__file__ = f"{name}.py"
    sys.modules[name] = module
    torch.manual_seed(LOAD_SEED)
    try:
        exec(code, module.__dict__)
    except CandidateError:
        raise
    except Exception as e:
        raise rejected(e, "importing the candidate") from e
    validate(module)
    return module


def validate(module: types.ModuleType) -> None:
    mixer = getattr(module, "Mixer", None)
    if not (isinstance(mixer, type) and issubclass(mixer, nn.Module)):
        raise CandidateError("contract", "the file must define `class Mixer(torch.nn.Module)`")
    _require_params(mixer, ["d_model", "n_heads"], "Mixer.__init__(self, d_model, n_heads, **kwargs)")
    ffn = getattr(module, "FFN", None)
    if ffn is not None:
        if not (isinstance(ffn, type) and issubclass(ffn, nn.Module)):
            raise CandidateError("contract", "`FFN` must be a torch.nn.Module subclass")
        _require_params(ffn, ["d_model"], "FFN.__init__(self, d_model, **kwargs)")
    layers = getattr(module, "LAYERS", "M")
    if not (isinstance(layers, str) and layers and set(layers) <= {"M", "A"} and "M" in layers):
        raise CandidateError(
            "contract", f"LAYERS must be a string of M and A containing at least one M, got {layers!r}"
        )


def _require_params(cls: type, names: list[str], wanted: str) -> None:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        raise CandidateError("contract", f"cannot read the signature; expected {wanted}") from None
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not has_kwargs and not all(n in params for n in names):
        raise CandidateError("contract", f"wrong constructor signature; expected {wanted}")


def build_mixer(module: types.ModuleType, d_model: int, n_heads: int) -> nn.Module:
    return _build(module.Mixer, "Mixer", d_model=d_model, n_heads=n_heads)


def build_ffn(module: types.ModuleType, d_model: int) -> nn.Module | None:
    """The candidate's FFN (None: it keeps the harness's MLP)."""
    ffn = getattr(module, "FFN", None)
    return None if ffn is None else _build(ffn, "FFN", d_model=d_model)


def _build(cls: type, name: str, **kwargs) -> nn.Module:
    call = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        return cls(**kwargs)
    except CandidateError:
        raise
    except Exception as e:
        raise rejected(e, call, "contract") from e


def check_shape(mixer: nn.Module, d_model: int, dtype=torch.float32) -> None:
    x = torch.randn(2, 37, d_model, dtype=dtype)  # an odd length: no chunk size divides it
    try:
        y = mixer(x)
    except CandidateError:
        raise
    except Exception as e:
        raise rejected(e, "Mixer.forward") from e
    if not isinstance(y, torch.Tensor):
        raise CandidateError("shape", f"Mixer.forward must return a Tensor, got {type(y).__name__}")
    if y.shape != x.shape or y.dtype != x.dtype:
        raise CandidateError("shape", f"input {tuple(x.shape)} {x.dtype} gave output {tuple(y.shape)} {y.dtype}")
    if not torch.isfinite(y).all():
        raise CandidateError("nan", "Mixer.forward returned NaN or infinity for a random input")
