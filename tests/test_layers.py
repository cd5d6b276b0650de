"""The package layering: each part of archlab imports only parts below it, so the data flow reads
from the layout (config -> select -> propose -> check -> evaluate -> analyse -> store) and no two
packages import each other. Lazy imports inside functions count too."""

import ast
from pathlib import Path

import archlab

# Bottom to top. A module may import its own package and anything in a lower layer; never a
# package of its own layer or one above.
LAYERS = [
    {"errors", "text", "syntax", "candidate", "chaos", "agreement", "templates"},  # leaves
    {"sandbox"},  # evaluates code it is given; knows nothing of runs
    {"config"},  # a run's settings (tiers come from the sandbox)
    {"tree"},  # storage: the SQLite store, the git lineage, run creation
    {"knowledge"},  # curated and learned entries, retrieval
    {"agents"},  # the roles, their prompts, the LLM client, the offline brain
    {"search"},  # the run's driver and pipeline, sampling, promotion, fitness
    {"commands"},  # replay, fork, status, doctor: what the CLI does to a stored run
    {"interop", "export"},  # other systems' records in, our runs out
    {"web"},  # the review UI and the HTML report
    {"cli"},
    {"__main__"},  # `python -m archlab`: the CLI
]
ROOT = Path(archlab.__file__).parent


def _part(name: str) -> str:
    """`archlab.search.driver` -> `search`; `archlab` itself -> ''."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(part: str) -> int:
    for level, parts in enumerate(LAYERS):
        if part in parts:
            return level
    raise AssertionError(f"archlab/{part} is in no layer of tests/test_layers.py: place it")


def _imports(path: Path) -> set[str]:
    return _imports_of(path, path.read_text(encoding="utf-8"))


def _imports_of(path: Path, source: str) -> set[str]:
    """The archlab modules `source` (the text of `path`) imports, relative imports resolved against its package."""
    package = ["archlab", *path.relative_to(ROOT).parts[:-1]] if path.is_relative_to(ROOT) else ["archlab"]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("archlab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..search import x
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "archlab":
                found |= {f"archlab.{a.name}" for a in node.names}
            elif base.startswith("archlab."):
                found.add(base)
    return found


def test_no_part_imports_one_above_it_or_beside_it():
    wrong = []
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        rel = path.relative_to(ROOT)
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        level = _layer(part)
        for name in _imports(path):
            target = _part(name)
            if target in ("", part):
                continue
            if _layer(target) >= level:
                wrong.append(f"archlab/{rel} imports {name} (layer {_layer(target)} >= its own {level})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from archlab.search.driver import Run\n")
    assert _imports(bad) == {"archlab.search.driver"}
    relative = ROOT / "tree" / "_probe.py"  # a relative import is resolved, not skipped (never written to disk)
    assert _imports_of(relative, "from ..search import driver\nfrom . import store\n") == {
        "archlab.search",
        "archlab.tree",
    }
    assert _layer(_part("archlab.search.driver")) > _layer("tree")  # the store importing the search is caught


def _readme_layout() -> dict[str, str]:
    """The README's layout block: each top-level entry of archlab/ with the text that describes it."""
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            current = line.split()[0].rstrip(",/")
            entries[current] = ""
        elif not line.startswith(" "):
            current = None
        if current:
            entries[current] += line + "\n"
    return entries


def test_the_readme_layout_names_every_module_in_layer_order():
    entries = _readme_layout()
    text = "".join(entries.values())
    missing = [f"archlab/{p.name}" for p in ROOT.glob("*.py") if p.name != "__init__.py" and p.name not in text]
    for package in (p for p in ROOT.iterdir() if (p / "__init__.py").is_file()):
        if package.name not in entries:
            missing.append(f"archlab/{package.name}/")
            continue
        missing += [
            f"archlab/{package.name}/{m.name}"
            for m in package.glob("*.py")
            if m.name != "__init__.py" and m.name not in entries[package.name]
        ]
    assert not missing, f"README.md's layout leaves out {missing}"
    order = [_layer(name.removesuffix(".py")) for name in entries]
    assert order == sorted(order), f"README.md's layout is not in layer order: {list(entries)}"
