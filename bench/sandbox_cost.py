"""What the sandbox's boundary costs: the root's evaluation, this checkout against a baseline
commit, side by side on one machine in one run.

    python bench/sandbox_cost.py                       # micro and smoke, 3 rounds, against 083ff43
    python bench/sandbox_cost.py --baseline HEAD~5 --rounds 5 --tiers micro

The baseline is checked out into a temporary git worktree and imported from there. Each round
evaluates the root twice with each side, alternating which side goes first, each side in a
fresh process that has already probed its launcher (a run probes once); the figures are the
wall times of `runner.evaluate`: the first evaluation of a process (what `archlab eval` pays)
and the next one (what every later evaluation of a run pays: this checkout's launch pad is warm
by then). Prints the medians per side and their ratios (this checkout / baseline; the issue's
targets: <= 1.15 at smoke, <= 1.0 at micro). It reports, never fails on a number.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMED = """
import json, sys, time
from archlab.sandbox import runner
try:
    from archlab.sandbox import launch as boundary
except ImportError:
    from archlab.sandbox import protections as boundary
from archlab.templates import render_root
boundary.launcher()
source, tier = render_root("deltanet"), sys.argv[1]
for which in ("first", "next"):
    started = time.perf_counter()
    result = runner.evaluate(source, tier, param_limit=-1, threads=2)
    print(json.dumps({"which": which, "ok": result.ok, "reason": result.reason, "wall_s": time.perf_counter() - started,
                      "val_loss": result.metrics.get("val_loss")}))
"""


def timed(path: Path, tier: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run(
        [sys.executable, "-c", TIMED, tier], cwd=path, env=env, capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise SystemExit(f"{path}: {out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-2:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="083ff43", help="the commit to compare with (default: before the boundary)")
    ap.add_argument("--tiers", nargs="+", default=["micro", "smoke"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="archlab-baseline-") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            sides = {"baseline": base, "this": ROOT}
            print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
            for tier in args.tiers:
                walls: dict[tuple, list[float]] = {}
                for r in range(args.rounds):
                    order = list(sides) if r % 2 == 0 else list(reversed(sides))
                    for name in order:
                        for result in timed(sides[name], tier):
                            if not result["ok"]:
                                raise SystemExit(f"{name} rejected the root at {tier}: {result['reason']}")
                            walls.setdefault((name, result["which"]), []).append(result["wall_s"])
                            print(
                                f"  {tier} round {r + 1} {name:8} {result['which']:5} {result['wall_s']:6.2f} s  "
                                f"val_loss {result['val_loss']:.4f}"
                            )
                for which in ("first", "next"):
                    base, this = (statistics.median(walls[(name, which)]) for name in sides)
                    print(
                        f"{tier} {which}: baseline {base:.2f} s, this {this:.2f} s, ratio {this / base:.3f} "
                        f"(min {min(walls[('this', which)]) / min(walls[('baseline', which)]):.3f})"
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)


if __name__ == "__main__":
    main()
