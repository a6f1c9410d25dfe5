#!/usr/bin/env bash
# nanoGPT's CPU "baby" Shakespeare run with gptjax, the full 2000 steps; prints the final validation loss, the wall
# time and the training tokens/s. nanoGPT reached val loss 1.8857 on this machine (2 cores); tests/test_reproduction.py
# holds gptjax within 0.015 of it.
#
#   bash benchmarks/shakespeare_char.sh [WORKDIR] [extra gptjax flags, e.g. --config.model.dtype=bfloat16]
#
# DATA (default data/shakespeare_char/input.txt in the repository: nanoGPT's tinyshakespeare) overrides the text.
# WORKDIR defaults to a new directory under $TMPDIR (or /tmp). XLA_FLAGS from the environment is passed through.
# Under GPTJAX_SMOKE=1, `gptjax train` runs 2 steps of a smaller model (gptjax/configs/smoke.py): a smoke run of this
# script, whose numbers are meaningless.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=$(realpath -m "${DATA:-$ROOT/data/shakespeare_char/input.txt}")
WORKDIR=$(realpath -m "${1:-$(mktemp -d -t gptjax_shakespeare_char.XXXXXX)}")
shift || true
cd "$ROOT"
if [ -e "$WORKDIR/checkpoints" ]; then
  echo "shakespeare_char.sh: $WORKDIR already has checkpoints (the run would resume); give a new WORKDIR" >&2
  exit 2
fi
SMOKE=0
if [ -n "${GPTJAX_SMOKE:-}" ] && [ "$GPTJAX_SMOKE" != 0 ]; then
  SMOKE=1
  echo "# smoke run (GPTJAX_SMOKE=1): 2 steps of gptjax's smoke model; its numbers are meaningless"
fi
LOG="$WORKDIR/train.log"
mkdir -p "$WORKDIR"
echo "workdir $WORKDIR, XLA_FLAGS='${XLA_FLAGS:-}', $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
gptjax train --config=experiments/pretrain/shakespeare_char.py --config.data.path="$DATA" --workdir="$WORKDIR" "$@" \
  2>&1 | tee "$LOG"
end=$(date +%s.%N)
python - "$WORKDIR" "$start" "$end" "$SMOKE" <<'EOF'
import json, sys
workdir, start, end, smoke = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
val = [r for r in rows if "val_loss" in r]
train = [r for r in rows if "tokens_per_sec" in r]
timed = train[1:] or train  # the first interval includes compilation
tps = sorted(r["tokens_per_sec"] for r in timed)
median = tps[len(tps) // 2]
held = "a smoke run: not comparable" if smoke else "tests/test_reproduction.py holds it within 0.015"
print(f"\nfinal val loss {val[-1]['val_loss']:.4f} at step {val[-1]['step']} ({held}; nanoGPT 1.8857)")
print(f"final train loss {train[-1]['train_loss']:.4f}")
print(f"wall time {end - start:.0f} s (train + evals + checkpoints + sampling, from the shell)")
print(f"training tokens/s: median of the logged intervals {median:,.0f}, "
      f"mean {sum(tps) / len(tps):,.0f}; mfu (median) {sorted(r['mfu'] for r in timed)[len(tps) // 2]:.1%}")
EOF
