#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: nnU-Net, torch + a MATCHING torchvision, this
# package in editable mode with its test extra. Safe to rerun. Used by scripts/demo.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch and torchvision must be a matching pair, or nnU-Net's trainer lookup crashes when it imports torchvision
# (see README, "Installation"). The constraints file pins a pair that exists on the package index.
echo "[setup] installing nnunet-unpaired and its dependencies (first run: several minutes, torch is large)"
LOG=$(mktemp)
if ! "${PIP[@]}" install -c scripts/constraints.txt -e ".[test]" >"$LOG" 2>&1; then
    grep -v "is ignored: it is neither" "$LOG" | tail -40
    echo "[setup] pip install failed (full log: $LOG)" >&2
    exit 1
fi
rm -f "$LOG"
.venv/bin/python - <<'PY'
import torch, torchvision
from torchvision.ops import nms  # raises when torch and torchvision do not match
nms(torch.rand(2, 4), torch.rand(2), 0.5)
import importlib.metadata, nnunetv2, nnunet_unpaired
print(f"[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"nnunetv2 {importlib.metadata.version('nnunetv2')}, "
      f"cuda available: {torch.cuda.is_available()}")
PY
