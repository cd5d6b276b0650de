"""ASI-Arch's published search as archlab data: its programs as candidate files, its tree as nodes.

ASI-Arch (GAIR-NLP/ASI-Arch, Apache-2.0) published `data/tree.json` (every node of its search:
index, name, parent index, score) and `data/106.json` (its 106 best designs: the PyTorch program,
motivation, summary, parameter count, the training-loss curve to step 2,000 and zero-shot
benchmark results). A program defines fla's layer interface, `class DeltaNet(nn.Module)` with
`__init__(hidden_size, num_heads, ...)` and `forward(hidden_states, ...) -> (output, attn, cache)`,
and was trained under GPU autocast. `convert` makes it an archlab candidate file, changing only
what the contract requires and logging each change:

- an adapter `class Mixer` that builds the layer at archlab's width and returns its output;
- step counters kept in buffers and advanced in `forward` (a mixer that carries state between
  calls fails archlab's causality twins: `non_causal`) read archlab's training progress instead, scaled to
  ASI-Arch's 2,000 steps, so an annealed gate follows the same schedule over a shorter run;
- `.to(torch.bfloat16)` casts are dropped: under autocast they saved memory, in archlab's fp32
  training they make a matmul mix dtypes and fail.

Nothing else is rewritten: a program that still breaks a rule fails its check with the reason.
"""

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from archlab import syntax
from archlab.errors import UserError
from archlab.text import loads

ASI_ARCH_STEPS = 2000  # ASI-Arch's training length: its programs' schedules count in these steps
LAYER_CLASS = "DeltaNet"
BF16_CAST = re.compile(r"\s*\.\s*to\s*\(\s*torch\s*\.\s*bfloat16\s*\)\Z")
ADAPTER = '''

# --- added by `archlab import asi-arch`: ASI-Arch's layer behind archlab's Mixer contract -----------
class Mixer(nn.Module):
    """(batch, time, d_model) -> the same, through ASI-Arch's `{layer}` layer at archlab's width."""

    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.layer = {layer}(hidden_size=d_model, num_heads=n_heads)

    def forward(self, x):
        out = self.layer(x)
        return out[0] if isinstance(out, tuple) else out
'''
STEP_HELPER = f'''
from archlab.candidate import training_progress  # added by `archlab import asi-arch`


def _asi_step(counter):
    """ASI-Arch's step counter, recomputed from archlab's training progress (its {ASI_ARCH_STEPS} steps
    map onto the whole archlab run), with the counter's shape, dtype and device."""
    return torch.full_like(counter, training_progress() * {ASI_ARCH_STEPS})
'''


@dataclass
class Conversion:
    code: str
    changes: list[str] = field(default_factory=list)  # what was changed and why, one line each
    problem: str | None = None  # why the program cannot become a candidate (code is then the original)


def convert(program: str) -> Conversion:
    """ASI-Arch program -> archlab candidate file, with a log of every change."""
    try:
        tree = syntax.parse(program, "program.py")
    except (SyntaxError, ValueError, RecursionError) as e:
        return Conversion(program, problem=f"the program does not parse: {e}")
    layer = _layer_class(tree)
    if layer is None:
        return Conversion(program, problem="no nn.Module class with forward(self, hidden_states, ...) to adapt")
    if any(isinstance(n, ast.ClassDef) and n.name == "Mixer" for n in tree.body):
        return Conversion(program, problem="the program already defines a class named Mixer")
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) as offsets into the source
    offsets = _line_offsets(program)

    def span(node: ast.AST) -> tuple[int, int]:
        return offsets[node.lineno - 1] + node.col_offset, offsets[node.end_lineno - 1] + node.end_col_offset

    changes = []
    counters = _step_counters(tree)
    if counters:
        for node in ast.walk(tree):
            if isinstance(node, ast.AugAssign) and _self_attr(node.target) in counters:
                edits.append((*span(node), "pass"))  # no comment: a `; more` after it on the line must still run
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _self_attr(node) in counters:
                edits.append((*span(node), f"_asi_step({ast.get_source_segment(program, node)})"))
        names = ", ".join(f"self.{c}" for c in sorted(counters))
        changes.append(
            f"step counter {names}: advanced in forward() (a mixer that keeps state between calls "
            f"fails archlab's causality twins); now read from archlab's training progress x {ASI_ARCH_STEPS} steps"
        )
    casts = [n for n in ast.walk(tree) if _is_bf16_cast(n)]
    for node in casts:  # `(a + b).to(torch.bfloat16)` -> `(a + b)`: the call's own text less its last `.to(...)`
        edits.append((*span(node), BF16_CAST.sub("", ast.get_source_segment(program, node))))
    if casts:
        changes.append(
            f"{len(casts)} .to(torch.bfloat16) cast(s) removed: under ASI-Arch's GPU autocast they saved "
            "memory; in archlab's fp32 training they make a matmul mix dtypes"
        )
    code = _apply(program, edits)
    if counters:
        code = _insert_after_imports(code, STEP_HELPER)
    code = code.rstrip() + "\n" + ADAPTER.format(layer=layer)
    changes.append(
        f"adapter class Mixer added: builds {layer}(hidden_size=d_model, num_heads=n_heads) and returns its "
        "output (archlab's contract: Mixer(d_model, n_heads), forward(x) -> y)"
    )
    return Conversion(code, changes)


def _layer_class(tree: ast.Module) -> str | None:
    """The layer to adapt: DeltaNet when defined, else the last class whose forward takes hidden_states."""
    candidates = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if (
                isinstance(item, ast.FunctionDef)
                and item.name == "forward"
                and len(item.args.args) > 1
                and item.args.args[1].arg == "hidden_states"
            ):
                candidates.append(node.name)
    if LAYER_CLASS in candidates:
        return LAYER_CLASS
    return candidates[-1] if candidates else None


def _self_attr(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _step_counters(tree: ast.Module) -> set[str]:
    """Buffers (register_buffer) that the code advances by a constant: training-step counters."""
    buffers = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "register_buffer"
        and n.args
        and isinstance(n.args[0], ast.Constant)
        and isinstance(n.args[0].value, str)
    }
    return {
        _self_attr(n.target)
        for n in ast.walk(tree)
        if isinstance(n, ast.AugAssign)
        and isinstance(n.op, ast.Add)
        and _self_attr(n.target) in buffers
        and isinstance(n.value, ast.Constant)
    }


def _is_bf16_cast(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "to"
        and len(node.args) == 1
        and not node.keywords
        and ast.unparse(node.args[0]) == "torch.bfloat16"
    )


def _line_offsets(source: str) -> list[int]:
    # ast's col_offset counts UTF-8 bytes; work on bytes so non-ASCII comments keep offsets right
    offsets, total = [], 0
    for line in source.encode("utf-8").splitlines(keepends=True):
        offsets.append(total)
        total += len(line)
    return offsets + [total]


def _apply(source: str, edits: list[tuple[int, int, str]]) -> str:
    data = source.encode("utf-8")
    kept = []
    for start, end, text in sorted(edits, reverse=True):
        if kept and end > kept[-1][0]:  # nested in an edit already made (a cast inside a counter read): keep the outer
            continue
        kept.append((start, end, text))
        data = data[:start] + text.encode("utf-8") + data[end:]
    return data.decode("utf-8")


def _insert_after_imports(source: str, text: str) -> str:
    """Insert `text` after the module's leading imports (after `from __future__` at least)."""
    tree = syntax.parse(source, "program.py")
    last = 0
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            last = node.end_lineno
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # the docstring
            break
    lines = source.splitlines(keepends=True)
    return "".join(lines[:last]) + text + "".join(lines[last:])


# -- reading the published files ----------------------------------------------------------------------
@dataclass
class Record:
    """One node of ASI-Arch's tree, with its design when it is one of the published programs."""

    index: int
    name: str
    parent: int | None
    score: float | None
    display_name: str | None = None
    design: dict | None = None  # the 106.json entry


MAX_INDEX = 2**31  # ASI-Arch's run reached 1,772
TEXT_FIELDS = ("name", "motivation", "summary")  # a design's fields archlab stores as text


def read(tree_path: Path, programs_path: Path | None) -> list[Record]:
    """The tree's records (parents first), each joined with its published design; UserError on a file that is not ASI-Arch's."""
    tree = _load_json(tree_path)
    rows = tree.get("results") if isinstance(tree, dict) else None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{tree_path}: not ASI-Arch's tree.json (expected an object with a 'results' list)")
    records: dict[int, Record] = {}
    for i, row in enumerate(rows):
        try:
            index, name, parent = int(row["index"]), str(row["name"]), row.get("parent")
            score = row.get("score")
            record = Record(
                index,
                name,
                None if parent is None else int(parent),
                float(score) if isinstance(score, (int, float)) else None,
                row.get("name_new"),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{tree_path}: result {i} lacks an integer index, a name or a parent") from None
        if index in records:
            raise UserError(f"{tree_path}: index {index} appears twice")
        if not 0 <= index < MAX_INDEX:  # a node's id in archlab (a SQLite integer once overflowed)
            raise UserError(f"{tree_path}: result {i} has index {index}; indices run from 0 to {MAX_INDEX - 1}")
        records[index] = record
    roots = [r for r in records.values() if r.parent is None]
    if len(roots) != 1:
        raise UserError(f"{tree_path}: expected one root (a node without parent), found {len(roots)}")
    if 0 in records and records[0] is not roots[0]:  # the root becomes node 0, the others keep their index
        raise UserError(f"{tree_path}: index 0 belongs to a node with a parent; only the root may have it")
    missing = [r.index for r in records.values() if r.parent is not None and r.parent not in records]
    if missing:
        raise UserError(f"{tree_path}: node {missing[0]} names a parent that is not in the tree")
    if programs_path is not None:
        programs = _load_json(programs_path)
        if not isinstance(programs, list):
            raise UserError(f"{programs_path}: not ASI-Arch's 106.json (expected a list of designs)")
        for i, design in enumerate(programs):
            if not isinstance(design, dict) or not isinstance(design.get("program"), str):
                raise UserError(f"{programs_path}: design {i} has no program")
            odd = [k for k in TEXT_FIELDS if design.get(k) is not None and not isinstance(design[k], str)]
            if odd:  # stored as the node's proposal and analysis (a 400-digit summary overflowed SQLite)
                raise UserError(f"{programs_path}: design {i}'s {odd[0]} is not text")
            record = records.get(design.get("index")) if isinstance(design.get("index"), int) else None
            if record is None or record.name != design.get("name"):
                raise UserError(
                    f"{programs_path}: design {i} ({design.get('name')!r}) is not a node of {tree_path.name}"
                )
            record.design = design
    return _parents_first(records, roots[0])


def _load_json(path: Path):
    try:
        return loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e})") from None


def _parents_first(records: dict[int, Record], root: Record) -> list[Record]:
    children: dict[int, list[Record]] = {}
    for r in records.values():
        if r.parent is not None:
            children.setdefault(r.parent, []).append(r)
    order, stack = [], [root]
    while stack:
        record = stack.pop()
        order.append(record)
        stack.extend(sorted(children.get(record.index, []), key=lambda r: -r.index))
    if len(order) != len(records):
        raise UserError("the tree has a cycle: some nodes are not reachable from the root")
    return order


def measurements(design: dict) -> tuple[dict, list[dict]]:
    """ASI-Arch's figures for one design: metrics (final training loss, benchmark accuracies and their
    average, score, parameters) and its training-loss curve in archlab's curve format."""
    result = design.get("result") or {}
    metrics: dict = {}
    curve: list[list[float]] = []
    steps, losses = _csv_row(result.get("train"))
    for step, loss in zip(steps, losses):
        if _number(step) and _number(loss):
            curve.append([int(float(step)), float(loss)])
    if curve:
        metrics["train_loss"] = curve[-1][1]
        metrics["train_steps"] = curve[-1][0]
    names, values = _csv_row(result.get("test"))
    bench = {n: float(v) for n, v in zip(names, values) if n and _number(v)}
    if "average" in bench:
        metrics["bench_average"] = bench.pop("average")
    metrics.update({f"bench_{n}": v for n, v in bench.items()})
    if isinstance(design.get("score"), (int, float)):
        metrics["asi_score"] = float(design["score"])
    if isinstance(design.get("parameters"), str):
        metrics["asi_parameters"] = design["parameters"]
    curves = (
        [
            {
                "seed": 0,
                "steps": curve[-1][0],
                "train": curve,
                "val": [],
                "val_windows": 0,
                "val_cost_s": 0.0,
                "val_note": "ASI-Arch's published training loss (its data, ~400M parameters, 2,000 steps)",
            }
        ]
        if curve
        else []
    )
    return metrics, curves


def _csv_row(text) -> tuple[list[str], list[str]]:
    """The header (without its first, empty cell) and the first data row (without the name) of a tiny CSV."""
    if not isinstance(text, str):
        return [], []
    lines = [line.split(",") for line in text.strip().splitlines()]
    if len(lines) < 2:
        return [], []
    return lines[0][1:], lines[1][1:]


def _number(text: str) -> bool:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return False
    return value == value and value not in (float("inf"), float("-inf"))
