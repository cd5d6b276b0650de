#!/bin/bash
# The GPU figures in one go, time-boxed (a lent GPU machine's minutes are few):
#   the GPU tests (fla's kernel vs the pure-PyTorch path, bf16 autocast, a sandboxed GPU evaluation),
#   a short ~20M-parameter search from the DeltaNet root with 4 candidates sharing the GPU and its
#   best node replayed against the root over 3 seeds (bench/verified_improvement.py), and the
#   training-throughput comparison with flash-linear-attention's own DeltaNet.
#
#   bash bench/gpu.sh [OUT_DIR] [SECONDS]      # defaults: bench/results/gpu, 540
#
# Needs archlab installed with torch on CUDA; flash-linear-attention for the fla comparisons.
# Each stage's log goes to OUT_DIR; the search's run directory is OUT_DIR/verified/run.
OUT=${1:-bench/results/gpu}
BUDGET=${2:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - T0) )); }
stamp() { echo "=== $(( $(date +%s) - T0 ))s: $*"; }
stamp "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
stamp "tests and throughput in the background (they share the GPU with the search)"
# in a session of its own, so a failed search can stop it as a whole
setsid bash -c "timeout $(left $((BUDGET / 3))) python3 -m pytest -q -p no:cacheprovider tests/test_sandbox_gpu.py > '$OUT/tests.log' 2>&1
  timeout \$(( $((T0 + BUDGET - 10)) - \$(date +%s) )) python3 bench/sandbox_throughput.py --steps 10 > '$OUT/throughput.log' 2>&1" &
BACKGROUND=$!
stamp "the scorer's checks on this GPU: the gaps its estimated tolerances bound (scorer.py)"
timeout 150 python3 - <<'PY' 2>&1 | tee "$OUT/gaps.log"
from archlab.sandbox import runner, scorer
from archlab.templates import render_root
for root in ("deltanet", "gated_deltanet"):
    m = runner.evaluate(render_root(root), "micro", device="cuda", threads=1, param_limit=-1).metrics
    print(root, {k: m.get(k) for k in ("val_loss", "causal_gap", "shell_gap", "grad_gap")})
print("tolerances", scorer.CAUSAL_TOLERANCE["cuda"], scorer.SHELL_TOLERANCE["cuda"], scorer.GRADIENT_TOLERANCE["cuda"])
PY
stamp "search and verify"
timeout $(left $((BUDGET - 20))) python3 bench/verified_improvement.py --hours $(python3 -c "print(round($BUDGET / 3 / 3600, 3))") \
  --top 1 --seeds 3 --device cuda --workers 4 --tier smoke --verify-tier smoke --out "$OUT/verified" \
  --tier-set d_model=512 --tier-set n_layers=6 --tier-set n_heads=8 --tier-set seq_len=1024 --tier-set batch_size=16 \
  --tier-set steps=200 --tier-set val_windows=32 --tier-set lr=1e-3 2>&1 | tee "$OUT/search.log"
if [ "${PIPESTATUS[0]}" != 0 ]; then  # the rest would spend the GPU's minutes on a sandbox fault: stop, show it
  stamp "the search failed: stopping the tests and the throughput bench"
  kill -- -$BACKGROUND 2>/dev/null
  grep -h "blocked\|rejected\|Error" "$OUT"/verified/run/logs/*.log 2>/dev/null | sort | uniq -c | head -20
fi
wait
stamp "results"
tail -5 "$OUT/tests.log"; tail -8 "$OUT/throughput.log"
python3 -c "from archlab.cli import main; main()" status "$OUT/verified/run" 2>&1 | tail -30
