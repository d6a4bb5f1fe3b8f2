#!/usr/bin/env bash
# The cpu-small benchmark: synthetic phantom (2D configuration, small network), vanilla nnU-Net vs the joint trainer,
# UMMKD and EAM (METHODS="..." picks others),
# full-label and scarce-label B (2 labelled MR cases), then the results section of docs/benchmarks.md.
#
#   benchmarks/run_cpu_small.sh                 # about 40 minutes on 2 CPU cores; reruns resume
#   BENCHMARK_DATE=2026-11-22 benchmarks/run_cpu_small.sh    # resume a run started on another day
#   benchmarks/run_cpu_small.sh --restart       # extra options go to 'nnunet_unpaired benchmark'
#
# Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks), PYTHON (default: the
# repository's .venv), BENCHMARK_MACHINE_NOTE (a sentence about the machine, e.g. that it was shared during the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$PY" -m nnunet_unpaired.cli benchmark --preset cpu-small --phantom --methods ${METHODS:-vanilla joint ummkd eam} --scarce-b 2 \
    --output "$OUT" --date "$DATE" "$@"

RESULT="$OUT/Dataset901_PhantomCT__Dataset902_PhantomMR__2d__$DATE"
# inference cost per case of every deployed model against vanilla's, interleaved (benchmarks/inference_speed.py)
for SETTING in "$RESULT"/*/steps; do
    "$PY" "$REPO/benchmarks/inference_speed.py" "$RESULT" --setting "$(basename "$(dirname "$SETTING")")"
done
"$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --docs "$REPO/docs/benchmarks.md" \
    --copy-to "$REPO/benchmarks/results/cpu-small" --note "${BENCHMARK_MACHINE_NOTE:-}"
