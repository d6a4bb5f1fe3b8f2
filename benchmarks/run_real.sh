#!/usr/bin/env bash
# The real-pair benchmark: the REAL unpaired abdominal pair of ../shared/realdata (BTCV CT = A, CHAOS T2 MR = B),
# scarce-label MR (2 labelled cases, CT with all), vanilla nnU-Net vs joint, UMMKD and EAM (METHODS="..." picks
# others), seeds 0 1 2 (SEEDS="..."), then the real-pair section of docs/benchmarks.md (CPU preset only). PRESET
# cpu-real (default: 2D planned at 3.0 mm in-plane, hours on 2 CPU cores) or gpu-real (nnU-Net's own plans, one GPU;
# CONFIG=3d_fullres for 3D). Reruns resume (finished steps are skipped, an interrupted training continues from its
# checkpoint), so a run may span sessions: rerun the same command with the same BENCHMARK_DATE. The run's record
# (markers, logs, timing, per-case metrics, loss curves, the latest checkpoint of an unfinished training; no images,
# no finished models; saved every 10 minutes and after every method) is kept in ARCHIVE (default
# benchmarks/results/<preset>-record, in this repository): commit it, and a rerun on another machine continues from it
# (finished runs are not trained again; the plan and preprocessing are redone and must match the recorded plan).
#
#   benchmarks/run_real.sh
#   BENCHMARK_DATE=2026-12-01 benchmarks/run_real.sh              # resume a run started on another day
#   PRESET=gpu-real CONFIG=3d_fullres benchmarks/run_real.sh      # on a GPU
#   REALDATA=/path/to/abdomen benchmarks/run_real.sh               # the two raw datasets elsewhere
#
# The data is LINKED (never copied) into "$OUT/realdata_raw", which becomes nnUNet_raw for this run only.
# Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks), PYTHON (default: the
# repository's .venv), BENCHMARK_MACHINE_NOTE (a sentence about the machine, e.g. that it was shared during the run).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

REALDATA="${REALDATA:-$REPO/../shared/realdata/abdomen}"
[ -d "$REALDATA/Dataset951_AbdomenCT" ] && [ -d "$REALDATA/Dataset952_AbdomenMR" ] || {
    echo "run_real.sh: $REALDATA must hold Dataset951_AbdomenCT and Dataset952_AbdomenMR (set REALDATA)" >&2
    exit 2
}
RAW="$OUT/realdata_raw"
mkdir -p "$RAW"
for D in Dataset951_AbdomenCT Dataset952_AbdomenMR; do
    ln -sfn "$(cd "$REALDATA/$D" && pwd)" "$RAW/$D"
done
export nnUNet_raw="$RAW"

PRESET="${PRESET:-cpu-real}"
CONFIG="${CONFIG:-2d}"
"$PY" -m nnunet_unpaired.cli benchmark --preset "$PRESET" -c "$CONFIG" --pair 951 952 \
    --methods ${METHODS:-vanilla joint ummkd eam} --scarce-b 2 --no-full-label --seeds ${SEEDS:-0 1 2} \
    --output "$OUT" --date "$DATE" --archive "${ARCHIVE:-$REPO/benchmarks/results/$PRESET-record}" \
    $([ "$PRESET" = cpu-real ] && echo --archive-checkpoints) "$@"

RESULT="$OUT/Dataset951_AbdomenCT__Dataset952_AbdomenMR__${CONFIG}__$DATE"
if [ "$PRESET" = cpu-real ]; then
    "$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --section real --docs "$REPO/docs/benchmarks.md" \
        --copy-to "$REPO/benchmarks/results/cpu-real" --note "${BENCHMARK_MACHINE_NOTE:-}"
else
    echo "results: $RESULT/results.md (copy the tables into docs/benchmarks.md, GPU section, by hand)"
fi
