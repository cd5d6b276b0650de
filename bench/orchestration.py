"""Orchestration overhead: the wall time of a run not spent in the sandbox or waiting for the LLM.

Runs `archlab run` with the LLM brain against the scripted OpenAI-compatible server (real
HTTP, instant answers) and with the offline brain, then splits the run's wall time into
sandbox time (evaluation wall_s), LLM time (trace latencies) and the rest, and the rest
into start-up + shutdown (the process importing its libraries, opening the store: paid once
per `archlab run`) and the per-candidate loop (selection, prompts, knowledge search, git,
checkpoints, store writes). Target: under 2% of a run's wall time at a real tier.

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
    started = time.time()
    subprocess.run(
        [sys.executable, "-c", "from archlab.cli import main; main()", "run", str(run_dir), *args],
        env=env,
        check=True,
        capture_output=True,
    )
    ended = time.time()
    with sqlite3.connect(run_dir / "archlab.db") as db:
        sandbox = sum(json.loads(m).get("wall_s", 0) for (m,) in db.execute("select metrics from evaluations"))
        llm = db.execute("select coalesce(sum(latency_s), 0) from traces where kind = 'llm'").fetchone()[0]
        nodes = db.execute("select count(*) from nodes").fetchone()[0]
        first = db.execute("select min(ts) from events").fetchone()[0]
        last = max(
            db.execute(f"select max({c}) from {t}").fetchone()[0] or 0
            for t, c in (("events", "ts"), ("evaluations", "created"), ("traces", "created"), ("nodes", "finished"))
        )
    wall = ended - started
    fixed = (first - started) + (ended - last)
    loop = (last - first) - sandbox - llm
    return {
        "wall_s": wall,
        "sandbox_s": sandbox,
        "llm_s": llm,
        "nodes": nodes,
        "fixed_s": fixed,
        "loop_s": loop,
        "loop_per_node_s": loop / nodes,
        "overhead_fraction": (fixed + loop) / wall,
        "loop_fraction": loop / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="micro")
    parser.add_argument("--nodes", type=int, default=6)
    args = parser.parse_args()
    common = ["--tier", args.tier, "--max-nodes", str(args.nodes)]
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(Script()) as server:
        results = {
            "offline": measure(Path(tmp) / "offline", common),
            "llm (scripted HTTP)": measure(
                Path(tmp) / "llm", [*common, "--llm", "openai:scripted", "--base-url", server.url]
            ),
        }
    print(f"tier {args.tier}, {args.nodes} nodes (root included)")
    print(
        f"{'brain':20} {'wall s':>7} {'sandbox s':>9} {'llm s':>6} {'start+stop s':>12} {'loop s':>7} "
        f"{'loop/node s':>11} {'loop %':>7} {'overhead %':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:20} {r['wall_s']:7.1f} {r['sandbox_s']:9.1f} {r['llm_s']:6.2f} {r['fixed_s']:12.2f} {r['loop_s']:7.2f} "
            f"{r['loop_per_node_s']:11.3f} {100 * r['loop_fraction']:6.2f}% {100 * r['overhead_fraction']:9.2f}%"
        )
    print("overhead % = (start+stop + loop) / wall; start+stop is paid once per `archlab run`, loop per candidate")


if __name__ == "__main__":
    main()
