#!/usr/bin/env bash
# The cpu-small benchmark of unsupervised adaptation (GLUA, docs/glua.md) on the synthetic phantom (2D configuration,
# small network): in both directions (CT-like -> MR-like and back), vanilla nnU-Net on the target's labels (upper
# bound), source-only (lower bound), GLUA's global-only and local-only ablations and full GLUA (METHODS="..." picks
# others); only the target's test cases are evaluated. Then the uda results section of docs/benchmarks.md.
#
#   benchmarks/run_cpu_small_uda.sh                 # reruns resume
#   BENCHMARK_DATE=2026-11-22 benchmarks/run_cpu_small_uda.sh    # resume a run started on another day
#   benchmarks/run_cpu_small_uda.sh --uda-directions a2b         # extra options go to 'nnunet_unpaired benchmark'
#
# Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks), PYTHON (default: the
# repository's .venv), BENCHMARK_MACHINE_NOTE (a sentence about the machine, e.g. that it was shared during the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$PY" -m nnunet_unpaired.cli benchmark --preset cpu-small --phantom \
    --methods ${METHODS:-source-only glua-global glua-local glua} --output "$OUT" --date "$DATE" "$@"

RESULT="$OUT/Dataset901_PhantomCT__Dataset902_PhantomMR__2d__$DATE"
"$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --section uda --docs "$REPO/docs/benchmarks.md" \
    --copy-to "$REPO/benchmarks/results/cpu-small-uda" --note "${BENCHMARK_MACHINE_NOTE:-}"
