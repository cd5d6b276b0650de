"""Rediscovery: start from an architecture with known-good parts removed and see how much of
the way back to the full one a run finds, at a fixed evaluation budget.

The default root `deltanet_ablated` lacks the short convolution, the output gate and the q/k
L2 norm; the full DeltaNet (the hidden answer) is evaluated at the same tier and seeds.
`--foreign` does the same from a root outside the template family (bench/roots/gla_ablated.py:
gated linear attention written from scratch, without its short convolution, feature map,
output norm and output gate; answer gla_full.py), where only the code operators apply.
Per strategy (mean over seeds): the share of the validation-loss gap between root and answer
that the best node closes, the evaluations needed to close half of it, what the best node has
back (template fields, or the code edits on its lineage), and search_efficiency.py's best
fitness gain and area under the best-so-far curve. The mixer budget is 1.3x the root's (the
removed parts cost ~27% more parameters in both), and the implausible-gain flag starts at 50%
(the removed parts alone are worth ~10-15%).

    python bench/rediscovery.py                 # CPU: smoke tier, 8 evaluations, 2 seeds (~40 min on 2 cores)
    python bench/rediscovery.py --foreign       # 16 evaluations, 3 seeds, default vs random code edits (~30 min)
    python bench/rediscovery.py --tier smoke --evaluations 40 --jobs 8
    python bench/rediscovery.py --quick         # a few minutes: checks that it all works
"""

import argparse
import json
from pathlib import Path

from discovery import archlab, best_so_far, curves_svg, mean_std, run_all, search

from archlab.templates import ROOTS, render_root

STRATEGIES = ("asi", "evolution", "random")
REMOVED = {
    "short_conv": lambda d: d["short_conv"],
    "output_gate": lambda d: d["output_gate"] != "none",
    "qk_norm": lambda d: d["qk_norm"],
}
HERE = Path(__file__).parent
FOREIGN = {
    "root": HERE / "roots" / "gla_ablated.py",
    "answer": HERE / "roots" / "gla_full.py",
    "evaluations": 16,
    "seeds": 3,
    "strategies": ["asi", "random"],
}


def answer_loss(answer: str, tier: str, seed: int, out: Path) -> float:
    """The hidden answer's validation loss at this tier and seed."""
    source = out / f"answer-s{seed}.py"
    source.write_text(render_root(answer) if answer in ROOTS else Path(answer).read_text())
    return json.loads(archlab("eval", source, "--tier", tier, "--seed", seed, "--json", "--threads", 1).stdout)[
        "metrics"
    ]["val_loss"]


def parts_back(run: dict, node: dict) -> list[str]:
    """What the best node has back: the removed template fields, or the code edits on its lineage."""
    if node["design"]:
        return [name for name, has in REMOVED.items() if has(node["design"])]
    by_id = {n["id"]: n for n in [run["root"], *run["candidates"]]}
    ops = []
    while node["parent_id"] is not None:
        ops.append(node["operator"].removeprefix("code:"))
        node = by_id[node["parent_id"]]
    return ops[::-1]


def score(run: dict, target: float) -> dict:
    root = run["root"]["val_loss"]
    gap = root - target
    best, curve, half_at = root, [], None
    best_node = run["root"]
    for i, c in enumerate(run["candidates"], 1):
        if c["status"] == "done" and not c["flagged"] and c["val_loss"] < best:
            best, best_node = c["val_loss"], c
        curve.append((root - best) / gap if gap > 0 else 0.0)
        if half_at is None and gap > 0 and root - best >= gap / 2:
            half_at = i
    parts = parts_back(run, best_node)
    return {
        "root_val_loss": root,
        "target_val_loss": target,
        "gap": gap,
        "best_val_loss": best,
        "best_node": best_node["id"],
        "closed": curve[-1] if curve else 0.0,
        "half_gap_at": half_at,
        "parts_back": parts,
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tier", default="smoke", help="smoke at least: at micro the ablated root still beats DeltaNet"
    )
    parser.add_argument("--evaluations", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    parser.add_argument("--out", type=Path, help="default: bench/results/rediscovery (or foreign_rediscovery)")
    parser.add_argument("--root", default="deltanet_ablated", help="a built-in root or a file")
    parser.add_argument("--answer", default="deltanet", help="the hidden answer: a built-in root or a file")
    parser.add_argument(
        "--foreign",
        action="store_true",
        help="the root outside the template family: "
        + ", ".join(f"{k} {v.name if isinstance(v, Path) else v}" for k, v in FOREIGN.items()),
    )
    parser.add_argument("--quick", action="store_true", help="micro tier, 2 evaluations, 1 seed, the default strategy")
    args = parser.parse_args()
    if args.foreign:
        for key, value in FOREIGN.items():
            setattr(args, key, str(value) if isinstance(value, Path) else value)
    if args.quick:
        args.tier, args.evaluations, args.seeds, args.strategies = "micro", 2, 1, ["asi"]
    args.out = args.out or Path("bench/results") / ("foreign_rediscovery" if args.foreign else "rediscovery")
    args.out.mkdir(parents=True, exist_ok=True)

    seeds = list(range(args.seeds))
    grid = [(strategy, seed) for seed in seeds for strategy in args.strategies]
    jobs = [(answer_loss, args.answer, args.tier, seed, args.out) for seed in seeds]
    jobs += [
        (
            search,
            args.out / "runs" / f"{strategy}-s{seed}",
            args.evaluations,
            dict(root=args.root, strategy=strategy, seed=seed, tier=args.tier, param_ratio=1.3, implausible_gain=0.5),
        )
        for strategy, seed in grid
    ]
    done = run_all(jobs, args.jobs)
    targets, runs = dict(zip(seeds, done[: len(seeds)])), done[len(seeds) :]
    results = {"tier": args.tier, "evaluations": args.evaluations, "seeds": args.seeds, "runs": [], "summary": {}}
    for (strategy, seed), run in zip(grid, runs):
        fitness = best_so_far(run["candidates"])  # as in search_efficiency.py: these runs measure that at this tier too
        results["runs"].append(
            {
                "strategy": strategy,
                "seed": seed,
                "run": run["run"],
                **score(run, targets[seed]),
                "best_gain": fitness[-1] if fitness else 0.0,
                "auc": sum(fitness) / len(fitness) if fitness else 0.0,
            }
        )

    root_name, answer_name = (Path(n).stem if n not in ROOTS else n for n in (args.root, args.answer))
    print(
        f"rediscovery: root {root_name} -> hidden answer {answer_name}; tier {args.tier}, "
        f"{args.evaluations} evaluations per run, {args.seeds} seed(s)"
    )
    for seed in seeds:
        r = next(r for r in results["runs"] if r["seed"] == seed)
        print(
            f"  seed {seed}: root val_loss {r['root_val_loss']:.4f}, answer {r['target_val_loss']:.4f}, gap {r['gap']:.4f}"
        )
    print(
        f"{'strategy':10} {'gap closed':>16} {'evals to half':>14} {'best fitness gain':>18} {'AUC':>16} {'parts back (best node)':>40}"
    )
    curves = {}
    for strategy in args.strategies:
        rows = [r for r in results["runs"] if r["strategy"] == strategy]
        curves[strategy] = [r["curve"] for r in rows]
        closed = mean_std([r["closed"] for r in rows])
        halves = [r["half_gap_at"] for r in rows]
        reached = [h for h in halves if h is not None]
        parts = "; ".join(",".join(r["parts_back"]) or "-" for r in rows)
        gain, auc = mean_std([r["best_gain"] for r in rows]), mean_std([r["auc"] for r in rows])
        results["summary"][strategy] = {"closed": closed, "half_gap_at": halves, "best_gain": gain, "auc": auc}
        half = f"{mean_std(reached)[0]:.1f} ({len(reached)}/{len(rows)})" if reached else f"never (0/{len(rows)})"
        print(
            f"{strategy:10} {100 * closed[0]:7.0f}% ± {100 * closed[1]:3.0f}% {half:>14} {gain[0]:+9.4f} ± {gain[1]:.4f} "
            f"{auc[0]:+7.4f} ± {auc[1]:.4f} {parts:>40}"
        )
    (args.out / "gap_closed.svg").write_text(
        curves_svg(
            f"share of the gap to {answer_name} closed ({args.tier}, mean of {args.seeds} seeds)", "gap closed", curves
        )
    )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {args.out / 'results.json'}, plot: {args.out / 'gap_closed.svg'}")


if __name__ == "__main__":
    main()
