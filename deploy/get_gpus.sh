#!/usr/bin/env bash
# Spark's GPU discovery script (spark.executor.resource.gpu.discoveryScript): prints the
# executor's GPUs as {"name": "gpu", "addresses": ["0", "1", ...]}.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed 's/ //g' \
    | awk 'BEGIN { sep = "" } { printf "%s\"%s\"", sep, $1; sep = "," }')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
