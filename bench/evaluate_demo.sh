#!/usr/bin/env bash
# Does make demo's subset train better than a random one of its size? The demo's data and run
# (keep 0.5), a labelled set of the same 12 concepts, then `conceptprune evaluate` with the
# pruned (semdedup + dbp), random and full arms, SEEDS seeds each, for SAMPLES_SEEN samples
# seen with MODEL trained from scratch. Prints each arm's accuracy per seed, mean and spread.
#
#   bash bench/evaluate_demo.sh                      # tiny model, CPU: about 15 minutes
#   MODEL=ViT-B-32 SAMPLES_SEEN=200000 WORKERS=8 bash bench/evaluate_demo.sh   # on a GPU
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
SAMPLES_SEEN=${SAMPLES_SEEN:-20000}
MODEL=${MODEL:-conceptprune-tiny-vit}
SEEDS=${SEEDS:-3}
WORKERS=${WORKERS:-0}
BATCH=${BATCH:-64}
PER_CLASS=${PER_CLASS:-50}
PY=.venv/bin/python
make -s demo DEMO_DIR="$DEMO_DIR" >/dev/null
if [ ! -d "$DEMO_DIR/evalset" ]; then
  $PY -m pipeline.cli synth-eval "$DEMO_DIR/evalset" --per-class "$PER_CLASS" --seed 0 \
    --concepts 12 --style scenes
fi
$PY -m pipeline.cli evaluate "$DEMO_DIR/run" --eval "$DEMO_DIR/evalset" \
  --samples-seen "$SAMPLES_SEEN" --model "$MODEL" --arm random --arm full --seeds "$SEEDS" \
  --batch-size "$BATCH" --workers "$WORKERS" ${THREADS:+--threads "$THREADS"} "$@"
