"""Scaling: evaluations per hour with 1 and 2 workers on CPU, and GPU utilisation during a run.

Two measurements, each with 1 and then 2 workers (one CPU thread per evaluation, so 2 workers
use 2 cores), printed with the ratio (ideal 2.0; lower when the cores are shared with other work,
or memory bandwidth binds):

- run: `archlab run` at a tier (micro by default) with the offline brain. Throughput is taken
  from the run's evaluation rows in steady state: the evaluations finished after the root's
  (the root is evaluated alone before the workers fan out), per hour of wall time between the
  root's end and the last evaluation's end. Includes everything the driver does between
  evaluations (brain, git, store).
- executor: the same evaluation (the root design, one seed per job) submitted N times straight
  to the executor, wall time from the first submission to the last result.

When CUDA is present (torch.cuda.is_available()), a third measurement runs `archlab run --device
cuda` and samples `nvidia-smi` every 0.5 s: mean and peak utilisation per GPU during the run,
and evaluations per GPU-hour from the run's accounting.

    python bench/scaling.py [--tier micro] [--evaluations 4] [--executor local|ray] [--json]
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from archlab.cli import main; main()"]


def run_mode(tmp: Path, workers: int, args) -> dict:
    run_dir = tmp / f"run-w{workers}"
    extra = ["--executor", args.executor] + (["--device", args.device] if args.device else [])
    started = time.monotonic()
    subprocess.run(
        [
            *CLI,
            "run",
            str(run_dir),
            "--tier",
            args.tier,
            "--max-nodes",
            str(args.evaluations + 1),
            "--workers",
            str(workers),
            "--threads",
            "1",
            "--seed",
            str(args.seed),
            *extra,
        ],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - started
    with sqlite3.connect(run_dir / "archlab.db") as db:
        rows = db.execute(
            "select node_id, created, ok from evaluations where kind = 'search' order by created"
        ).fetchall()
    root_end = next(created for node_id, created, _ in rows if node_id == 0)
    after = [r for r in rows if r[1] > root_end]
    window = after[-1][1] - root_end if after else float("nan")
    return {
        "workers": workers,
        "evaluations": len(after),
        "ok": sum(r[2] for r in after),
        "window_s": window,
        "run_wall_s": wall,
        "evaluations_per_hour": len(after) / window * 3600 if after else 0.0,
    }


def executor_mode(tmp: Path, workers: int, args) -> dict:
    from archlab.config import RunConfig
    from archlab.sandbox import executors
    from archlab.sandbox.request import EvaluationRequest
    from archlab.templates import render_root

    config = RunConfig(workers=workers, threads=1, executor=args.executor, device=args.device or "cpu")
    ex = executors.make(config)
    source = render_root("deltanet")
    try:
        started = time.monotonic()
        futures = [
            ex.submit(
                executors.Job(
                    key=f"bench {i}",
                    request=EvaluationRequest(
                        source=source,
                        tier=args.tier,
                        seed=i,
                        param_limit=-1,
                        log_path=tmp / f"exec-w{workers}-{i}.log",
                    ),
                )
            )
            for i in range(args.evaluations)
        ]
        results = [executors.result_of(f) for f in futures]
        wall = time.monotonic() - started
    finally:
        ex.shutdown()
    return {
        "workers": workers,
        "evaluations": len(results),
        "ok": sum(r.ok for r in results),
        "window_s": wall,
        "evaluations_per_hour": len(results) / wall * 3600,
    }


def gpu_mode(tmp: Path, args) -> dict | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    if not shutil.which("nvidia-smi"):
        return {"error": "CUDA is present but nvidia-smi is not on PATH"}
    samples: dict[str, list[float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            for line in out.strip().splitlines():
                index, util, _ = (x.strip() for x in line.split(","))
                samples.setdefault(index, []).append(float(util))
            stop.wait(0.5)

    gpus = int(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU "))
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    run_dir = tmp / "run-gpu"
    started = time.monotonic()
    try:
        subprocess.run(
            [
                *CLI,
                "run",
                str(run_dir),
                "--tier",
                args.gpu_tier,
                "--max-nodes",
                str(args.evaluations + 1),
                "--workers",
                str(max(1, gpus)),
                "--device",
                "cuda",
                "--executor",
                args.executor,
                "--seed",
                str(args.seed),
            ],
            check=True,
            capture_output=True,
        )
    finally:
        stop.set()
        thread.join()
    wall = time.monotonic() - started
    status = json.loads(
        subprocess.run([*CLI, "status", str(run_dir), "--json"], capture_output=True, text=True, check=True).stdout
    )
    return {
        "tier": args.gpu_tier,
        "gpus": gpus,
        "run_wall_s": wall,
        "utilisation": {
            i: {"mean": statistics.fmean(v), "peak": max(v), "samples": len(v)} for i, v in samples.items()
        },
        "evaluations": status["spend"]["evaluations"],
        "gpu_hours": status["spend"]["gpu_hours"],
        "evaluations_per_gpu_hour": status["spend"]["evaluations_per_gpu_hour"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="micro", help="tier of the CPU measurements [micro]")
    parser.add_argument("--gpu-tier", default="smoke", help="tier of the GPU run [smoke]")
    parser.add_argument("--evaluations", type=int, default=4, help="evaluations per measurement (an even number) [4]")
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--device", default=None, help="cpu | cuda for the CPU measurements' runs [cpu]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="both", choices=["run", "executor", "both"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    args.device = args.device or "cpu"
    out: dict = {
        "tier": args.tier,
        "executor": args.executor,
        "cores": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode, measure in (("run", run_mode), ("executor", executor_mode)):
            if args.mode not in (mode, "both"):
                continue
            one, two = measure(Path(tmp), 1, args), measure(Path(tmp), 2, args)
            out.setdefault("modes", {})[mode] = {
                "1": one,
                "2": two,
                "ratio": two["evaluations_per_hour"] / one["evaluations_per_hour"],
            }
        out["gpu"] = gpu_mode(Path(tmp), args)
    out["load_avg_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"tier {args.tier}, executor {args.executor}, {out['cores']} cores, load average before "
        f"{out['load_avg_before'][0]:.1f}, after {out['load_avg_after'][0]:.1f}"
    )
    for mode, r in out.get("modes", {}).items():
        for w in ("1", "2"):
            m = r[w]
            print(
                f"{mode:9} {w} worker(s): {m['evaluations']} evaluations ({m['ok']} ok) in {m['window_s']:.1f} s "
                f"-> {m['evaluations_per_hour']:.0f} evaluations/hour"
            )
        print(f"{mode:9} ratio 2 workers / 1 worker: {r['ratio']:.2f} (ideal 2.0)")
    if out["gpu"] is None:
        print("gpu: no CUDA device here; GPU utilisation not measured")
    elif "error" in out["gpu"]:
        print(f"gpu: {out['gpu']['error']}")
    else:
        g = out["gpu"]
        for i, u in g["utilisation"].items():
            print(
                f"gpu {i}: utilisation mean {u['mean']:.0f}%, peak {u['peak']:.0f}% ({u['samples']} samples) during the {g['tier']} run"
            )
        print(
            f"gpu: {g['evaluations']} evaluations, {g['gpu_hours']:.3f} GPU-hours, {g['evaluations_per_gpu_hour']:.0f} evaluations/GPU-hour"
        )


if __name__ == "__main__":
    main()
