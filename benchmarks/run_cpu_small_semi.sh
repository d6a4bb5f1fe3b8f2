#!/usr/bin/env bash
# The cpu-small semi-supervised benchmark (CMC, docs/cmc.md): synthetic phantom (2D configuration, small network),
# 10 % and 20 % labelled training cases per modality; in each setting CMC against vanilla nnU-Net (per modality,
# labelled cases) and the joint trainer (labelled cases of both). Then the semi results section of docs/benchmarks.md.
#
#   benchmarks/run_cpu_small_semi.sh                  # about 25 min on 2 idle CPU cores; reruns resume
#   BENCHMARK_DATE=2026-11-22 benchmarks/run_cpu_small_semi.sh    # resume a run started on another day
#   benchmarks/run_cpu_small_semi.sh --restart        # extra options go to 'nnunet_unpaired benchmark'
#
# Only 'cmc' is asked for: joint runs inside every semi setting as a baseline, and asking for it (kind 'unpaired')
# would also run the full-label pair setting. Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default
# ~/nnunet_unpaired_benchmarks), PYTHON (default: the repository's .venv), BENCHMARK_MACHINE_NOTE (a sentence about
# the machine, e.g. that it was shared during the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$PY" -m nnunet_unpaired.cli benchmark --preset cpu-small --phantom --methods ${METHODS:-cmc} --semi-labelled 10 20 \
    --output "$OUT" --date "$DATE" "$@"

RESULT="$OUT/Dataset901_PhantomCT__Dataset902_PhantomMR__2d__$DATE"
"$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --section semi --docs "$REPO/docs/benchmarks.md" \
    --copy-to "$REPO/benchmarks/results/cpu-small-semi" --note "${BENCHMARK_MACHINE_NOTE:-}"
