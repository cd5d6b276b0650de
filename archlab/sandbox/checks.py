"""Checks that are code, not opinion: static AST rules, runtime causality, parameter budget."""

import ast

import torch
import torch.nn as nn

from archlab.sandbox.contract import CandidateError

ALLOWED_IMPORTS = {"torch", "math", "einops", "typing", "functools", "fla", "__future__"}
# Builtins that reach the file system, the interpreter or other code.
FORBIDDEN_NAMES = {
    "__import__", "eval", "exec", "compile", "open", "globals", "locals", "vars", "breakpoint",
    "input", "setattr", "delattr", "memoryview", "__builtins__", "__loader__", "__spec__",
}
# Attribute names that lead out of the tensor world (torch re-exports os/sys, can load
# code and files, spawn processes, talk to the network).
FORBIDDEN_ATTRS = {
    "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "socket", "shutil", "pathlib",
    "io", "load", "save", "hub", "cpp_extension", "load_library", "classes", "multiprocessing",
    "distributed", "_C", "_dynamo", "compile", "from_file",
}
ALLOWED_DUNDERS = {"__init__", "__call__", "__name__", "__doc__", "__future__"}


def static_check(source: str) -> None:
    """Reject imports outside the allowlist, dunder walking, and patching of imported modules."""
    try:
        tree = ast.parse(source, "candidate.py")
    except SyntaxError as e:
        raise CandidateError("syntax", f"line {e.lineno}: {e.msg}") from None
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level:
                _forbid(node, "relative imports")
            for name in names:
                if name.split(".")[0] not in ALLOWED_IMPORTS:
                    _forbid(node, f"import of {name!r} (allowed: {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))})")
                if any(part in FORBIDDEN_ATTRS for part in name.split(".")[1:]):
                    _forbid(node, f"import of {name!r}")
            modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            _forbid(node, f"use of {node.id!r}")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr not in ALLOWED_DUNDERS:
                _forbid(node, f"access to {node.attr!r}")
            if node.attr in FORBIDDEN_ATTRS and _root_name(node) in modules:
                _forbid(node, f"access to {ast.unparse(node)!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("__") and node.value.endswith("__"):
            _forbid(node, f"the string {node.value!r} (dunder names are how sandbox escapes start)")
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Attribute | ast.Subscript) and _root_name(target) in modules:
                _forbid(node, f"assignment to {ast.unparse(target)!r} (imported modules are read-only)")


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else None


def _forbid(node: ast.AST, what: str) -> None:
    raise CandidateError("forbidden", f"line {getattr(node, 'lineno', '?')}: {what}")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_params(mixer: nn.Module, limit: int | None) -> int:
    n = count_params(mixer)
    if limit is not None and n > limit:
        raise CandidateError("params", f"{n:,} mixer parameters, over the run's budget of {limit:,}")
    return n


def check_causality(mixer: nn.Module, d_model: int, length: int = 150) -> None:
    """Perturb every position after a cut and require the outputs up to the cut to stay put.

    Runs in float64 when the mixer allows it (then numerical noise is ~1e-15 and a leak of
    1e-9 relative is caught), else float32 with a looser threshold. Both training and
    evaluation mode, several cut points (inside and across chunks) and seeds.
    """
    dtype, tolerance = torch.float64, 1e-9
    try:
        mixer.double()(torch.zeros(1, 4, d_model, dtype=dtype))
    except Exception:
        dtype, tolerance = torch.float32, 1e-5
        mixer.float()
    try:
        for training in (True, False):
            mixer.train(training)
            for seed in (0, 1):
                gen = torch.Generator().manual_seed(seed)
                x = torch.randn(2, length, d_model, dtype=dtype, generator=gen)
                for cut in (0, 1, length // 3, length // 2 + 7, length - 2):
                    x2 = x.clone()
                    x2[:, cut + 1 :] = torch.randn(2, length - cut - 1, d_model, dtype=dtype, generator=gen)
                    with torch.no_grad():
                        torch.manual_seed(seed)  # the same dropout masks for both passes
                        y = mixer(x)[:, : cut + 1]
                        torch.manual_seed(seed)
                        y2 = mixer(x2)[:, : cut + 1]
                    leak = ((y - y2).abs().max() / y.abs().max().clamp_min(1e-30)).item()
                    if not leak <= tolerance:  # also catches NaN
                        raise CandidateError(
                            "non_causal",
                            f"outputs at positions <= {cut} changed by {leak:.1e} (relative, {dtype}, "
                            f"{'train' if training else 'eval'} mode) when only later positions changed",
                        )
    finally:
        mixer.float().train()
