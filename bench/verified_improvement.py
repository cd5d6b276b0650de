"""Verified improvement: a run from the DeltaNet root, then its best nodes replayed at the verify
tier over several seeds beside the root; a node is verified when its mean validation loss is
below the root's by more than twice the pooled standard deviation.

    python bench/verified_improvement.py                       # CPU: 15 min of search at smoke, the best node at verify x 3 seeds (~45 min)
    python bench/verified_improvement.py --hours 4 --top 3 --device cuda --tier explore   # a GPU machine
    python bench/verified_improvement.py --device cuda --workers 4 --verify-tier smoke \
        --tier-set d_model=512 --tier-set n_layers=6 --tier-set n_heads=8 --tier-set seq_len=1024   # ~20M parameters
    python bench/verified_improvement.py --quick               # a few minutes: checks that it all works

The search part is plain `archlab run`, the check plain `archlab replay --json`, so the figures
can be reproduced by hand on the run directory it leaves (--out).
"""

import argparse
import json
import math
import time
from pathlib import Path

from discovery import archlab, search

from archlab.config import parse_overrides as tier_overrides  # the CLI's KEY=VALUE parsing, nested keys included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="smoke", help="search tier")
    parser.add_argument(
        "--hours",
        type=float,
        default=0.25,
        help="search wall time (the claim to check: an improvement within one hour of search)",
    )
    parser.add_argument("--verify-tier", default="verify")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--top", type=int, default=1, help="best nodes to verify (each adds ~10 min on 2 CPU cores)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--tier-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of the search tier (as archlab run --tier-set); a --verify-tier equal to "
        "--tier replays with the same changes",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/verified_improvement"))
    parser.add_argument("--quick", action="store_true", help="micro tier, 2 candidates, verified at micro with 2 seeds")
    args = parser.parse_args()
    run_dir = args.out / "run"
    config = dict(
        root="deltanet",
        tier=args.tier,
        hours=args.hours,
        workers=args.workers,
        device=args.device,
        tier_overrides=tier_overrides(args.tier, args.tier_set, "--tier-set"),
    )
    if args.quick:
        args.verify_tier, args.seeds, args.top = "micro", 2, 1
        config.update(tier="micro", hours=None)
    started = time.monotonic()
    found = search(run_dir, 2 if args.quick else 100_000, config)
    search_s = time.monotonic() - started
    status = json.loads(archlab("status", run_dir, "--json").stdout)
    better = [n for n in status["leaderboard"] if n["id"] != 0 and n["fitness"] > 0][: args.top]
    spend = status["spend"]
    rate = (
        f"{spend['evaluations_per_gpu_hour']:.1f} evaluations/GPU-hour"
        if spend["evaluations_per_gpu_hour"]
        else f"{spend['evaluations_per_cpu_hour'] or 0:.1f} evaluations/CPU-hour"
    )
    print(
        f"search: {len(found['candidates'])} candidates in {search_s / 60:.1f} min at {config['tier']} ({rate}), "
        f"{status['beat_root']} beat the root"
    )
    results = {
        "search_tier": config["tier"],
        "tier_overrides": config["tier_overrides"],
        "search_s": search_s,
        "candidates": len(found["candidates"]),
        "spend": spend,
        "verify_tier": args.verify_tier,
        "seeds": args.seeds,
        "nodes": [],
    }
    table = [
        f"{'node':>5} {'operator':12} {'val_loss':>18} {'root':>18} {'difference':>11} {'2 x pooled std':>14}  verified"
    ]
    for node in better:
        print(f"replaying node {node['id']} and the root at {args.verify_tier} x {args.seeds} seeds ...")
        facts = json.loads(
            archlab(
                "replay",
                run_dir,
                node["id"],
                "--tier",
                args.verify_tier,
                "--seeds",
                args.seeds,
                "--threads",
                max(1, 2 // args.workers),
                "--workers",
                args.workers,
                "--json",
            ).stdout
        )
        row, root = (next(r for r in facts["nodes"] if r["node"] == i) for i in (node["id"], 0))
        pooled = math.sqrt(((row["val_loss_std"] or 0) ** 2 + (root["val_loss_std"] or 0) ** 2) / 2)
        difference = root["val_loss_mean"] - row["val_loss_mean"]
        verified = difference > 2 * pooled and row["ok"] == args.seeds
        results["nodes"].append(
            {
                "node": node["id"],
                "operator": node["operator"],
                "val_loss": row["val_loss"],
                "root_val_loss": root["val_loss"],
                "difference": difference,
                "pooled_std": pooled,
                "verified": verified,
            }
        )
        table.append(
            f"{node['id']:5} {node['operator'] or '':12} {row['val_loss_mean']:9.4f} ± {row['val_loss_std'] or 0:.4f} "
            f"{root['val_loss_mean']:9.4f} ± {root['val_loss_std'] or 0:.4f} {difference:+11.4f} {2 * pooled:14.4f}  "
            f"{'yes' if verified else 'no'}"
        )
    print("\n".join(table))
    results["verified"] = any(n["verified"] for n in results["nodes"])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(
        f"verified improvement: {'yes' if results['verified'] else 'no'}; results: {args.out / 'results.json'}; "
        f"run: archlab status {run_dir}"
    )


if __name__ == "__main__":
    main()
