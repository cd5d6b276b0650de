"""Search efficiency: the default strategy against honest baselines at the same evaluation budget.

For each root and strategy, `--seeds` runs of `--evaluations` candidates each (the seed sets
selection, mutations and training, so strategies are compared on the same root evaluations).
Reports, per root and strategy (mean ± std over seeds): the best fitness gain over the root,
the area under the best-so-far curve (its mean over the evaluations: finding it early counts),
the failed-candidate rate, and the finished tree's quality diversity: QD coverage (occupied
cells of the tier's grid) and QD-score (the elites' fitness above a floor), both from archlab's
archive with the same fixed bins for every strategy (archlab/search/archive.py); as a table,
results.json and one SVG of best-so-far per root.

The first strategy listed (by default `asi-qd`, the default) is compared with each of the others, per
seed. `asi` is ASI-Arch-style parent selection (the offline brain picks operators with a bandit over
their gains plus what the knowledge base recommends); `asi-qd` exploits as `asi` and draws its
exploring fifth of parents from the MAP-Elites archive (cells rank-weighted by their elite's fitness),
their proposals aimed at sets of mechanisms no node has. The baselines: `evolution` (regularized evolution:
tournament among the recent population, uniformly random mutations) and `random` (uniformly random
parent and mutation).

    python bench/search_efficiency.py                    # CPU: micro tier, 40 evaluations, 3 seeds, 2 roots (~45 min on 2 cores)
    python bench/search_efficiency.py --strategies asi-qd asi --jobs 2   # the default against plain asi (~20 min)
    python bench/search_efficiency.py --tier smoke --jobs 8   # a bigger machine
    python bench/search_efficiency.py --quick            # a few minutes: checks that it all works
    python bench/search_efficiency.py --strategies asi --islands 3   # every run with 3 islands (rows say asi-i3)
"""

import argparse
import json
from pathlib import Path

from discovery import best_so_far, curves_svg, fmt, mean_std, quality_diversity, run_all, search

STRATEGIES = ("asi-qd", "asi", "evolution", "random")  # the default first: it is compared with each other one
METRICS = ("best_gain", "auc", "qd_coverage", "qd_score")  # compared per seed, higher is better
ROOTS = ("deltanet", "deltanet_ablated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="micro")
    parser.add_argument("--evaluations", type=int, default=40, help="candidates per run (the root not counted)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--roots", nargs="+", default=list(ROOTS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument(
        "--param-ratio", type=float, default=1.3, help="mixer budget vs the root (1.3: room to add parts back)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    parser.add_argument(
        "--islands", type=int, default=1, help="every run with this many islands (rows and run folders say i3)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_efficiency"))
    parser.add_argument("--quick", action="store_true", help="micro tier, 2 evaluations, 1 seed, the DeltaNet root")
    args = parser.parse_args()
    if args.quick:
        args.tier, args.evaluations, args.seeds, args.roots = "micro", 2, 1, ["deltanet"]
    args.out.mkdir(parents=True, exist_ok=True)
    islands = f"-i{args.islands}" if args.islands > 1 else ""  # in run folders and row labels

    grid = [(root, strategy, seed) for root in args.roots for seed in range(args.seeds) for strategy in args.strategies]
    runs = run_all(
        [
            (
                search,
                args.out / "runs" / f"{root}-{strategy}{islands}-s{seed}",
                args.evaluations,
                dict(
                    root=root,
                    strategy=strategy,
                    seed=seed,
                    tier=args.tier,
                    param_ratio=args.param_ratio,
                    implausible_gain=0.5,
                    **({"islands": args.islands} if islands else {}),
                ),
            )
            for root, strategy, seed in grid
        ],
        args.jobs,
    )
    results = {
        "tier": args.tier,
        "evaluations": args.evaluations,
        "seeds": args.seeds,
        "islands": args.islands,
        "runs": [],
        "summary": {},
    }
    for (root, strategy, seed), run in zip(grid, runs):
        curve = best_so_far(run["candidates"])
        failed = sum(c["status"] == "failed" for c in run["candidates"])
        results["runs"].append(
            {
                "root": root,
                "strategy": strategy,
                "islands": args.islands,
                "seed": seed,
                "root_val_loss": run["root"]["val_loss"],
                "best_gain": curve[-1] if curve else 0.0,
                "auc": sum(curve) / len(curve) if curve else 0.0,
                "failed_rate": failed / max(1, len(run["candidates"])),
                "curve": curve,
                "wall_s": run["wall_s"],
                "run": run["run"],
                **quality_diversity(Path(run["run"])),
            }
        )

    print(
        f"search efficiency: tier {args.tier}, {args.evaluations} evaluations per run, {args.seeds} seed(s)"
        + (f", {args.islands} islands" if islands else "")
    )
    print(
        f"{'root':18} {'strategy':10} {'best gain':>20} {'AUC best-so-far':>20} {'QD coverage':>18} "
        f"{'QD-score':>16} {'failed':>7} {'wall/run s':>10}"
    )
    for root in args.roots:
        curves = {}
        for strategy in args.strategies:
            rows = [r for r in results["runs"] if r["root"] == root and r["strategy"] == strategy]
            curves[strategy] = [r["curve"] for r in rows]
            summary = {k: mean_std([r[k] for r in rows]) for k in (*METRICS, "failed_rate", "wall_s")}
            results["summary"][f"{root}/{strategy}"] = summary
            print(
                f"{root:18} {strategy + islands:10} {fmt([r['best_gain'] for r in rows]):>20} {fmt([r['auc'] for r in rows]):>20} "
                f"{fmt([r['qd_coverage'] for r in rows]):>18} {fmt([r['qd_score'] for r in rows], 2):>16} "
                f"{summary['failed_rate'][0]:7.0%} {summary['wall_s'][0]:10.0f}"
            )
        (args.out / f"best_so_far-{root}.svg").write_text(
            curves_svg(
                f"best fitness so far, root {root} ({args.tier}, mean of {args.seeds} seeds)",
                "fitness over the root",
                curves,
            )
        )
        first = args.strategies[0]
        for baseline in args.strategies[1:]:
            a, b = results["summary"][f"{root}/{first}"], results["summary"][f"{root}/{baseline}"]
            verdict = (
                "beats" if a["best_gain"][0] > b["best_gain"][0] and a["auc"][0] > b["auc"][0] else "does NOT beat"
            )
            # Paired by seed (a seed fixes the root's evaluation, so each pair starts from the same root)
            pairs = [
                (x, y)
                for x in results["runs"]
                for y in results["runs"]
                if x["root"] == y["root"] == root
                and x["seed"] == y["seed"]
                and (x["strategy"], y["strategy"]) == (first, baseline)
            ]
            wins = {k: sum(x[k] > y[k] for x, y in pairs) for k in METRICS}
            results["summary"][f"{root}/{first}-vs-{baseline}"] = {"seeds": len(pairs), "wins": wins}
            print(
                f"  {root}: {first} {verdict} {baseline} (means of best gain and AUC); per seed it is ahead in "
                + ", ".join(f"{wins[k]}/{len(pairs)} on {k.replace('_', ' ')}" for k in METRICS)
            )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {args.out / 'results.json'}, plots: {args.out}/best_so_far-*.svg")


if __name__ == "__main__":
    main()
