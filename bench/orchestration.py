"""Orchestration overhead: the wall time of a run not spent in the sandbox or waiting for the LLM.

Runs `archlab run` with the LLM brain against the scripted OpenAI-compatible server (real
HTTP, instant answers) and with the offline brain, then splits the run's wall time into
sandbox time (evaluation wall_s), LLM time (trace latencies) and the rest. Prints the
overhead per candidate and as a fraction of the run. Target: under 2% at a real tier.

    python bench/orchestration.py [--tier micro|smoke] [--nodes 6]
"""

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_server import API_KEY, Script, ScriptedServer  # noqa: E402


def measure(run_dir: Path, args: list[str]) -> dict:
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "from archlab.cli import main; main()", "run", str(run_dir), *args],
                   env=env, check=True, capture_output=True)
    wall = time.monotonic() - started
    with sqlite3.connect(run_dir / "archlab.db") as db:
        sandbox = sum(json.loads(m).get("wall_s", 0) for (m,) in db.execute("select metrics from evaluations"))
        llm = db.execute("select coalesce(sum(latency_s), 0) from traces where kind = 'llm'").fetchone()[0]
        nodes = db.execute("select count(*) from nodes").fetchone()[0]
    rest = wall - sandbox - llm
    return {"wall_s": wall, "sandbox_s": sandbox, "llm_s": llm, "overhead_s": rest, "nodes": nodes,
            "overhead_per_node_s": rest / nodes, "overhead_fraction": rest / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="micro")
    parser.add_argument("--nodes", type=int, default=6)
    args = parser.parse_args()
    common = ["--tier", args.tier, "--max-nodes", str(args.nodes)]
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(Script()) as server:
        results = {
            "offline": measure(Path(tmp) / "offline", common),
            "llm (scripted HTTP)": measure(Path(tmp) / "llm", [*common, "--llm", "openai:scripted", "--base-url", server.url]),
        }
    print(f"tier {args.tier}, {args.nodes} nodes")
    print(f"{'brain':22} {'wall s':>8} {'sandbox s':>10} {'llm s':>7} {'other s':>8} {'other/node s':>13} {'other %':>8}")
    for name, r in results.items():
        print(f"{name:22} {r['wall_s']:8.1f} {r['sandbox_s']:10.1f} {r['llm_s']:7.2f} {r['overhead_s']:8.2f} "
              f"{r['overhead_per_node_s']:13.2f} {100 * r['overhead_fraction']:7.2f}%")


if __name__ == "__main__":
    main()
