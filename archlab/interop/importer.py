"""Write another system's search records as an archlab run (ASI-Arch's first: `archlab import asi-arch`).

The run is for review and as a starting point, not for `archlab run` to continue (its nodes were
scored by another system, in another way): every node has status `imported`; a node with
published code is a commit whose parent commit is its parent's (so `show` diffs it), and the other
system's figures are evaluations of kind `external` at tier `asi-arch`, never mixed with
archlab's own. `replay` evaluates an imported node in archlab's sandbox and `fork` starts a new run
from one. The conversion of each program is kept as a trace (role `import`): what was changed and
why, and the static check's verdict on the result.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.interop import asi_arch
from archlab.sandbox import runner
from archlab.sandbox.errors import CandidateError
from archlab.sandbox.static import static_check
from archlab.templates import render_root
from archlab.tree.create import create_run
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store

STATUS = "imported"
EXTERNAL_TIER = "asi-arch"  # the tier name of the other system's figures (not one of archlab's tiers)
IMPORTED_META = "imported_from"


def import_asi_arch(
    tree_path: Path,
    programs_path: Path | None,
    run_dir: Path,
    config: RunConfig,
    on_node: Callable[[int, int], None] = lambda done, total: None,
) -> dict:
    """Create run_dir from ASI-Arch's tree.json (and 106.json); returns counts for the CLI to print."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} exists and is not empty; import into a new directory")
    records = asi_arch.read(Path(tree_path), Path(programs_path) if programs_path else None)
    created = not run_dir.exists()
    try:
        return _write(records, run_dir, config, tree_path, programs_path, on_node)
    except BaseException:  # a half-written import is removed: the next try starts clean
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _write(
    records: list[asi_arch.Record],
    run_dir: Path,
    config: RunConfig,
    tree_path,
    programs_path,
    on_node: Callable[[int, int], None],
) -> dict:
    create_run(run_dir, config)
    store, lineage = Store(run_dir), Lineage(run_dir / "repo")
    root_index = records[0].index
    ids = {r.index: 0 if r.index == root_index else r.index for r in records}  # node N is ASI-Arch's index N
    shas: dict[int, str] = {}  # node -> the commit its children descend from
    counts = {"nodes": 0, "designs": 0, "converted": 0, "rejected": 0}
    now = time.time()
    for done, record in enumerate(records):
        _import_node(store, lineage, record, ids[record.index], ids.get(record.parent), shas, counts, now)
        on_node(done + 1, len(records))
    source = {
        "system": "ASI-Arch",
        "tree": str(Path(tree_path).resolve()),
        "programs": str(Path(programs_path).resolve()) if programs_path else None,
        "imported": now,
        **counts,
    }
    store.set_meta(IMPORTED_META, json.dumps(source))
    store.event(
        "import",
        f"imported {counts['nodes']} nodes of ASI-Arch's tree ({counts['designs']} with code) from {source['tree']}",
    )
    return {"run": str(run_dir), **counts}


def _import_node(
    store: Store,
    lineage: Lineage,
    record: asi_arch.Record,
    node_id: int,
    parent_id: int | None,
    shas: dict[int, str],
    counts: dict[str, int],
    now: float,
) -> None:
    """One node: its row, its commit and code (when published), its conversion trace and external figures."""
    fields = _node_fields(record, node_id, parent_id, now)
    code, conversion = _code(record)
    if code is not None:
        message = f"node {node_id}: ASI-Arch {record.name} (index {record.index})\n\n{fields['motivation']}"
        shas[node_id] = fields["commit_sha"] = lineage.commit(node_id, code, message, shas.get(parent_id))
    elif parent_id is not None:  # no code: its children's commits descend from its nearest ancestor with code
        shas[node_id] = shas[parent_id]
    if conversion is not None:
        counts["designs"] += 1
        verdict = _static_verdict(conversion)
        counts["converted" if verdict is None else "rejected"] += 1
        if verdict is not None:
            fields["reason"], fields["detail"] = verdict
    store.add_node(**fields)
    if code is not None:
        store.save_code(node_id, code)
    if conversion is not None:
        decision = {
            "changes": conversion.changes,
            "problem": conversion.problem,
            "static_check": fields.get("reason") or "passed",
            "detail": fields.get("detail"),
        }
        response = "\n".join(conversion.changes) or conversion.problem
        store.add_trace(
            node_id, "import", "convert", model="archlab import asi-arch", response=response, decision=decision
        )
    if record.design is not None:
        metrics, curves = asi_arch.measurements(record.design)
        env = {"source": "ASI-Arch data/106.json", "external": True}
        result = runner.Result(ok=True, metrics=metrics, curves=curves, env=env)
        store.add_evaluation(node_id, EXTERNAL_TIER, 0, result, None, kind="external")
    counts["nodes"] += 1


def _node_fields(record: asi_arch.Record, node_id: int, parent_id: int | None, now: float) -> dict:
    design = record.design or {}
    label = f"{record.name}" + (f" ({record.display_name})" if record.display_name else "")
    if node_id == 0:
        motivation = (
            f"ASI-Arch's root, {label}. ASI-Arch did not publish its code: archlab's DeltaNet "
            "template stands in for it here (replays and forks of node 0 use that template)."
        )
    else:
        motivation = f"{label}: {design.get('motivation') or 'ASI-Arch published only its name and score.'}"
    metrics = {"asi_index": record.index, "asi_name": record.name}
    if record.score is not None:
        metrics["asi_score"] = record.score
    if record.design is not None:  # its published figures beside the score, so `show` and the web UI list them
        metrics.update(asi_arch.measurements(record.design)[0])
    return dict(
        id=node_id,
        parent_id=parent_id,
        status=STATUS,
        operator=record.name,
        motivation=motivation,
        analysis=design.get("summary"),
        metrics=metrics,
        created=now,
        finished=now,
    )


def _code(record: asi_arch.Record) -> tuple[str | None, asi_arch.Conversion | None]:
    """The node's candidate file (None: no code published) and the conversion that made it."""
    if record.parent is None:
        return render_root("deltanet"), None
    if record.design is None:
        return None, None
    conversion = asi_arch.convert(record.design["program"])
    return conversion.code, conversion


def _static_verdict(conversion: asi_arch.Conversion) -> tuple[str, str] | None:
    """(reason, detail) when the converted file breaks a static rule or could not be converted."""
    if conversion.problem:
        return "contract", conversion.problem
    try:
        static_check(conversion.code)
    except CandidateError as e:
        return e.reason, e.detail
    return None
