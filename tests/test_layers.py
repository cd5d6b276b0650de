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
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("archlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("archlab") and not node.level:
            found |= {f"{node.module}.{a.name}" if node.module == "archlab" else node.module for a in node.names}
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
    assert _layer(_part("archlab.search.driver")) > _layer("tree")  # the store importing the search is caught
