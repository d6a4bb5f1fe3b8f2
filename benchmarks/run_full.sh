#!/usr/bin/env bash
# The full benchmark: nnU-Net's defaults (1000 epochs x 250 iterations, planned network), for a GPU.
#
#   benchmarks/run_full.sh --pair 701 702 --folds 0 1 2 3 4            # your raw datasets (need imagesTs/labelsTs)
#   benchmarks/run_full.sh --phantom --scarce-b 2                      # the phantom, 3d_fullres
#
# Every other option of 'nnunet_unpaired benchmark' can be added (-c 2d, --methods vanilla joint, --scarce-b N, ...).
# Environment: NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks), PYTHON.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${NNUNET_UNPAIRED_BENCHMARK_OUTPUT:-$HOME/nnunet_unpaired_benchmarks}"

exec "$PY" -m nnunet_unpaired.cli benchmark --preset full --output "$OUT" "$@"
