#!/usr/bin/env bash
# GPU check for a machine with one CUDA GPU and no network: installs the wheels in .whl/
# (what that machine lacks: open_clip, faiss-cpu, pydantic, ...; bench/gpu_wheels.sh fetches
# them) into a --target folder, then runs bench/gpu_check.py's env, exact, embed, encode,
# kmeans and runs steps under one time budget.
#
#   bash bench/gpu_check.sh          # from anywhere; it works in the repo root
#   GPU_CHECK_STEPS="env embed" bash bench/gpu_check.sh      # issue 22's checks alone
#   GPU_CHECK_STEPS="env exact kmeans" bash bench/gpu_check.sh   # issue 19's checks alone
#   GPU_CHECK_SKIP_INSTALL=1 GPU_CHECK_STEPS=embed GPU_CHECK_EMBED_ARGS="--device cpu --small" \
#     bash bench/gpu_check.sh        # a smoke run of the embed step on a machine without GPU
#
# Settings (environment):
#   OUT                      small results and the log (default /tmp/gpu_check_out)
#   GPU_CHECK_WORK           bulky data: shards, run folders (default /tmp/gpu_check_work)
#   PY                       python (default python3)
#   GPU_CHECK_BUDGET         seconds for the whole script, install included (default 330)
#   GPU_CHECK_DEVICES        devices compared (default "cuda cpu"; "cpu" for a dry run)
#   GPU_CHECK_SAMPLES        images generated for the conceptprune runs (default 2000)
#   GPU_CHECK_MODEL          open_clip model, random weights (default ViT-B-32)
#   GPU_CHECK_KM             kmeans args (default "--n 500000 --k 1000 --niter 10")
#   GPU_CHECK_ENCODE_S       seconds each device is timed in the encode step (default 8)
#   GPU_CHECK_SKIP_INSTALL=1 use the packages already importable (local dry run)
#   GPU_CHECK_SITE           install target (default /tmp/site)
#   GPU_CHECK_STEPS          steps run, in this order (default "env exact embed encode kmeans runs";
#                            "env evaluate": issue 23's ViT-B-32 comparison, ~8 minutes)
#   GPU_CHECK_EVALUATE_ARGS  more arguments of the evaluate step (see gpu_check.py evaluate -h)
#   GPU_CHECK_EMBED_ARGS     arguments of the embed step (default "--device cuda --cluster":
#                            ViT-B-32 and ViT-L-14 with tf_efficientnet_lite0 on cuda, 20,480
#                            generated images of 256-512 px in 32 shards; gpu_check.py embed -h)
#   GPU_CHECK_EMBED_RESERVE  seconds the embed step leaves for the steps after it (default 0)
#   GPU_CHECK_EXACT_SAMPLES  rows of the exact step's big run (default 1000000; issue 19)
#   GPU_CHECK_EXACT_ARGS     more arguments of the exact step (gpu_check.py exact -h)
#   GPU_CHECK_EXACT_RESERVE  seconds the exact step leaves for the steps after it (default 0)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the photographs bench/gpu_wheels.sh puts in .photos/, for the embed step's corpus check
[ -d "$(dirname "$0")/../.photos" ] && export JPEG_CORPUS_PHOTOS=${JPEG_CORPUS_PHOTOS:-$(cd "$(dirname "$0")/../.photos" && pwd)}
export PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-/tmp/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
PY=${PY:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET=${GPU_CHECK_BUDGET:-330}
DEVICES=${GPU_CHECK_DEVICES:-cuda cpu}
SAMPLES=${GPU_CHECK_SAMPLES:-2000}
MODEL=${GPU_CHECK_MODEL:-ViT-B-32}
KM=${GPU_CHECK_KM:---n 500000 --k 1000 --niter 10}
ENCODE_S=${GPU_CHECK_ENCODE_S:-8}
STEPS=" ${GPU_CHECK_STEPS:-env exact embed encode kmeans runs} "
EMBED_ARGS=${GPU_CHECK_EMBED_ARGS:---device cuda --cluster}
EXACT_SAMPLES=${GPU_CHECK_EXACT_SAMPLES:-1000000}
T0=$SECONDS

step() { echo; echo "=== [$((SECONDS - T0)) s] $*"; }
left() { echo $((BUDGET - (SECONDS - T0))); }
wanted() { [[ $STEPS == *" $1 "* ]]; }
# run_for CAP CMD...: CMD under a timeout of min(CAP, budget left - RESERVE); never fails
run_for() {
  local cap=$1; shift
  local t; t=$(left); t=$((t - ${RESERVE:-0})); ((t > cap)) && t=$cap
  if ((t < 10)); then echo "skipped: only $(left) s of the budget left"; return 0; fi
  echo "(timeout ${t} s)"
  timeout -k 5 "$t" "$@"; local rc=$?
  ((rc == 124 || rc == 137)) && echo "!!! timed out after ${t} s"
  ((rc != 0)) && echo "!!! exit status $rc"
  return 0
}
install_wheels() {  # install_wheels WHEEL...: pip --target, or plain unzip if pip fails
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$@" && return 0
  echo "pip install failed: unzipping the wheels instead"
  mkdir -p "$SITE"
  for w in "$@"; do $PY -m zipfile -e "$w" "$SITE"; done
}

main() {
  if [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
    step "install .whl/*.whl into $SITE"
    rm -rf "$SITE"
    install_wheels .whl/*.whl
    export PYTHONPATH=$SITE:$PWD
    # timm is on that machine already; .whl/fallback's only if it is missing or older than
    # open_clip 3.3's minimum (1.0.17)
    if ! $PY -c 'import sys, timm; v = tuple(int(x) for x in timm.__version__.split(".")[:3]); sys.exit(v < (1, 0, 17))' 2>/dev/null; then
      echo "timm missing or older than 1.0.17: installing .whl/fallback/timm-*.whl"
      install_wheels .whl/fallback/timm-*.whl
    fi
    echo "installed in $((SECONDS - T0)) s: $(ls "$SITE" | grep -c dist-info) distributions"
  else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi

  if wanted env; then
  step "nvidia-smi"
  nvidia-smi -L || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,power.limit \
    --format=csv 2>/dev/null || true

  step "env: torch.cuda and package versions"
  run_for 60 $PY bench/gpu_check.py env
  fi

  if wanted exact; then
  step "exact: whole runs, kmeans.backend torch on CUDA vs the CPU's: planted near-ties, then ${EXACT_SAMPLES} x 512"
  # shellcheck disable=SC2086 # EXACT_ARGS holds several arguments
  cap=$(($(left) - ${GPU_CHECK_EXACT_RESERVE:-0})); ((cap > 200)) && cap=200
  RESERVE=${GPU_CHECK_EXACT_RESERVE:-0} run_for 200 $PY bench/gpu_check.py exact \
    --samples "$EXACT_SAMPLES" --budget $((cap - 15)) \
    --out "$WORK/exact" --json "$OUT/exact.json" ${GPU_CHECK_EXACT_ARGS:-}
  fi

  if wanted embed; then
  step "embed: JPEGs decoded on the GPU vs PIL, both paths on a hostile shard, bench_embed per model"
  # shellcheck disable=SC2086 # EMBED_ARGS holds several arguments
  RESERVE=${GPU_CHECK_EMBED_RESERVE:-0} run_for 420 $PY bench/gpu_check.py embed $EMBED_ARGS \
    --out "$WORK/embed" --json "$OUT/embed.json"
  fi

  if wanted encode; then
  step "encode: load_clip + BatchEncoder.encode_batch ($MODEL random weights + tf_efficientnet_lite0)"
  RESERVE=$( (wanted kmeans || wanted runs) && echo 200 || echo 0) run_for 90 \
    $PY bench/gpu_check.py encode --devices $DEVICES --model "$MODEL" --seconds "$ENCODE_S"
  fi

  if wanted kmeans; then
  step "kmeans: the exact fit, assignment and SemDeDup kernel on blas, faiss-cpu, torch cuda and cpu"
  RESERVE=$(wanted runs && echo 170 || echo 0) run_for 90 $PY bench/gpu_check.py kmeans $KM
  fi

  if wanted runs; then
  step "runs: conceptprune synth ($SAMPLES images), then conceptprune run per device"
  rm -rf "$WORK/runs"
  run_for 300 $PY bench/gpu_check.py runs --devices $DEVICES --model "$MODEL" \
    --samples "$SAMPLES" --out "$WORK/runs" --budget $(($(left) - 10))
  # the small results beside the log; shards, vectors and work folders stay in $WORK
  if [ -d "$WORK/runs" ]; then (
    cd "$WORK/runs" || exit 0
    cp ./*.json ./*.yaml ./*.txt "$OUT/runs/" 2>/dev/null
    for r in run_*; do
      [ -d "$r" ] || continue
      mkdir -p "$OUT/runs/$r"
      cp "$r/subset.npy" "$r/report/report.json" "$r/logs/run.log" "$OUT/runs/$r/" 2>/dev/null
    done
  ) fi
  fi

  if wanted evaluate; then
  step "evaluate: $MODEL from scratch on the pruned, random and full arms (open_clip's trainer)"
  # open_clip's trainer wants webdataset <= 0.2.86, in a folder of its own (.whl/trainer/)
  TRAINER=$SITE-trainer
  if [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ]; then
    rm -rf "$TRAINER"
    $PY -m pip install -q --no-index --no-deps --target "$TRAINER" .whl/trainer/*.whl ||
      $PY -m zipfile -e .whl/trainer/webdataset-*.whl "$TRAINER"
  fi
  TRAINER_ARG=()
  [ "${GPU_CHECK_SKIP_INSTALL:-0}" != 1 ] && TRAINER_ARG=(--trainer-path "$TRAINER")
  # shellcheck disable=SC2086 # GPU_CHECK_EVALUATE_ARGS holds several arguments
  run_for 540 $PY bench/gpu_check.py evaluate --model "$MODEL" --out "$WORK/evaluate" \
    --json "$OUT/evaluate.json" "${TRAINER_ARG[@]}" ${GPU_CHECK_EVALUATE_ARGS:-}
  fi

  step "done in $((SECONDS - T0)) s; log: $OUT/gpu_check.log"
}

mkdir -p "$OUT/runs" "$WORK"
main 2>&1 | tee -a "$OUT/gpu_check.log"
