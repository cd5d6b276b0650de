"""Lessons kept across runs: does a second run from the same root, with the first run's lessons,
reach the first run's best sooner than the same run without them?

For each root and seed: run 1 (seed S) writes its lessons into a fresh $ARCHLAB_HOME; run 2 runs
twice from the same root, once with that home (the offline brain starts from run 1's lessons as
discounted priors) and once with --no-lessons. Run 2 trains with run 1's seed but draws its parents
and proposals with another (--search-seed S + 100): every candidate is trained as run 1 would train
it, so run 1's best fitness is a target run 2 can reach (with another training seed the root's own
evaluation moves every fitness by as much as the lessons save), yet run 2 is a new search, not a
replay of run 1. Both run 2s share their seeds, so only the lessons differ. Reported side by side
(mean ± std over seeds): evaluations run 2 needs to reach run 1's best fitness gain (censored: "not
within N" when it never does), run 2's best gain and AUC of best-so-far; a table and results.json.

    python bench/lessons.py --jobs 1      # micro tier, 40 evaluations, 3 seeds, 2 roots (18 runs)
    python bench/lessons.py --quick       # a few minutes: checks that it all works
"""

import argparse
import json
import shutil
import statistics
from pathlib import Path

from discovery import best_so_far, fmt, run_all, search

ROOTS = ("deltanet", "deltanet_ablated")
SECOND_SEED = 100  # run 2's search seed is run 1's seed plus this


def reached(curve: list[float], target: float) -> int | None:
    """Evaluations until the best-so-far reaches `target` (None: not within the curve)."""
    return next((i + 1 for i, best in enumerate(curve) if best >= target), None)


def pair(out: Path, root: str, seed: int, evaluations: int, config: dict) -> dict:
    """Run 1, then run 2 with its lessons and without them."""
    name = f"{root}-s{seed}"
    home = out / "homes" / name  # run 1's lessons only: a fresh store per pair
    first = search(out / "runs" / f"{name}-run1", evaluations, {**config, "root": root, "seed": seed}, home=home)
    second = {**config, "root": root, "seed": seed, "search_seed": seed + SECOND_SEED}
    run2 = out / "runs" / f"{name}-run2-lessons"
    home2 = out / "homes" / f"{name}-run2"  # run 2 starts from a copy of run 1's store (and writes its own there)
    if not run2.exists():
        shutil.rmtree(home2, ignore_errors=True)
        shutil.copytree(home, home2)
    with_lessons = search(run2, evaluations, second, home=home2)
    without = search(out / "runs" / f"{name}-run2-none", evaluations, {**second, "lessons": False})
    return {"run1": first, "with": with_lessons, "without": without}


def summary(curves: list[list[float]], targets: list[float], evaluations: int) -> dict:
    hits = [reached(c, t) for c, t in zip(curves, targets)]
    censored = [h if h is not None else evaluations + 1 for h in hits]
    return {
        "reached": hits,
        "reached_count": sum(h is not None for h in hits),
        "evaluations_censored_mean": statistics.fmean(censored),
        "best_gain": [c[-1] if c else 0.0 for c in curves],
        "auc": [sum(c) / len(c) if c else 0.0 for c in curves],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="micro")
    parser.add_argument("--evaluations", type=int, default=40, help="candidates per run (the root not counted)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--roots", nargs="+", default=list(ROOTS))
    parser.add_argument("--param-ratio", type=float, default=1.3, help="as bench/search_efficiency.py")
    parser.add_argument("--jobs", type=int, default=1, help="root/seed pairs at once (one CPU thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lessons"))
    parser.add_argument("--quick", action="store_true", help="micro tier, 3 evaluations, 1 seed, the DeltaNet root")
    args = parser.parse_args()
    if args.quick:
        args.tier, args.evaluations, args.seeds, args.roots = "micro", 3, 1, ["deltanet"]
    args.out.mkdir(parents=True, exist_ok=True)
    config = dict(tier=args.tier, param_ratio=args.param_ratio, implausible_gain=0.5)
    grid = [(root, seed) for seed in range(args.seeds) for root in args.roots]  # every root early in a long run
    pairs = run_all([(pair, args.out, root, seed, args.evaluations, config) for root, seed in grid], args.jobs)

    results = {"tier": args.tier, "evaluations": args.evaluations, "seeds": args.seeds, "runs": [], "summary": {}}
    for (root, seed), runs in zip(grid, pairs):
        curves = {k: best_so_far(v["candidates"]) for k, v in runs.items()}
        target = curves["run1"][-1] if curves["run1"] else 0.0
        results["runs"].append(
            {
                "root": root,
                "seed": seed,
                "run1_best": target,
                **{
                    f"{k}_{field}": value
                    for k in ("with", "without")
                    for field, value in (
                        ("reached", reached(curves[k], target)),
                        ("best_gain", curves[k][-1] if curves[k] else 0.0),
                        ("curve", curves[k]),
                        ("run", runs[k]["run"]),
                    )
                },
                "run1_curve": curves["run1"],
            }
        )
    n = args.evaluations
    print(f"lessons kept across runs: tier {args.tier}, {n} evaluations per run, {args.seeds} seed(s)")
    print(f"{'root':18} {'run 2':16} {'reaches run 1 best':>20} {'evals (censored)':>17} {'best gain':>20} {'AUC':>20}")
    for root in args.roots:
        rows = [r for r in results["runs"] if r["root"] == root]
        targets = [r["run1_best"] for r in rows]
        for k, label in (("with", "with lessons"), ("without", "without")):
            s = summary([r[f"{k}_curve"] for r in rows], targets, n)
            results["summary"][f"{root}/{k}"] = s
            hits = ", ".join(str(h) if h is not None else f">{n}" for h in s["reached"])
            print(
                f"{root:18} {label:16} {s['reached_count']}/{len(rows)} [{hits}]".ljust(56)
                + f"{s['evaluations_censored_mean']:>17.1f} {fmt(s['best_gain']):>20} {fmt(s['auc']):>20}"
            )
        a, b = results["summary"][f"{root}/with"], results["summary"][f"{root}/without"]
        faster = a["evaluations_censored_mean"] < b["evaluations_censored_mean"]
        print(
            f"  {root}: run 1's best {fmt(targets)}; with its lessons run 2 reaches it "
            f"{'sooner' if faster else 'NOT sooner'} ({a['evaluations_censored_mean']:.1f} vs "
            f"{b['evaluations_censored_mean']:.1f} evaluations, censored at {n + 1})"
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
