"""Static checks on a candidate's source: the first gate, before any of its code runs.

Pure `ast` work with no torch import, so the sandbox's child process can reject a forbidden
file in milliseconds, and the agents can run the same check in the driver process. The
rules are an allowlist where that is possible (imports, dunder names) and a denylist of
known ways out of the tensor world otherwise. They are a diagnostic that gives an honest
mistake a fast, readable reason, not the boundary: the operating system (launch.py) contains
the candidate, and the scorer (scorer.py) runs none of its code.

What is rejected, with reason "forbidden" unless said otherwise:
- imports outside ALLOWED_IMPORTS (and archlab.candidate, the harness's read-only values, bound
  under a name of its own), relative and star imports, importing forbidden names. Imports in the
  body of `if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:` (annotations only: that body never
  runs) may name any module, provided the name TYPE_CHECKING (or typing) is bound by nothing but
  its import from typing and the body holds nothing but imports and `pass`: a block with any
  other statement in it is checked as any code is, and so is every `else:`;
- builtins that reach code, files or the interpreter (eval, exec, open, vars, __import__, ...),
  except where the name is a parameter of an enclosing function (`def sparsemax(input)`: there
  it is the argument); `getattr` except called with a constant, harmless attribute name, and
  `hasattr` except called with a constant name (any name: it returns a bool, never the object);
- dunder names, attributes and strings (`__class__`, `__globals__`, "__builtins__", ...),
  except `__init__`/`__name__`/`__doc__`; defining dunder methods other than `__init__`;
- private attributes (`x._foo`) except on `self`; frame/graph walking (`f_back`, `grad_fn`,
  ...); module escapes (`os`, `sys`, `torch.load`, `torch.ops`, `torch.library`, `torch.jit`,
  global hooks, global torch settings such as `set_num_threads`);
- assignment or deletion of attributes/items of imported modules or their aliases, of
  `type(...)` results and of other call results (monkeypatching), except items of call results
  on its own objects (`self.proj.bias.view(h, 4)[:, 3] = 2.0` writes into its own tensor);
- assignment of dunder names other than a module's `__all__`;
- subclasses of Tensor/Parameter/torch function modes and metaclasses.
"""

import ast
import re

from archlab import syntax
from archlab.sandbox.errors import CandidateError

MAX_SOURCE_BYTES = 200_000
ALLOWED_IMPORTS = {"torch", "math", "einops", "typing", "functools", "fla", "__future__"}
CANDIDATE_API = "archlab.candidate"  # the one part of archlab a candidate may import (archlab/candidate.py)
# Builtins that reach the file system, the interpreter or other code.
FORBIDDEN_NAMES = {
    "__import__",
    "eval",
    "exec",
    "compile",
    "open",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
    "setattr",
    "delattr",
    "memoryview",
    "help",
    "exit",
    "quit",
    "copyright",
    "credits",
    "license",
    "dir",
}
ALLOWED_DUNDER_NAMES = {"__name__", "__doc__", "__debug__", "__all__"}
ALLOWED_DUNDER_ATTRS = {"__init__", "__name__", "__doc__"}
ALLOWED_DUNDER_DEFS = {"__init__"}
# Attribute names that lead out of the tensor world, anywhere they appear.
FORBIDDEN_ATTRS = {
    # modules torch and others re-export
    "os",
    "sys",
    "subprocess",
    "builtins",
    "importlib",
    "ctypes",
    "socket",
    "shutil",
    "pathlib",
    "io",
    "multiprocessing",
    "threading",
    "signal",
    "pickle",
    "marshal",
    "inspect",
    "gc",
    "types",
    "tempfile",
    # loading code or files, registering kernels, hubs (torch.compile is allowed: DESIGN.md)
    "load",
    "save",
    "load_library",
    "cpp_extension",
    "from_file",
    "hub",
    "library",
    "classes",
    "jit",
    "distributed",
    "overrides",
    "ops_registry",
    "get_type_hints",
    "ForwardRef",
    "singledispatch",
    "singledispatchmethod",
    "format",
    "format_map",
    "mro",
    "untyped_storage",
    # frames, code objects and the autograd graph (ways to reach the harness's locals and tensors)
    "f_back",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_code",
    "f_trace",
    "tb_frame",
    "tb_next",
    "gi_frame",
    "gi_code",
    "cr_frame",
    "cr_code",
    "ag_frame",
    "ag_code",
    "co_code",
    "co_consts",
    "func_globals",
    "grad_fn",
    "next_functions",
    "variable",
    "metadata",
    # global state of torch that the harness relies on
    "set_num_threads",
    "set_num_interop_threads",
    "set_default_dtype",
    "set_default_device",
    "set_default_tensor_type",
    "set_flush_denormal",
    "use_deterministic_algorithms",
    "set_grad_enabled",
    "set_anomaly_enabled",
}
FORBIDDEN_ATTR_PREFIXES = ("register_module_", "register_global_")
MODULE_ONLY_ATTRS = {"ops": {"fla"}}  # `x.ops` only below these imported roots (fla.ops.* kernels)
UNSAFE_ROOTS = {"type", "object", "super", "getattr"}  # their attributes are never assignable
FORBIDDEN_BASES = {"Tensor", "Parameter", "Buffer", "ModuleType", "type", "TorchFunctionMode", "TorchDispatchMode"}
DUNDER_IN_STRING = re.compile(r"__\w+__")


def static_check(source: str) -> None:
    """Raise CandidateError('syntax' | 'forbidden', detail) when the source breaks a rule."""
    if len(source.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        raise CandidateError("forbidden", f"the file is larger than {MAX_SOURCE_BYTES // 1000} kB")
    try:
        tree = syntax.parse(source, "candidate.py")
    except SyntaxError as e:
        raise CandidateError("syntax", f"line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        raise CandidateError("syntax", f"the file cannot be parsed: {type(e).__name__}: {e}"[:300]) from None
    try:
        _Checker(tree).run()
    except RecursionError:
        raise CandidateError("forbidden", "the file is nested too deeply to check") from None


class _Checker:
    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.nodes = list(ast.walk(tree))
        self.imported: set[str] = set()  # names bound by import statements
        self.roots: dict[str, str] = {}  # alias -> imported top-level module it came from
        self.calls = {id(n.func): n for n in self.nodes if isinstance(n, ast.Call)}  # callee node -> the call
        self.annotation_only = _type_checking_imports(tree, self.nodes)  # ids of imports that never run
        self.shadowed = _parameter_uses(self.nodes, FORBIDDEN_NAMES)  # ids of Names that are a function's own argument
        self.hasattr_names = {  # hasattr's constant names: any is fine, hasattr returns a bool
            id(n.args[1])
            for n in self.nodes
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id == "hasattr"
            and len(n.args) == 2
            and isinstance(n.args[1], ast.Constant)
        }
        self.docstrings = {  # docstrings are text for people, never evaluated
            id(n.body[0].value)
            for n in self.nodes
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }

    def run(self) -> None:
        for node in self.nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                self.check_import(node)
        self.find_aliases()
        for node in self.nodes:
            self.check_node(node)

    # -- imports --------------------------------------------------------------------------------
    def check_import(self, node: ast.Import | ast.ImportFrom) -> None:
        any_module = id(node) in self.annotation_only  # under `if TYPE_CHECKING:`: never imported
        if isinstance(node, ast.ImportFrom):
            if node.level:
                _forbid(node, "relative imports")
            module = node.module or ""
            if module == "archlab" and not any_module:
                for alias in node.names:
                    if alias.name != "candidate":
                        _forbid(node, f"`from archlab import {alias.name}` (only archlab.candidate may be imported)")
            elif not any_module:
                self.check_module(node, module)
            for alias in node.names:
                if alias.name == "*":
                    _forbid(node, f"`from {module} import *`")
                self.check_attr_name(node, alias.name, module.split(".")[0])
                bound = alias.asname or alias.name
                self.imported.add(bound)
                self.roots[bound] = module.split(".")[0]
        else:
            for alias in node.names:
                if alias.name == CANDIDATE_API and not alias.asname and not any_module:
                    _forbid(
                        node,
                        f"`import {CANDIDATE_API}` binds the name archlab: write "
                        f"`from {CANDIDATE_API} import training_progress`",
                    )
                if not any_module:
                    self.check_module(node, alias.name)
                bound = (alias.asname or alias.name).split(".")[0]
                self.imported.add(bound)
                self.roots[bound] = alias.name.split(".")[0]

    def check_module(self, node: ast.AST, name: str) -> None:
        if name == CANDIDATE_API:
            return
        parts = name.split(".")
        if parts[0] not in ALLOWED_IMPORTS:
            _forbid(node, f"import of {name!r} (allowed: {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))})")
        for part in parts[1:]:
            self.check_attr_name(node, part, parts[0])

    def find_aliases(self) -> None:
        """Names bound to something reached from an imported module (`t = torch`, `T = torch.Tensor`)."""
        changed = True
        while changed:
            changed = False
            for node in self.nodes:
                pairs: list[tuple[ast.AST, ast.AST]] = []
                if isinstance(node, ast.Assign):
                    pairs = [(t, node.value) for t in node.targets]
                elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
                    pairs = [(node.target, node.value)]
                for target, value in pairs:
                    root = _root_name(value) if _is_reference(value) else None
                    if root in self.roots or root in UNSAFE_ROOTS:
                        for name in _bound_names(target):
                            if name not in self.roots:
                                self.roots[name] = self.roots.get(root, root)
                                changed = True

    # -- everything else ------------------------------------------------------------------------
    def check_node(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if node.id in FORBIDDEN_NAMES and id(node) not in self.shadowed:
                _forbid(node, f"use of {node.id!r}")
            if _is_dunder(node.id) and node.id not in ALLOWED_DUNDER_NAMES:
                _forbid(node, f"the name {node.id!r} (dunder names are how sandbox escapes start)")
            if node.id in ("getattr", "hasattr") and not self.is_safe_getattr_call(node):
                _forbid(node, f"{node.id} without a constant attribute name (write the attribute out)")
        elif isinstance(node, ast.Attribute):
            self.check_attr_name(node, node.attr, self.roots.get(_root_name(node)), node.value)
            if isinstance(node.ctx, ast.Store | ast.Del):
                self.check_target(node)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del):
            self.check_target(node)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in self.docstrings | self.hasattr_names
            and any(m not in ALLOWED_DUNDER_ATTRS | {"__main__"} for m in DUNDER_IN_STRING.findall(node.value))
        ):
            _forbid(node, f"the string {node.value[:60]!r} (dunder names are how sandbox escapes start)")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if _is_dunder(node.name) and node.name not in ALLOWED_DUNDER_DEFS:
                _forbid(node, f"defining {node.name!r} (only __init__ may be a dunder method)")
        elif isinstance(node, ast.ClassDef):
            for kw in node.keywords:
                _forbid(node, f"class keyword {kw.arg!r} (metaclasses are not allowed)")
            for base in node.bases:
                last = ast.unparse(base).split(".")[-1]
                if last in FORBIDDEN_BASES or last.endswith("Mode"):
                    _forbid(node, f"subclassing {ast.unparse(base)} (a mixer works with plain tensors and modules)")
        elif isinstance(node, ast.Global | ast.Nonlocal):
            for name in node.names:
                if name in self.imported:
                    _forbid(node, f"rebinding the imported name {name!r}")
                if name in FORBIDDEN_NAMES:  # would make a shadowed builtin's name reach the module's (and the builtin)
                    _forbid(node, f"declaring {name!r} global or nonlocal")
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in _bound_names(target):
                    if _is_dunder(name) and not (name == "__all__" and node in self.tree.body):
                        _forbid(node, f"assigning the dunder name {name!r}")

    def check_attr_name(self, node: ast.AST, attr: str, root_module: str | None, value: ast.AST | None = None) -> None:
        if _is_dunder(attr):
            if attr not in ALLOWED_DUNDER_ATTRS:
                _forbid(node, f"access to {attr!r} (dunder walking)")
            return
        if attr.startswith("_") and not (isinstance(value, ast.Name) and value.id in ("self", "cls")):
            _forbid(node, f"access to the private attribute {attr!r} (only self._x is allowed)")
        if attr in FORBIDDEN_ATTRS or attr.startswith(FORBIDDEN_ATTR_PREFIXES):
            hint = " (use an f-string)" if attr in ("format", "format_map") else ""
            _forbid(
                node,
                f"access to {attr!r}"
                + (f" in {ast.unparse(node)[:80]!r}" if isinstance(node, ast.Attribute) else "")
                + hint,
            )
        if attr in MODULE_ONLY_ATTRS and root_module not in MODULE_ONLY_ATTRS[attr]:
            _forbid(node, f"access to {attr!r} outside {', '.join(sorted(MODULE_ONLY_ATTRS[attr]))}")

    def check_target(self, node: ast.Attribute | ast.Subscript) -> None:
        root = _root_name(node)
        own_item = isinstance(
            node, ast.Subscript
        )  # items of its own objects, through views too (`bias.view(h, 4)[:, 3] = 2.0`)
        if root is None or root in self.roots or root in UNSAFE_ROOTS or (_has_call(node) and not own_item):
            what = (
                "imported modules are read-only"
                if root in self.roots
                else "only attributes of your own objects may be set"
            )
            _forbid(node, f"assignment to {ast.unparse(node)!r} ({what})")

    def is_safe_getattr_call(self, name: ast.Name) -> bool:
        node = self.calls.get(id(name))
        if node is None:  # getattr used as a value (passed to map, reduce, partial ...)
            return False
        if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            if name.id == "hasattr":
                return len(node.args) == 2 and not node.keywords
            self.check_attr_name(node, node.args[1].value, self.roots.get(_root_name(node.args[0])), node.args[0])
            return not node.keywords
        return False


def _type_checking_imports(tree: ast.Module, nodes: list[ast.AST]) -> set[int]:
    """The import statements in the body of `if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:` blocks
    that hold nothing but imports and `pass` (ids). None when the file binds TYPE_CHECKING (or
    typing) any other way than importing it from typing: then that test could be true."""
    bindings: dict[str, list[ast.AST]] = {}
    for node in nodes:
        names: list[str] = []
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names = [node.id]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names = [node.name]
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            names = [node.name]
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names = [node.rest]
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names = list(node.names)
        elif isinstance(node, ast.alias):
            names = [(node.asname or node.name).split(".")[0]]
        elif type(node).__name__ in ("TypeVar", "ParamSpec", "TypeVarTuple"):  # 3.12 type parameters
            names = [getattr(node, "name", "")]
        for name in names:
            bindings.setdefault(name, []).append(node)
    imports = {id(a): n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}

    def only_from_typing(name: str, module_itself: bool) -> bool:
        found = bindings.get(name, [])
        for alias in found:
            stmt = imports.get(id(alias))
            if stmt is None or alias.asname:
                return False
            if module_itself and not (isinstance(stmt, ast.Import) and alias.name == "typing"):
                return False
            if not module_itself and not (
                isinstance(stmt, ast.ImportFrom) and stmt.module == "typing" and not stmt.level
            ):
                return False
        return bool(found)

    def is_test(test: ast.expr) -> bool:
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
            return only_from_typing("TYPE_CHECKING", False)
        return (
            isinstance(test, ast.Attribute)
            and test.attr == "TYPE_CHECKING"
            and isinstance(test.value, ast.Name)
            and test.value.id == "typing"
            and only_from_typing("typing", True)
        )

    out: set[int] = set()
    for node in nodes:
        if (
            isinstance(node, ast.If)
            and is_test(node.test)
            and all(isinstance(s, ast.Import | ast.ImportFrom | ast.Pass) for s in node.body)
        ):
            out.update(id(s) for s in node.body if not isinstance(s, ast.Pass))
    return out


def _parameter_uses(nodes: list[ast.AST], names: set[str]) -> set[int]:
    """The Name nodes (ids) that read a parameter of an enclosing function or lambda whose name is
    in `names`: inside `def f(input)`, `input` is the argument, not the builtin."""
    out: set[int] = set()
    for fn in nodes:
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = fn.args
            params = {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if p} & names
            if params:
                body = fn.body if isinstance(fn.body, list) else [fn.body]
                out.update(id(n) for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name) and n.id in params)
    return out


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call | ast.Starred):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_reference(node: ast.AST) -> bool:
    """`torch`, `torch.Tensor`, `type(x).y`: an expression naming an existing object, not making a new one."""
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id in UNSAFE_ROOTS
    return isinstance(node, ast.Name)


def _has_call(node: ast.AST) -> bool:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        if isinstance(node, ast.Call):
            return True
        node = node.value
    return False


def _bound_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [n for t in target.elts for n in _bound_names(t)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def _forbid(node: ast.AST, what: str) -> None:
    raise CandidateError("forbidden", f"line {getattr(node, 'lineno', '?')}: {what}")
