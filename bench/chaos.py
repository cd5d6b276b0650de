"""Kill a real run with SIGKILL at random moments, restart it each time, and count what was lost.

    python bench/chaos.py [--kills 20] [--nodes 12] [--tier micro] [--seed 0]

Reports restarts, nodes completed, nodes lost (rows or commits missing: target 0), duplicate
nodes (the same code twice under one parent: target 0), evaluations redone (sandbox runs
started again because a kill interrupted them) and whether `archlab doctor` finds the store
consistent at the end.
"""

import argparse
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archlab.commands.doctor import check
from archlab.tree.lineage import Lineage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--tier", default="micro")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=20.0, help="longest time before a kill, seconds")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="archlab-chaos-")) / "run"
    cmd = [
        sys.executable,
        "-c",
        "from archlab.cli import main; main()",
        "run",
        str(run_dir),
        "--tier",
        args.tier,
        "--max-nodes",
        str(args.nodes),
    ]
    kills = restarts = 0
    started = time.monotonic()
    while True:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills < args.kills:
            try:
                proc.wait(timeout=rng.uniform(1.0, args.max_delay))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                restarts += 1
                print(f"kill {kills}: {_count(run_dir)} nodes stored", flush=True)
                continue
        if proc.wait() == 0:
            break
        restarts += 1
    with sqlite3.connect(run_dir / "archlab.db") as db:
        ids = [r[0] for r in db.execute("select id from nodes order by id")]
        dup = db.execute(
            "select count(*) - count(distinct parent_id || ':' || commit_sha) from nodes where parent_id is not null"
        ).fetchone()[0]
        started_evals = db.execute("select count(*) from events where kind = 'evaluate'").fetchone()[0]
        distinct_evals = db.execute(
            "select count(distinct node_id || ':' || message) from events where kind = 'evaluate'"
        ).fetchone()[0]
    code = Lineage(run_dir / "repo")
    same_code = len(ids) - len({(code.code(sha)) for sha in code.node_tags().values()})
    lost = len(set(range(args.nodes)) - set(ids)) + len(set(ids) - set(code.node_tags()))
    report = check(run_dir)
    print(f"\nkills {kills}, restarts {restarts}, wall {time.monotonic() - started:.0f} s")
    print(
        f"nodes completed {len(ids)} of {args.nodes}; nodes lost {lost}; duplicate nodes {dup} "
        f"(identical code anywhere in the tree: {same_code}); evaluations redone {started_evals - distinct_evals}"
    )
    print(f"doctor: {'consistent' if report.ok else report.as_json()}")
    print(f"run directory: {run_dir}")


def _count(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "archlab.db") as db:
            return db.execute("select count(*) from nodes").fetchone()[0]
    except sqlite3.Error:
        return 0


if __name__ == "__main__":
    main()
