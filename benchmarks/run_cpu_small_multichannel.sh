#!/usr/bin/env bash
# The cpu-small multichannel benchmark (MAML, docs/maml.md): the built-in 3-channel phantom (2D configuration, small
# network); vanilla nnU-Net on all channels vs MAML, and for each single missing channel: MAML (predict-missing) vs
# vanilla fed a zero-filled channel vs vanilla retrained on the remaining channels. Then the multichannel results
# section of docs/benchmarks.md and the reports in benchmarks/results/cpu-small-multichannel.
#
#   benchmarks/run_cpu_small_multichannel.sh                 # about 20-30 minutes on 2 CPU cores; reruns resume
#   BENCHMARK_DATE=2026-11-22 benchmarks/run_cpu_small_multichannel.sh    # resume a run started on another day
#   benchmarks/run_cpu_small_multichannel.sh --multichannel-dataset 991   # your own raw dataset (imagesTs/labelsTs)
#
# Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks), PYTHON (default: the
# repository's .venv), METHODS (default: maml), BENCHMARK_MACHINE_NOTE (a sentence about the machine, e.g. that it
# was shared during the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$PY" -m nnunet_unpaired.cli benchmark --preset cpu-small --phantom --methods ${METHODS:-maml} \
    --output "$OUT" --date "$DATE" "$@"

# the harness names the result folder after the pair phantom it always prepares
RESULT="$OUT/Dataset901_PhantomCT__Dataset902_PhantomMR__2d__$DATE"
"$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --section multichannel --docs "$REPO/docs/benchmarks.md" \
    --copy-to "$REPO/benchmarks/results/cpu-small-multichannel" --note "${BENCHMARK_MACHINE_NOTE:-}"
