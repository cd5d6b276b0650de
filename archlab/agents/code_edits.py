"""Code operators: edits that apply to any candidate file, not only to the template family.

The offline brain's template operators change the fields of a `Design`; a file written by a user,
by an LLM or by another system has no design, so these operators work on the code itself:

- composition around the file's own `Mixer` (the old class stays untouched under a new name, a
  small wrapper class is appended): a causal depthwise convolution on its input, an output gate,
  an output norm, a learned skip; a hybrid `LAYERS` layout; another `FFN` (or none);
- edits on the syntax tree: swap an activation or a norm for one of the same role, scale a
  numeric constant (kernel and chunk sizes, eps, init scales, temperatures), remove a gate, an
  activation or a norm;
- crossover: a function, a class or a method of another node replaces the parent's same-named one.

Every edit is returned with a `spec` (JSON: where and what) so the same edit can be made on
another parent (a transplant), and only when the edited file still parses, passes the static
rules and defines `Mixer`: an edit that cannot apply is skipped, never evaluated. Text is edited
in place (the parent's formatting and comments stay), so a child's diff shows just the edit.
"""

import ast
import functools
import json
from dataclasses import dataclass

import pyflakes.checker
import pyflakes.messages

from archlab import syntax
from archlab.agents.parsing import FormatError, validate_code

# Operator -> (what it does, the template operator whose knowledge entries speak of the same idea),
# in the order a search with no record of them tries them: first the parts nearly every modern
# linear-attention layer has, which a root written without them most likely lacks (an output gate, a
# short convolution, an output norm: GLA, Mamba-2, DeltaNet and RetNet all have them; the knowledge
# base's output-gate, short-conv and output-norm entries), then local changes of what is there, and
# last removals (a part a design has is usually there for a reason) and softmax-attention layouts
# (slower per step, and behind the mixer they join at archlab's short budgets: 8 of 9 tries lost
# 0.04-0.75 in the first foreign-root benchmark).
OPERATORS = {
    "gate": ("gate the mixer's output with an activation of a low-rank projection of its input", "output_gate"),
    "conv": ("add a short causal depthwise convolution on the mixer's input", "short_conv"),
    "norm": ("normalise the mixer's output", "output_norm"),
    "constant": ("scale a numeric constant (a size, an eps, an init scale, a temperature)", "conv_size"),
    "skip": ("add a learned per-channel skip from the mixer's input to its output", "output_gate"),
    "activation": ("swap an activation for another of the same role", "feature_map"),
    "norm_swap": ("swap a normalisation for another (LayerNorm <-> RMSNorm)", "output_norm"),
    "ffn": ("change the feed-forward block", "hybrid"),
    "crossover": ("take a function, class or method from another node of the tree", "hybrid"),
    "ablate": ("remove a gate, an activation or a norm from the computation", "output_gate"),
    "layers": ("change the layer layout (interleave the harness's softmax attention)", "hybrid"),
}
ACTIVATIONS = ("silu", "gelu", "relu", "elu", "mish", "softplus")
ACTIVATION_MODULES = ("SiLU", "GELU", "ReLU", "ELU", "Mish", "Softplus")
GATES = {
    "torch.sigmoid",
    "torch.nn.functional.sigmoid",
    "torch.tanh",
    *(f"torch.nn.functional.{a}" for a in ACTIVATIONS),
}
NORMS = ("LayerNorm", "RMSNorm")
SHAPE_KEEPING = ("Norm", "Dropout")  # submodules `self.m(x)` that keep the shape: removable
KNOBS = {
    "kernel_size",
    "eps",
    "chunk_size",
    "size",
    "std",
    "scale",
    "temperature",
    "dropout",
    "p",
    "expand",
    "rank",
    "conv_size",
    "gain",
    "mean",
    "a",
    "b",
    "alpha",
    "beta",
    "tau",
    "base",
    "theta",
    "window",
}
MODULE_ATTRS = {
    "training",
    "parameters",
    "buffers",
    "modules",
    "children",
    "named_parameters",
    "named_buffers",
    "named_modules",
    "register_buffer",
    "register_parameter",
    "register_module",
    "add_module",
    "apply",
    "to",
    "eval",
    "train",
    "zero_grad",
    "state_dict",
    "load_state_dict",
    "forward",
    "half",
    "float",
    "double",
    "cpu",
    "cuda",
    "requires_grad_",
    "get_extra_state",
    "set_extra_state",
    "extra_repr",
    "type",
}
MARK = "# archlab code operator"
MAX_SIZE = 1024  # integer constants stay below this (and below the training length, when known)


@dataclass(frozen=True)
class Edit:
    operator: str
    spec: dict  # where and what: the same spec on another parent makes the same edit (a transplant)
    says: str  # the change in words, for the motivation
    code: str


def edits(code: str, operator: str, donors: dict[int, str] | None = None, max_size: int = MAX_SIZE) -> list[Edit]:
    """Every edit `operator` can make to `code` whose result is a valid candidate file."""
    return [e for e in candidates(code, operator, donors, max_size) if valid(e, code)]


def first(made: list[Edit], code: str, seen) -> Edit | None:
    """The first edit of `made` that is valid and not `seen` (checking only up to it: the static rules
    take milliseconds per file, and a constant can have a hundred sites)."""
    return next((e for e in made if not seen(e.code) and valid(e, code)), None)


def arm(operator: str, spec: dict, flip: bool = False) -> str | None:
    """What an edit changes, named the same on every parent it is made on, for the search's credit:
    a constant's site and direction (up or down) rather than its values, a graft's part rather than
    its donor. With `flip`, the arm that bets the other way at the same site: a constant scaled the
    other way (None for the other operators: a variant has no opposite)."""
    key = {k: v for k, v in spec.items() if k not in ("from", "donor")}
    if operator == "constant":
        up = abs(spec["to"]) > abs(spec["from"])
        key["to"] = "up" if up != flip else "down"
    elif flip:
        return None
    return f"{operator} {json.dumps(key, sort_keys=True)}"


def redo(
    code: str, operator: str, spec: dict, donors: dict[int, str] | None = None, max_size: int = MAX_SIZE
) -> Edit | None:
    """The edit `spec` describes, made on another file; None where it does not apply there."""
    return next((e for e in candidates(code, operator, donors, max_size) if e.spec == spec and valid(e, code)), None)


def candidates(code: str, operator: str, donors: dict[int, str] | None = None, max_size: int = MAX_SIZE) -> list[Edit]:
    """Every edit, valid or not; `max_size` bounds an integer constant (the training length: a chunk
    or kernel as long as the sequence makes the mixer's cost flat in length, rejected as quadratic)."""
    try:
        src = Source(code)
        if operator == "crossover":
            made = [e for node, donor in (donors or {}).items() for e in _crossover(src, node, donor)]
        elif operator == "constant":
            made = _constant(src, max_size)
        else:
            made = _MAKERS[operator](src)
    except (SyntaxError, ValueError, RecursionError):  # a file nested too deeply to walk has no edits
        return []
    return [e for e in made if e.code != code]


def valid(edit: Edit, parent: str) -> bool:
    """Parses, passes the static rules, defines Mixer; and, beyond what the parent already did, uses
    no undefined name and reads no attribute of `self` that no method of its class sets (an edit
    that would fail at once)."""
    try:
        validate_code(edit.code)
        return _undefined(edit.code) <= _undefined(parent) and _unset_attributes(edit.code) <= _unset_attributes(parent)
    except (FormatError, RecursionError):  # (nesting the static rules let through can still be too deep for pyflakes)
        return False


@functools.lru_cache(maxsize=16)  # (the parent's, once per proposal, not once per edit checked)
def _undefined(code: str) -> frozenset[str]:
    checker = pyflakes.checker.Checker(syntax.parse(code), "candidate.py")
    return frozenset(m.message_args[0] for m in checker.messages if isinstance(m, pyflakes.messages.UndefinedName))


# -- the parsed file, edited as text ----------------------------------------------------------------
class Source:
    """A candidate file and its syntax tree; edits are spliced into the text by the tree's positions
    (UTF-8 byte offsets, as the tree gives them)."""

    def __init__(self, code: str):
        self.code = code
        self.raw = code.encode()
        self.tree = syntax.parse(code, "candidate.py")
        self.starts = [0]
        for line in self.raw.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.aliases = _aliases(self.tree)
        # Where what code operators appended begins: in-place edits stay above it. A wrapper's variants
        # are its operator's own, and removing or swapping what just made the parent mostly undoes
        # it (ablating or re-activating a gate just added lost 0.15-0.23 in 5 of 6 tries).
        self.appended = next(
            (i for i, line in enumerate(code.splitlines(), 1) if line.startswith(MARK)), len(self.starts)
        )

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.starts[node.lineno - 1] + node.col_offset, self.starts[node.end_lineno - 1] + node.end_col_offset)

    def lines(self, node: ast.AST) -> tuple[int, int]:
        """Whole lines, decorators included."""
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return self.starts[first - 1], self.starts[node.end_lineno]

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.raw[start:end].decode()

    def replace(self, *changes: tuple[int, int, str]) -> str:
        raw = self.raw
        for start, end, new in sorted(changes, reverse=True):
            raw = raw[:start] + new.encode() + raw[end:]
        return raw.decode()

    def append(self, block: str) -> str:
        return self.code.rstrip("\n") + "\n" + block

    def canonical(self, func: ast.expr) -> str | None:
        """`F.silu` -> 'torch.nn.functional.silu' through the file's imports; None for anything else."""
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name) or func.id not in self.aliases:
            return None
        return ".".join([self.aliases[func.id], *reversed(parts)])

    def sites(self):
        """(scope, node) for every node of the file's own code (not what code operators appended),
        scope being the qualified name of the def or class around it ('' at module level); a name
        defined twice in one scope gets '~2', '~3'."""

        def walk(node, scope):
            seen: dict[str, int] = {}
            for child in ast.iter_child_nodes(node):
                if getattr(child, "lineno", 0) >= self.appended:
                    continue
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    seen[child.name] = seen.get(child.name, 0) + 1
                    name = child.name + (f"~{seen[child.name]}" if seen[child.name] > 1 else "")
                    inner = f"{scope}.{name}" if scope else name
                    yield scope, child
                    yield from walk(child, inner)
                else:
                    yield scope, child
                    yield from walk(child, scope)

        yield from walk(self.tree, "")

    def numbered(self, matches, twins: bool = True, key=None):
        """Sites of one kind numbered within their scope: a spec names `Mixer.forward#1`. With twins,
        the nodes of one top-level class or function that read the same are one site, edited together:
        a forward and its step compute the same gate, and editing one alone breaks their agreement."""
        groups: dict = {}
        for scope, node, *rest in matches:
            same = (scope.split(".")[0], (key or self.text)(node), *rest) if twins else id(node)
            groups.setdefault(same, (scope, [], rest))[1].append(node)
        count: dict[str, int] = {}
        for scope, nodes, rest in groups.values():
            count[scope] = count.get(scope, 0) + 1
            yield f"{scope or '<module>'}#{count[scope]}", nodes, *rest


def _aliases(tree: ast.Module) -> dict[str, str]:
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch":
                    names[a.asname or "torch"] = a.name if a.asname else "torch"
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch" and not node.level
        ):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


@functools.lru_cache(maxsize=16)
def _unset_attributes(code: str) -> frozenset[tuple[str, str]]:
    tree = syntax.parse(code)
    missing = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        methods = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assigned, read = set(), set()
        for node in ast.walk(cls):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                (assigned if isinstance(node.ctx, ast.Store) else read).add(node.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.args
                and node.func.attr in ("register_buffer", "register_parameter", "add_module", "register_module")
                and isinstance(node.args[0], ast.Constant)
            ):
                assigned.add(node.args[0].value)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node in cls.body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                assigned |= {t.id for t in targets if isinstance(t, ast.Name)}
        missing |= {(cls.name, a) for a in read - assigned - methods - MODULE_ATTRS}
    return frozenset(missing)


# -- composition: a wrapper class around the file's own Mixer ---------------------------------------
WRAPPER = """

{mark} `{op}`: {says}
import torch  # (the wrapper names torch in full: the file may import it under other names)

_Inner{n} = Mixer


class Mixer(torch.nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.inner = _Inner{n}(d_model, n_heads, **kwargs)
{init}

    def forward(self, x):
{forward}

    if callable(getattr(_Inner{n}, "step", None)):  # decoding keeps the inner mixer's recurrent form
        def step(self, x, state=None):  # one token: x is (batch, d_model)
{step}
"""

_WRAPPER_PARTS = {
    "conv": dict(
        variants={4: "kernel 4", 2: "kernel 2"},
        init="""        self.conv_size = {v}
        self.conv = torch.nn.Conv1d(d_model, d_model, self.conv_size, groups=d_model, bias=False)
        torch.nn.init.zeros_(self.conv.weight)  # starts as the parent's function""",
        forward="""        h = torch.nn.functional.pad(x.transpose(1, 2), (self.conv_size - 1, 0))
        return self.inner(x + self.conv(h).transpose(1, 2))""",
        step="""            inner, past = (None, x.new_zeros(x.shape[0], self.conv_size - 1, x.shape[-1])) if state is None else state
            window = torch.cat([past, x[:, None]], 1)
            y, inner = self.inner.step(x + (window * self.conv.weight[:, 0].t()).sum(1), inner)
            return y, (inner, window[:, 1:])""",
    ),
    "gate": dict(
        variants={"silu": "SiLU", "sigmoid": "sigmoid"},
        init="""        self.gate_down = torch.nn.Linear(d_model, max(4, d_model // 8), bias=False)  # low rank: within the budget
        self.gate_up = torch.nn.Linear(max(4, d_model // 8), d_model)""",
        forward="""        return self.inner(x) * torch.nn.functional.{v}(self.gate_up(self.gate_down(x)))""",
        step="""            y, state = self.inner.step(x, state)
            return y * torch.nn.functional.{v}(self.gate_up(self.gate_down(x))), state""",
    ),
    "norm": dict(
        variants={"rms": "RMSNorm over all channels"},
        init="""        self.norm = torch.nn.RMSNorm(d_model, eps=1e-6)""",
        forward="""        return self.norm(self.inner(x))""",
        step="""            y, state = self.inner.step(x, state)
            return self.norm(y), state""",
    ),
    "skip": dict(
        variants={"learned": "learned, starting at zero"},
        init="""        self.skip = torch.nn.Parameter(torch.zeros(d_model))""",
        forward="""        return self.inner(x) + self.skip * x""",
        step="""            y, state = self.inner.step(x, state)
            return y + self.skip * x, state""",
    ),
}


def _wrap(op: str):
    parts = _WRAPPER_PARTS[op]

    def make(src: Source) -> list[Edit]:
        if f"{MARK} `{op}`" in src.code:  # one of each: a second gate around a gate says nothing new
            return []
        n = src.code.count(f"{MARK} `") + 1
        made = []
        for v, words in parts["variants"].items():
            says = f"{OPERATORS[op][0]} ({words})"
            block = WRAPPER.format(
                mark=MARK, op=op, says=says, n=n, **{k: parts[k].format(v=v) for k in ("init", "forward", "step")}
            )
            made.append(Edit(op, {"variant": v}, says, src.append(block)))
        return made

    return make


_WRAPPERS = {op: _wrap(op) for op in _WRAPPER_PARTS}


# -- layout and FFN --------------------------------------------------------------------------------
def _top_level(src: Source, name: str) -> list[ast.stmt]:
    return [
        n
        for n in src.tree.body
        if (isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name)
        or (isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in n.targets))
    ]


def _layers(src: Source) -> list[Edit]:
    found = [n for n in _top_level(src, "LAYERS") if isinstance(n, ast.Assign)]
    current = (
        found[-1].value.value if found and isinstance(found[-1].value, ast.Constant) else "M" if not found else None
    )
    made = []
    for layout in ("M", "MA", "AM"):
        if layout == current or current is None:
            continue
        says = {
            "M": "use the mixer in every layer",
            "MA": "make every second layer the harness's softmax attention",
            "AM": "put softmax attention first and the mixer after it",
        }[layout]
        code = (
            src.replace(src.span(found[-1].value) + (repr(layout),))
            if found
            else src.append(f"\nLAYERS = {layout!r}  # {MARK}: {says}\n")
        )
        made.append(Edit("layers", {"layout": layout}, says, code))
    return made


FFN_BLOCK = """

{mark} `ffn`: {says}
import torch


class FFN(torch.nn.Module):
    def __init__(self, d_model, **kwargs):
        super().__init__()
        hidden = 48 * -(-8 * d_model // 96)  # 1.5x the harness SwiGLU's hidden size: the same parameters in two matrices
        self.up = torch.nn.Linear(d_model, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down({act})
"""


def _ffn(src: Source) -> list[Edit]:
    own = _top_level(src, "FFN")
    if own:
        says = "drop the file's FFN for the harness's SwiGLU"
        return [Edit("ffn", {"variant": "harness"}, says, src.replace(*(src.lines(n) + ("",) for n in own)))]
    made = []
    for variant, act, words in (
        ("relu2", "torch.relu(self.up(x)).square()", "a squared-ReLU MLP (Primer)"),
        ("gelu", "torch.nn.functional.gelu(self.up(x))", "a GELU MLP"),
    ):
        says = f"replace the harness's SwiGLU with {words} of the same size"
        made.append(
            Edit("ffn", {"variant": variant}, says, src.append(FFN_BLOCK.format(mark=MARK, says=says, act=act)))
        )
    return made


# -- edits on the syntax tree ----------------------------------------------------------------------
def _calls(src: Source):
    for scope, node in src.sites():
        if isinstance(node, ast.Call):
            name = src.canonical(node.func)
            if name:
                yield scope, node, name


def _where(site: str, nodes: list) -> str:
    """'Mixer.forward#2' -> 'Mixer.forward (site 2)': the words of a motivation."""
    scope, number = site.rsplit("#", 1)
    twins = f" and {len(nodes) - 1} more place(s) that read the same" if len(nodes) > 1 else ""
    return (scope if number == "1" else f"{scope} (site {number})") + twins


def _attr_span(src: Source, func: ast.Attribute) -> tuple[int, int]:
    end = src.span(func)[1]
    return end - len(func.attr.encode()), end


def _activation(src: Source) -> list[Edit]:
    sites = [
        (s, n, name)
        for s, n, name in _calls(src)
        if isinstance(n.func, ast.Attribute)
        and (
            name in {f"torch.nn.functional.{a}" for a in ACTIVATIONS}
            or name in {f"torch.nn.{m}" for m in ACTIVATION_MODULES}
        )
    ]
    made = []
    for site, nodes, name in src.numbered(sites):
        old = nodes[0].func.attr
        for new in ACTIVATION_MODULES if old in ACTIVATION_MODULES else ACTIVATIONS:
            if new != old:
                says = f"use {new} instead of {old} in {_where(site, nodes)}"
                made.append(
                    Edit(
                        "activation",
                        {"site": site, "from": old, "to": new},
                        says,
                        src.replace(*(_attr_span(src, n.func) + (new,) for n in nodes)),
                    )
                )
    return made


def _norm_swap(src: Source) -> list[Edit]:
    sites = [
        (s, n, name)
        for s, n, name in _calls(src)
        if isinstance(n.func, ast.Attribute)
        and name in {f"torch.nn.{m}" for m in NORMS}
        and not any(k.arg == "bias" for k in n.keywords)
    ]
    made = []
    for site, nodes, _ in src.numbered(sites):
        old = nodes[0].func.attr
        new = NORMS[1 - NORMS.index(old)]
        says = f"use {new} instead of {old} in {_where(site, nodes)}"
        made.append(
            Edit(
                "norm_swap",
                {"site": site, "from": old, "to": new},
                says,
                src.replace(*(_attr_span(src, n.func) + (new,) for n in nodes)),
            )
        )
    return made


def _number(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value not in (0, 1, -1)


def _constants(src: Source):
    """Numbers that set a size or a scale: module-level assignments, default arguments, keyword
    arguments with a knob's name, and float factors; never an index, a dim or a shape."""
    for scope, node in src.sites():
        if isinstance(node, ast.Assign) and not scope and _number(node.value):
            yield scope, node.value, node.targets[0].id if isinstance(node.targets[0], ast.Name) else "value"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            for arg, default in zip(args[len(args) - len(node.args.defaults) :], node.args.defaults):
                if _number(default):
                    yield scope, default, arg.arg
            for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults):
                if default is not None and _number(default):
                    yield scope, default, arg.arg
        elif isinstance(node, ast.keyword) and node.arg in KNOBS and _number(node.value):
            yield scope, node.value, node.arg
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
            for side in (node.left, node.right):  # a float factor, or an int divisor (`/ 8`: a temperature)
                if _number(side) and (
                    isinstance(side.value, float) or side is node.right and isinstance(node.op, ast.Div)
                ):
                    yield scope, side, "factor" if isinstance(node.op, ast.Mult) else "divisor"


def _scaled(value: int | float, max_size: int) -> list[int | float]:
    if isinstance(value, int):
        return [v for v in (value // 2, value * 2) if 1 <= v < max_size and v != value]
    factors = (0.1, 10) if 0 < abs(value) < 1e-3 else (0.5, 2)  # an eps: orders of magnitude
    return [float(f"{value * f:.6g}") for f in factors]  # 1e-06, not 1.0000000000000002e-06


def _constant(src: Source, max_size: int = MAX_SIZE) -> list[Edit]:
    made = []
    for site, (node,), name in src.numbered(_constants(src), twins=False):  # (equal numbers elsewhere are other knobs)
        for new in _scaled(node.value, max_size):
            shown = f"{new:.3g}" if isinstance(new, float) else str(new)
            says = f"set {name} to {shown} (was {node.value!r}) in {_where(site, [node])}"
            made.append(
                Edit(
                    "constant",
                    {"site": site, "from": node.value, "to": new},
                    says,
                    src.replace(src.span(node) + (repr(new),)),
                )
            )
    return made


def _ablate(src: Source) -> list[Edit]:
    made = []
    # A gate is one side of a product that is an activation of something (not a constant factor);
    # gates that read the same in one class are one site, whatever they multiply (forward and step).
    gates = [
        (s, n, which, src.text(side))
        for s, n in src.sites()
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult)
        for which, side, other in (("left", n.left, n.right), ("right", n.right, n.left))
        if isinstance(side, ast.Call) and src.canonical(side.func) in GATES and not isinstance(other, ast.Constant)
    ]
    for site, nodes, which, gate in src.numbered(gates, key=lambda n: ""):
        says = f"remove the gate {gate[:60]} in {_where(site, nodes)}"
        made.append(
            Edit(
                "ablate",
                {"site": site, "gate": which},
                says,
                src.replace(*(src.span(n) + (f"({src.text(n.right if which == 'left' else n.left)})",) for n in nodes)),
            )
        )
    acts = [
        (s, n, name)
        for s, n, name in _calls(src)
        if name in {f"torch.nn.functional.{a}" for a in ACTIVATIONS}
        and len(n.args) == 1
        and all(k.arg == "inplace" for k in n.keywords)
    ]
    for site, nodes, name in src.numbered(acts):
        says = f"drop the {name.rsplit('.', 1)[1]} in {_where(site, nodes)} (identity instead)"
        made.append(Edit("ablate", {"site": site, "activation": name}, says, _unwrap(src, nodes)))
    removable = _shape_keeping_members(src)
    members = [
        (s, n, n.func.attr)
        for s, n in src.sites()
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "self"
        and (s.split(".")[0], n.func.attr) in removable
        and len(n.args) == 1
        and not n.keywords
    ]
    for site, nodes, attr in src.numbered(members):
        says = f"remove self.{attr} ({removable[site.split('.')[0], attr]}) in {_where(site, nodes)}"
        made.append(Edit("ablate", {"site": site, "member": attr}, says, _unwrap(src, nodes)))
    return made


def _unwrap(src: Source, calls: list[ast.Call]) -> str:
    """Each call replaced by its one argument."""
    return src.replace(*(src.span(c) + (f"({src.text(c.args[0])})",) for c in calls))


def _shape_keeping_members(src: Source) -> dict[tuple[str, str], str]:
    """(class, attribute) -> the module type, for `self.x = Norm(...)` / `Dropout(...)` set in a class."""
    classes = {n.name for n in src.tree.body if isinstance(n, ast.ClassDef)}
    found = {}
    for scope, node in src.sites():
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and len(node.targets) == 1:
            target, func = node.targets[0], node.value.func
            kind = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            torch_module = (src.canonical(func) or "").startswith("torch.nn.")
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and any(k in kind for k in SHAPE_KEEPING)
                and (torch_module or kind in classes)
            ):
                found[scope.split(".")[0], target.attr] = kind
    return found


# -- crossover -------------------------------------------------------------------------------------
def _parts(src: Source) -> dict[str, ast.AST]:
    """Top-level functions and classes, and the methods of classes, by qualified name: only names
    bound once (a wrapper chain rebinds Mixer: it is made again by its operator, not grafted)."""
    bound = [n for stmt in src.tree.body for n in _names(stmt)]
    found = {}
    for node in src.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and bound.count(node.name) == 1:
            found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for m in node.body:
                    if isinstance(m, ast.FunctionDef):
                        found[f"{node.name}.{m.name}"] = m
    return found


def _names(stmt: ast.stmt) -> list[str]:
    """The top-level names a statement binds (imports, defs, assignments)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    return []


def _bound(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level names and the statement that binds each."""
    return {name: stmt for stmt in tree.body for name in _names(stmt)}


def _crossover(src: Source, donor_id: int, donor_code: str) -> list[Edit]:
    try:
        donor = Source(donor_code)
    except (SyntaxError, ValueError, RecursionError):
        return []
    ours, theirs = _parts(src), _parts(donor)
    have, offered = _bound(src.tree), _bound(donor.tree)
    made = []
    for name, node in theirs.items():
        if name not in ours or "." in name and name.split(".")[0] not in ours:
            continue
        if ast.dump(node) == ast.dump(ours[name]):
            continue
        # What the graft names at top level that this file lacks comes with it, just above the part.
        needed = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - set(have)
        extra = []
        for dep in sorted(needed):
            stmt = offered.get(dep)
            if stmt is not None and stmt not in extra and stmt is not theirs.get(name.split(".")[0]):
                extra.append(stmt)
        start, end = src.lines(ours[name])
        dstart, dend = donor.lines(node)
        top = ours[name.split(".")[0]]
        insert_at = src.lines(top)[0]
        changes = [(start, end, donor.raw[dstart:dend].decode())]
        if extra:
            changes.append(
                (insert_at, insert_at, "".join(donor.raw[slice(*donor.lines(s))].decode() for s in extra) + "\n")
            )
        kind = "method" if "." in name else "class" if isinstance(node, ast.ClassDef) else "function"
        says = f"take {kind} {name} from node {donor_id}" + (
            f" (with {', '.join(sorted(needed & set(offered)))})" if extra else ""
        )
        made.append(Edit("crossover", {"part": name, "donor": donor_id}, says, src.replace(*changes)))
    return made


_MAKERS = {
    **_WRAPPERS,
    "layers": _layers,
    "ffn": _ffn,
    "activation": _activation,
    "norm_swap": _norm_swap,
    "ablate": _ablate,
}
