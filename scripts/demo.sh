#!/usr/bin/env bash
# Set up the environment and run the end-to-end demo on built-in synthetic data (the README's main command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nnunet_unpaired demo "$@"
