#!/usr/bin/env bash
# The real-pair benchmark: the REAL unpaired abdominal pair of ../shared/realdata (BTCV CT = A, CHAOS T2 MR = B).
# EXPERIMENT picks what it measures (METHODS="..." picks other methods of that experiment, SEEDS="..." other seeds):
#   unpaired (default)  scarce-label MR (2 labelled cases, CT with all): vanilla nnU-Net vs joint, UMMKD and EAM
#                       (issues 13, 15); seeds 0 1 2
#   semi                the semi-supervised experiment at SEMI_LABELLED % labelled cases (default 10 20) of each
#                       modality: CMC and CMC with its unlabelled terms off (cmc-labelled-only) against vanilla and
#                       joint on the labelled cases (issue 17; docs/cmc.md)
#   uda                 unsupervised adaptation in UDA_DIRECTIONS (default a2b b2a): source-only, GLUA's global-only
#                       and local-only ablations and full GLUA against vanilla on the target's labels (issue 16;
#                       docs/glua.md)
# then the experiment's real-pair section of docs/benchmarks.md (CPU preset only). PRESET cpu-real (default: 2D
# planned at 3.0 mm in-plane, hours on 2 CPU cores) or gpu-real (nnU-Net's own plans, one GPU; CONFIG=3d_fullres for
# 3D). Reruns resume (finished steps are skipped, an interrupted training continues from its checkpoint), so a run
# may span sessions: rerun the same command with the same BENCHMARK_DATE. The run's record (markers, logs, timing,
# per-case metrics, loss curves, the latest checkpoint of an unfinished training; no images, no finished models;
# saved every 10 minutes and after every method) is kept in ARCHIVE (default benchmarks/results/<preset>-record for
# unpaired, <preset>-<experiment>-record for the others, in this repository): commit it, and a rerun on another
# machine continues from it (finished runs are not trained again; the plan and preprocessing are redone and must
# match the recorded plan). Each experiment has its own result folder (semi and uda in subfolders of the output).
#
#   benchmarks/run_real.sh
#   BENCHMARK_DATE=2026-12-01 benchmarks/run_real.sh              # resume a run started on another day
#   EXPERIMENT=semi SEMI_LABELLED=10 SEEDS="0 1 2" benchmarks/run_real.sh
#   EXPERIMENT=uda UDA_DIRECTIONS=a2b benchmarks/run_real.sh
#   PRESET=gpu-real CONFIG=3d_fullres benchmarks/run_real.sh      # on a GPU
#   REALDATA=/path/to/abdomen benchmarks/run_real.sh               # the two raw datasets elsewhere
#   benchmarks/run_real.sh --epochs 1 --iters 2                   # extra options go to 'nnunet_unpaired benchmark'
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
EXPERIMENT="${EXPERIMENT:-unpaired}"
case "$EXPERIMENT" in
    unpaired)
        DEFAULT_METHODS="vanilla joint ummkd eam"
        EXPERIMENT_ARGS=(--scarce-b 2 --no-full-label)
        RESULT_OUT="$OUT" RECORD="$PRESET-record" SECTION=real ;;
    semi)
        DEFAULT_METHODS="cmc cmc-labelled-only"
        read -r -a SHARES <<< "${SEMI_LABELLED:-10 20}"
        EXPERIMENT_ARGS=(--semi-labelled "${SHARES[@]}")
        RESULT_OUT="$OUT/semi" RECORD="$PRESET-semi-record" SECTION=real-semi ;;
    uda)
        DEFAULT_METHODS="source-only glua-global glua-local glua"
        read -r -a DIRECTIONS <<< "${UDA_DIRECTIONS:-a2b b2a}"
        EXPERIMENT_ARGS=(--uda-directions "${DIRECTIONS[@]}")
        RESULT_OUT="$OUT/uda" RECORD="$PRESET-uda-record" SECTION=real-uda ;;
    *)
        echo "run_real.sh: EXPERIMENT must be unpaired, semi or uda (got '$EXPERIMENT')" >&2
        exit 2 ;;
esac
read -r -a METHOD_LIST <<< "${METHODS:-$DEFAULT_METHODS}"
read -r -a SEED_LIST <<< "${SEEDS:-0 1 2}"
"$PY" -m nnunet_unpaired.cli benchmark --preset "$PRESET" -c "$CONFIG" --pair 951 952 \
    --methods "${METHOD_LIST[@]}" "${EXPERIMENT_ARGS[@]}" --seeds "${SEED_LIST[@]}" \
    --output "$RESULT_OUT" --date "$DATE" --archive "${ARCHIVE:-$REPO/benchmarks/results/$RECORD}" \
    $([ "$PRESET" = cpu-real ] && echo --archive-checkpoints) "$@"

RESULT="$RESULT_OUT/Dataset951_AbdomenCT__Dataset952_AbdomenMR__${CONFIG}__$DATE"
if [ "$PRESET" = cpu-real ]; then
    "$PY" "$REPO/benchmarks/update_docs.py" "$RESULT" --section "$SECTION" --docs "$REPO/docs/benchmarks.md" \
        --copy-to "$REPO/benchmarks/results/${RECORD%-record}" --note "${BENCHMARK_MACHINE_NOTE:-}"
else
    echo "results: $RESULT/results.md (copy the tables into docs/benchmarks.md, GPU section, by hand)"
fi
