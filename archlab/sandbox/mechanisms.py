"""The mechanisms a candidate's code uses, read from its syntax tree: one of the quality-diversity
archive's descriptors (archlab/search/archive.py), the one text-only systems can only guess at.

Five mechanisms are looked for, in the file's classes (the mixer and the parts it builds; a class
named `FFN` is the feed-forward block, not the mixer, and is skipped) and its `LAYERS`:

- hybrid:      `LAYERS` interleaves the harness's softmax attention ("A") with other layers;
- delta:       a delta-rule update (a name with the word "delta": `delta_rule_chunkwise`, fla's
               `chunk_delta_rule`, a `DeltaNet` class);
- decay:       state forgetting (a decay, forget, gamma or retention name that is given a value:
               `log_decay = F.logsigmoid(...)`, a `gammas` buffer, a call of fla's `chunk_gla`);
- gating:      a multiplicative gate (a gate name, or a product with the sigmoid or SiLU of a
               projection: `o * F.silu(self.g_proj(x))`);
- convolution: a convolution (a conv name: `ShortConv`, `self.conv`, `F.conv1d`).

Only names a class binds or calls count, not every name it reads: the template's helper takes a
`log_decay` argument that is None unless the design forgets, so reading it is no evidence, while
assigning it a value or registering a buffer under it is. (A mechanism hidden behind neutral names
in a helper function is missed: the set then lacks it, it never names a wrong one.)

A node's mechanisms, as a set, are one of the archive's descriptors: DeltaNet (a delta rule with a
convolution and an output gate) and Gated DeltaNet (the same with a decay) are different designs, and a
single "family" label (the first mechanism found) told them apart no better than the file's name.
"""

import ast
import re

from archlab.syntax import parse

MECHANISMS = ("hybrid", "delta", "decay", "gating", "convolution")
_DECAY_WORDS = {"decay", "forget", "gamma", "gammas", "retention", "gla"}
_GATE_WORDS = {"gate", "gated", "gating"}
_SQUASH = {"sigmoid", "silu"}  # what a gate multiplies by
_REGISTER = {"register_buffer", "register_parameter"}


def mechanisms(code: str) -> set[str]:
    """The MECHANISMS that the code uses; empty when it does not parse."""
    try:
        tree = parse(code)
    except (SyntaxError, ValueError):
        return set()
    found = set()
    layers = _layers(tree)
    if "A" in layers and set(layers) != {"A"}:
        found.add("hybrid")
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name != "FFN"):
        for name in _bound_or_called(cls):
            words = _words(name)
            if "delta" in words:
                found.add("delta")
            if words & _DECAY_WORDS or name.lower() == "a_log":
                found.add("decay")
            elif words & _GATE_WORDS:  # "forget_gate" is a decay, not an output gate
                found.add("gating")
            if any(w.startswith("conv") for w in words):
                found.add("convolution")
        if any(_is_gate_product(n) for n in ast.walk(cls)):
            found.add("gating")
    return found


def named(found: set[str]) -> str:
    """A set of mechanisms as one name, in MECHANISMS' order: "delta+gating+convolution" ("none": empty)."""
    return "+".join(m for m in MECHANISMS if m in found) or "none"


def declared_layers(source: str) -> str:
    """The file's `LAYERS` as a string literal assigned at its top level ("M" when it has none): the
    layout the scorer holds a model to, whatever the module does to its own attributes once running."""
    try:
        return _layers(parse(source)) or "M"
    except SyntaxError:
        return "M"


def _layers(tree: ast.Module) -> str:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return ""


def _bound_or_called(cls: ast.ClassDef):
    """The names a class binds (to something other than None) or calls, and its own and its methods' names."""
    yield cls.name
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef):
            yield node.name
        elif isinstance(node, ast.Assign | ast.AnnAssign) and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for part in ast.walk(target):
                    if isinstance(part, ast.Name):
                        yield part.id
                    elif isinstance(part, ast.Attribute):
                        yield part.attr
        elif isinstance(node, ast.Call):
            name = _callee(node)
            if name:
                yield name
            if name in _REGISTER and node.args and isinstance(node.args[0], ast.Constant):
                yield str(node.args[0].value)


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _words(name: str) -> set[str]:
    """snake_case and CamelCase parts, lower-cased: "ShortConv1d" -> {"short", "conv1d"}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return {w.lower() for w in spaced.split("_") if w}


def _is_gate_product(node: ast.AST) -> bool:
    """x * sigmoid(proj(...)) (or silu, either side, as a function or a method): a gate. A constant
    times a sigmoid (beta in (0, 2)) is a scaled coefficient, not a gate."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)):
        return False
    for squash, other in ((node.left, node.right), (node.right, node.left)):
        if (
            isinstance(squash, ast.Call)
            and _callee(squash) in _SQUASH
            and not isinstance(other, ast.Constant)
            and any(isinstance(n, ast.Call) for n in ast.walk(squash) if n is not squash)
        ):
            return True
    return False
