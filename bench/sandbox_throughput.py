"""Training throughput of the root DeltaNet in archlab's model shell (sandbox/model.py), printed as ratios.

    python bench/sandbox_throughput.py                  # CPU: root vs the transformer template
    python bench/sandbox_throughput.py --sandbox        # the same, measured by the sandbox itself (model servers)
    python bench/sandbox_throughput.py --steps 40       # more steps, steadier numbers
    python bench/sandbox_throughput.py --cpu-time       # per CPU-second: steady when others share the machine

On the CPU both models have the explore tier's shape (2 layers, d_model 128, 4 heads,
batch 16 x 256 bytes) and are measured in alternating rounds, so a busy machine slows both
alike; the ratio root/transformer is the median over rounds (target >= 0.6).

On a GPU (CUDA present) the shape is hidden 256, 8 layers, 8 heads, seq 2048, batch 16, bf16
autocast, and three things are compared with flash-linear-attention's own
DeltaNetForCausalLM at the same size: the root in the harness with fla's chunkwise kernel
(target >= 0.9x), and the root's pure-PyTorch path under torch.compile (target >= 0.35x).
This script reports; it never fails on a number (timings are not tests).
"""

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from archlab.sandbox import contract
from archlab.sandbox.data import VOCAB_SIZE
from archlab.sandbox.model import LM, autocast, synchronize
from archlab.sandbox.tiers import Tier
from archlab.templates import render_root

CPU_SHAPE = dict(d_model=128, n_layers=2, n_heads=4, seq_len=256, batch_size=16)
GPU_SHAPE = dict(d_model=256, n_layers=8, n_heads=8, seq_len=2048, batch_size=16)


def harness_model(root: str, shape: dict, device: torch.device, *, pure: bool = False) -> torch.nn.Module:
    module = contract.load(render_root(root), name=f"bench_{root}")
    if pure and hasattr(module, "fla_chunk_delta_rule"):
        module.fla_chunk_delta_rule = None  # the pure-PyTorch chunkwise path
    tier = Tier(name="bench", steps=1, **shape)
    torch.manual_seed(0)
    return LM(module, tier).to(device)


def fla_model(shape: dict, device: torch.device) -> torch.nn.Module | None:
    try:
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM
    except Exception as e:  # fla needs triton and a GPU
        print(f"flash-linear-attention is not importable ({type(e).__name__}: {e})")
        return None
    config = DeltaNetConfig(
        hidden_size=shape["d_model"],
        num_hidden_layers=shape["n_layers"],
        num_heads=shape["n_heads"],
        vocab_size=VOCAB_SIZE,
        use_short_conv=True,
        use_gate=True,
        fuse_cross_entropy=False,
    )
    model = DeltaNetForCausalLM(config).to(device)

    class Logits(torch.nn.Module):  # the harness's interface: tokens -> logits
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, tokens):
            return self.inner(input_ids=tokens).logits

    return Logits()


def steps_per_second(
    model: torch.nn.Module, shape: dict, device: torch.device, steps: int, warmup: int = 3, cpu_time: bool = False
) -> float:
    """Training tokens/s: forward, loss, backward, AdamW step; the first `warmup` steps are not timed.
    cpu_time: per second of this process's CPU time (on one thread, what other processes on a
    shared machine cannot distort) instead of wall time."""
    clock = time.process_time if cpu_time else time.perf_counter
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB_SIZE, (shape["batch_size"], shape["seq_len"] + 1), generator=gen).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    elapsed = 0.0
    for step in range(warmup + steps):
        synchronize(device)
        start = clock()
        with autocast(device):
            logits = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(device)
        if step >= warmup:
            elapsed += clock() - start
    return steps * inputs.numel() / elapsed


def sandbox_tokens_per_s(root: str, shape: dict, steps: int, threads: int | None) -> float:
    from archlab.sandbox import runner

    overrides = {
        **shape,
        "steps": steps + 2,
        "val_windows": 8,
        "hardware": False,
        "extrapolation": False,
        "probes": None,
        "timeout_s": 3600,
    }
    result = runner.evaluate(
        render_root(root), "micro", tier_overrides=overrides, threads=threads, param_limit=-1, allow_quadratic=True
    )
    if not result.ok:
        sys.exit(f"the sandbox rejected {root}: {result.reason}: {result.detail}")
    return result.metrics["tokens_per_s"]


def cpu(args) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    shape = CPU_SHAPE
    clock = "CPU time" if args.cpu_time else "wall time"
    print(f"CPU, {args.threads} thread(s), torch {torch.__version__}, {clock}; shape {shape}")
    ratios = []
    for round_ in range(args.rounds):
        if args.sandbox:
            r = sandbox_tokens_per_s("deltanet", shape, args.steps, args.threads)
            a = sandbox_tokens_per_s("transformer", shape, args.steps, args.threads)
        else:
            r = steps_per_second(
                harness_model("deltanet", shape, device), shape, device, args.steps, cpu_time=args.cpu_time
            )
            a = steps_per_second(
                harness_model("transformer", shape, device), shape, device, args.steps, cpu_time=args.cpu_time
            )
        ratios.append(r / a)
        print(
            f"  round {round_ + 1}: root DeltaNet {r:,.0f} tokens/s, transformer template {a:,.0f} tokens/s, ratio {r / a:.2f}"
        )
    ratio = statistics.median(ratios)
    print(
        f"root / transformer (median of {len(ratios)} rounds): {ratio:.2f}x   target >= 0.6x   "
        f"[{'met' if ratio >= 0.6 else 'NOT met'}]"
    )


def gpu(args) -> None:
    device = torch.device("cuda")
    shape = GPU_SHAPE
    print(f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast; shape {shape}")
    results = {}

    def measure(name: str, model: torch.nn.Module, warmup: int = 3) -> None:
        # printed at once: a time-boxed GPU session keeps whatever was measured before it was stopped
        results[name] = steps_per_second(model, shape, device, args.steps, warmup=warmup)
        print(f"  {name:40} {results[name]:>14,.0f} tokens/s", flush=True)
        base = results.get("fla DeltaNetForCausalLM")
        target = {"root in the harness (fla kernel)": 0.9, "root, pure PyTorch + torch.compile": 0.35}.get(name)
        if base and target:
            ratio = results[name] / base
            print(
                f"{name} / fla's model: {ratio:.2f}x   target >= {target}x   [{'met' if ratio >= target else 'NOT met'}]",
                flush=True,
            )

    reference = fla_model(shape, device)
    if reference is not None:
        measure("fla DeltaNetForCausalLM", reference)
        del reference
    measure("root in the harness (fla kernel)", harness_model("deltanet", shape, device))
    pure = harness_model("deltanet", shape, device, pure=True)
    measure("root, pure PyTorch", pure)
    try:
        measure("root, pure PyTorch + torch.compile", torch.compile(pure), warmup=5)
    except Exception as e:
        print(f"torch.compile failed: {type(e).__name__}: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds on the CPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--sandbox", action="store_true", help="measure through runner.evaluate (CPU)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="tokens per CPU-second of this process (steady on a shared machine; use with --threads 1)",
    )
    parser.add_argument("--cpu", action="store_true", help="the CPU comparison even when a GPU is present")
    args = parser.parse_args()
    if torch.cuda.is_available() and not args.cpu:
        gpu(args)
    else:
        cpu(args)


if __name__ == "__main__":
    main()
