"""Fidelity: how far archlab's cheap tiers can be trusted, measured on ASI-Arch's published designs.

ASI-Arch trained each of its 106 best designs at ~400M parameters for 2,000 steps and published
the final training loss, zero-shot benchmark results and a score (data/106.json). This script
imports them (`archlab import asi-arch`), trains every design that passes archlab's static checks
at each tier with several seeds (`archlab replay`: the same sandbox, data and parameter budget a
search uses; replays are stored in the run, so an interrupted benchmark resumes where it stopped),
and reports Spearman's rho with a 95% bootstrap interval (archlab/agreement.py):

- each archlab tier's val_loss (mean over seeds) against ASI-Arch's final training loss, its
  benchmark average and its score (for the last two higher is better: their sign is turned so
  that a positive rho always means "ranks the designs the same way");
- archlab's tiers against each other (micro -> smoke -> explore -> verify), on the designs that
  trained at both.

The parameter budget is the search's (--param-ratio times the root DeltaNet's mixer parameters at
each tier) or off (--no-budget); the report says which, and how many designs each excluded.
Writes results.json, table.md and one SVG scatter per tier into --out.

    python bench/fidelity.py --tree data/tree.json --programs data/106.json              # micro+smoke, 3 seeds
    python bench/fidelity.py --tree ... --programs ... --tiers micro smoke explore --jobs 8  # a bigger machine
    python bench/fidelity.py ... --tiers verify --seeds 1 --sample 12 --out A      # the dear tier on a sample
    python bench/fidelity.py ... --tiers smoke --tier-set lr=0.004 --sample 12 --reference A/results.json --out B
    python bench/fidelity.py --quick        # minutes: the test fixtures, micro tier, one seed
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from archlab.agreement import agreement
from archlab.commands.replay import Replayer
from archlab.config import RunConfig, parse_overrides
from archlab.errors import UserError
from archlab.interop.importer import import_asi_arch
from archlab.sandbox.tiers import TIER_ORDER as ALL_TIERS
from archlab.tree.store import Store
from archlab.web.report import chart

sys.stdout.reconfigure(line_buffering=True)
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "asi_arch"
TIER_ORDER = tuple(t for t in ALL_TIERS if t != "check")  # the tiers that train, cheapest first
# ASI-Arch's figures, each with the sign that makes "lower is better" (as val_loss is)
EXTERNAL = {"train_loss": 1.0, "bench_average": -1.0, "asi_score": -1.0}
NO_BUDGET = 1e9  # a ratio no design reaches: the parameter budget is off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="ASI-Arch's data/tree.json")
    parser.add_argument("--programs", type=Path, help="ASI-Arch's data/106.json")
    parser.add_argument("--tiers", nargs="+", default=["micro", "smoke"], choices=TIER_ORDER)
    parser.add_argument(
        "--seeds", nargs="+", default=["3"], help="seeds per design: N for every tier, TIER=N for one (verify=1)"
    )
    parser.add_argument("--param-ratio", type=float, default=1.2, help="the search's parameter budget vs the root")
    parser.add_argument("--no-budget", action="store_true", help="train every design whatever its size")
    parser.add_argument("--limit", type=int, help="only the first N designs (by ASI-Arch index)")
    parser.add_argument(
        "--sample", type=int, help="only N designs spread evenly over ASI-Arch's score ranking (for the dear tiers)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="evaluations at once (one CPU thread each)")
    parser.add_argument(
        "--tier-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="a variant of the first --tiers tier (e.g. lr=0.004 steps=200), for tuning it; needs its own --out",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="another --out's results.json (e.g. the verify tier's): its tiers join the between-tier table",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/fidelity"))
    parser.add_argument("--quick", action="store_true", help="the test fixtures, micro tier, one seed")
    args = parser.parse_args()
    if args.quick:
        args.tree, args.programs, args.tiers, args.seeds = (
            FIXTURES / "tree.json",
            FIXTURES / "106.json",
            ["micro"],
            ["1"],
        )
    if not (args.tree and args.programs):
        parser.error("--tree and --programs (ASI-Arch's data/tree.json and data/106.json) are required, or --quick")
    seed_counts = parse_seeds(parser, args.seeds, args.tiers)
    ratio = NO_BUDGET if args.no_budget else args.param_ratio
    try:
        variant = parse_overrides(args.tiers[0], args.tier_set, "--tier-set") if args.tier_set else {}
    except UserError as e:
        parser.error(str(e))
    run = args.out / "run"
    if not (run / "archlab.db").exists():
        facts = import_asi_arch(
            args.tree,
            args.programs,
            run,
            RunConfig(tier=args.tiers[0], tier_overrides=variant, param_ratio=ratio, threads=1),
        )
        print(f"imported {facts['designs']} designs into {run}: {facts['converted']} pass the static checks")
    elif (RunConfig.load(run).param_ratio, RunConfig.load(run).tier_overrides) != (ratio, variant):
        sys.exit(f"{run} was imported with another parameter budget or --tier-set; use another --out")
    store = Store(run)
    designs = [n for n in store.nodes("status = 'imported' and commit_sha is not null and reason is null and id != 0")]
    designs = designs[: args.limit] if args.limit else designs
    designs = spread(designs, args.sample) if args.sample else designs
    ids = [n["id"] for n in designs]
    figures: dict[str, dict[int, float]] = {}
    per_seed: dict[str, dict[int, list[float]]] = {}  # the val_loss of each seed, for the tier's own reliability
    failures: dict[str, dict[str, int]] = {}
    for tier in args.tiers:
        replayer = Replayer(run, tier, threads=1)
        seeds = replayer.seeds(seed_counts[tier])
        total, done = replayer.pending([0] + ids, seeds), 0  # the root is replayed first: its runs set the budget

        def progress(node: int, seed: int, row: dict, tier=tier) -> None:
            nonlocal done
            if not row["cached"]:
                done += 1
                print(
                    f"  {tier} {done}/{total}: node {node} seed {seed} "
                    + (f"val_loss {row['metrics']['val_loss']:.4f}" if row["ok"] else f"failed: {row['reason']}")
                )

        print(f"{tier}: {len(ids)} designs x {len(seeds)} seeds ({total} to train)")
        items = replayer.replay(ids, seeds, progress, workers=args.jobs)
        figures[tier], failures[tier], per_seed[tier] = {}, {}, {}
        for item in items[1:]:
            values = item.values("val_loss")
            if len(values) == len(seeds):  # every seed trained: a design that fails one seed is not ranked
                figures[tier][item.node] = statistics.fmean(values.values())
                per_seed[tier][item.node] = [values[s] for s in seeds]
            else:
                reason = next((r["reason"] for r in item.runs if not r["ok"]), "?")
                failures[tier][reason] = failures[tier].get(reason, 0) + 1
    external = {
        key: {
            n["id"]: sign * n["metrics"][key]
            for n in designs
            if isinstance((n["metrics"] or {}).get(key), (int, float))
        }
        for key, sign in EXTERNAL.items()
    }
    # a variant of the run's tier is labelled with its fields; designs by name, so another --out can be compared
    label = {t: t if t != args.tiers[0] or not variant else f"{t} ({' '.join(args.tier_set)})" for t in args.tiers}
    names = {n["id"]: n["operator"] for n in designs}
    results = {
        "designs": len(ids),
        "tiers": [label[t] for t in args.tiers],
        "seeds": {label[t]: n for t, n in seed_counts.items()},
        "budget": "off" if args.no_budget else f"{args.param_ratio}x the root mixer",
        "trained": {label[t]: len(f) for t, f in figures.items()},
        "failures": {label[t]: f for t, f in failures.items()},
        "reliability": {label[t]: reliability(per_seed[t]) for t in args.tiers},
        "vs_asi_arch": [],
        "between_tiers": [],
        "figures": {label[t]: {names[n]: v for n, v in f.items()} for t, f in figures.items()},
    }
    for tier in args.tiers:
        for key in EXTERNAL:
            results["vs_asi_arch"].append(
                {"tier": label[tier], "asi_arch": key, **_agree(figures[tier], external[key])}
            )
    tiers = [t for t in TIER_ORDER if t in args.tiers]
    for i, cheap in enumerate(tiers):
        for dear in tiers[i + 1 :]:
            results["between_tiers"].append(
                {"cheap": label[cheap], "dear": label[dear], **_agree(figures[cheap], figures[dear])}
            )
    if args.reference:
        for theirs, values in json.loads(args.reference.read_text())["figures"].items():
            for tier in args.tiers:
                ours = results["figures"][label[tier]]
                results["between_tiers"].append({"cheap": label[tier], "dear": theirs, **_agree(ours, values)})
    write(args.out, results, {label[t]: f for t, f in figures.items()}, external, designs)


def parse_seeds(parser: argparse.ArgumentParser, words: list[str], tiers: list[str]) -> dict[str, int]:
    """--seeds 3 verify=1 -> {tier: count} for the tiers asked (a dear tier can take fewer seeds)."""
    counts: dict[str, int] = {}
    for word in words:
        tier, _, count = word.rpartition("=")
        if not count.isdigit() or int(count) < 1 or (tier and tier not in TIER_ORDER):
            parser.error(f"--seeds {word!r}: give N or TIER=N with N >= 1 and TIER one of {', '.join(TIER_ORDER)}")
        for t in [tier] if tier else tiers:
            counts[t] = int(count) if tier or t not in counts else counts[t]
    missing = [t for t in tiers if t not in counts]
    if missing:
        parser.error(f"--seeds: no count for {', '.join(missing)} (give N for every tier)")
    return {t: counts[t] for t in tiers}


def spread(designs: list[dict], n: int) -> list[dict]:
    """n designs evenly spaced over ASI-Arch's score ranking (best, worst and between), so a small sample
    spans the range the full set has; designs without a score are left out."""
    scored = sorted(
        (d for d in designs if isinstance((d["metrics"] or {}).get("asi_score"), (int, float))),
        key=lambda d: (-d["metrics"]["asi_score"], d["id"]),
    )
    if n >= len(scored):
        return scored
    picks = sorted({round(i * (len(scored) - 1) / max(1, n - 1)) for i in range(n)})
    return sorted((scored[i] for i in picks), key=lambda d: d["id"])


def reliability(per_seed: dict[int, list[float]]) -> dict:
    """How well a tier agrees with itself: Spearman's rho between the designs' ranks under two different
    seeds (averaged over seed pairs), beside the seed noise and the spread between designs. A tier
    cannot rank designs like anything else better than it ranks them like itself."""
    runs = list(per_seed.values())
    seeds = len(runs[0]) if runs else 0
    rhos = [
        agreement([r[i] for r in runs], [r[j] for r in runs])["rho"] for i in range(seeds) for j in range(i + 1, seeds)
    ]
    rhos = [r for r in rhos if r is not None]
    return {
        "seed_vs_seed_rho": statistics.fmean(rhos) if rhos else None,
        "seed_std": statistics.fmean(statistics.pstdev(r) for r in runs) if runs and seeds > 1 else None,
        "design_std": statistics.pstdev(statistics.fmean(r) for r in runs) if len(runs) > 1 else None,
    }


def _agree(a: dict, b: dict) -> dict:
    common = sorted(set(a) & set(b))
    return agreement([a[n] for n in common], [b[n] for n in common])


def _rho(r: dict) -> str:
    if r["rho"] is None:
        return f"- (n {r['n']})"
    interval = f" [{r['low']:+.2f}, {r['high']:+.2f}]" if r["low"] is not None else ""
    return f"{r['rho']:+.2f}{interval} (n {r['n']})"


def write(out: Path, results: dict, figures: dict, external: dict, designs: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"{results['designs']} designs, seeds {', '.join(f'{t} {n}' for t, n in results['seeds'].items())}, parameter budget {results['budget']}; "
        "Spearman rho [95% bootstrap interval] (n designs); positive = ranks the same way",
        "",
        "| archlab tier | trained | seed vs seed | seed std / design std | vs final train loss | vs benchmark average | vs score |",
        "|---|---|---|---|---|---|---|",
    ]
    for tier in results["tiers"]:
        row = {r["asi_arch"]: _rho(r) for r in results["vs_asi_arch"] if r["tier"] == tier}
        failed = ", ".join(f"{k} {v}" for k, v in results["failures"][tier].items())
        own = results["reliability"][tier]
        self_rho = "-" if own["seed_vs_seed_rho"] is None else f"{own['seed_vs_seed_rho']:+.2f}"
        noise = (
            "-"
            if own["seed_std"] is None or own["design_std"] is None
            else f"{own['seed_std']:.3f} / {own['design_std']:.3f}"
        )
        lines.append(
            f"| {tier} | {results['trained'][tier]}"
            + (f" (failed: {failed})" if failed else "")
            + f" | {self_rho} | {noise} | {row['train_loss']} | {row['bench_average']} | {row['asi_score']} |"
        )
    if results["between_tiers"]:
        lines += ["", "| cheap tier | dear tier | rho |", "|---|---|---|"]
        lines += [f"| {r['cheap']} | {r['dear']} | {_rho(r)} |" for r in results["between_tiers"]]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    names = {n["id"]: n["operator"] for n in designs}
    for tier, values in figures.items():
        points = [
            {"x": external["train_loss"][n], "y": v, "id": n, "tip": f"node {n} {names.get(n, '')}"}
            for n, v in values.items()
            if n in external["train_loss"]
        ]
        svg = chart(
            f"{tier} val_loss vs ASI-Arch's final training loss",
            "ASI-Arch train loss (2,000 steps, ~400M)",
            f"archlab {tier} val_loss (mean over seeds)",
            [{"label": tier, "type": "scatter", "colour": "#2563eb", "points": points}],
        )
        (out / f"scatter-{re.sub(r'[^A-Za-z0-9.]+', '-', tier).strip('-')}.svg").write_text(svg.standalone())


if __name__ == "__main__":
    main()
