#!/usr/bin/env bash
# nanoGPT's CPU "baby" Shakespeare run with gptjax, the full 2000 steps; prints the final validation loss, the wall
# time and the training tokens/s. nanoGPT reached val loss 1.8857 on this machine (2 cores); target <= 1.89.
#
#   bash benchmarks/shakespeare_char.sh [WORKDIR] [extra gptjax flags, e.g. --config.model.dtype=bfloat16]
#
# DATA (default /work/shared/data/tinyshakespeare.txt) is nanoGPT's data/shakespeare_char/input.txt.
# XLA_FLAGS from the environment is passed through unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/shared/data/tinyshakespeare.txt}
WORKDIR=${1:-$(mktemp -d /tmp/gptjax_shakespeare_char.XXXXXX)}
shift || true
if [ -e "$WORKDIR/checkpoints" ]; then
  echo "shakespeare_char.sh: $WORKDIR already has checkpoints (the run would resume); give a new WORKDIR" >&2
  exit 2
fi
LOG="$WORKDIR/train.log"
mkdir -p "$WORKDIR"
echo "workdir $WORKDIR, XLA_FLAGS='${XLA_FLAGS:-}', $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
gptjax train --config=experiments/pretrain/shakespeare_char.py --config.data.path="$DATA" --workdir="$WORKDIR" "$@" \
  2>&1 | tee "$LOG"
end=$(date +%s.%N)
python - "$WORKDIR" "$start" "$end" <<'EOF'
import json, sys
workdir, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
val = [r for r in rows if "val_loss" in r]
train = [r for r in rows if "tokens_per_sec" in r]
tps = sorted(r["tokens_per_sec"] for r in train[1:])  # the first interval includes compilation
median = tps[len(tps) // 2]
print(f"\nfinal val loss {val[-1]['val_loss']:.4f} at step {val[-1]['step']} (target <= 1.89; nanoGPT 1.8857)")
print(f"final train loss {train[-1]['train_loss']:.4f}")
print(f"wall time {end - start:.0f} s (train + evals + checkpoints + sampling, from the shell)")
print(f"training tokens/s: median of the logged intervals {median:,.0f}, "
      f"mean {sum(tps) / len(tps):,.0f}; mfu (median) {sorted(r['mfu'] for r in train[1:])[len(tps) // 2]:.1%}")
EOF
