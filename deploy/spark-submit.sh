#!/usr/bin/env bash
# spark-submit with one GPU per executor and per GPU task:
#   deploy/spark-submit.sh prune.yaml [--set KEY=VALUE ...]
# MASTER (default yarn), EXECUTORS (4), CORES (16) and THREADS (numeric kernel threads per
# task, 8) come from the environment. The work folder must be on storage every executor sees.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
threads="${THREADS:-8}"
exec spark-submit \
    --master "${MASTER:-yarn}" \
    --num-executors "${EXECUTORS:-4}" \
    --executor-cores "${CORES:-16}" \
    --conf spark.task.cpus="$threads" \
    --conf spark.executorEnv.OMP_NUM_THREADS="$threads" \
    --conf spark.executor.resource.gpu.amount=1 \
    --conf spark.executor.resource.gpu.discoveryScript=./get_gpus.sh \
    --conf spark.task.resource.gpu.amount=0 \
    --conf spark.dynamicAllocation.enabled=true \
    --conf spark.shuffle.service.enabled=true \
    --files "$here/get_gpus.sh" \
    "$repo/jobs/spark_job.py" "$@" --set engine.threads="$threads"
