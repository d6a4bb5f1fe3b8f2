# Sourced by the benchmarks/run_*.sh scripts: the repository, its Python, the output folder and the result date.
# PYTHON (default: the repository's .venv), NNUNET_UNPAIRED_BENCHMARK_OUTPUT (default ~/nnunet_unpaired_benchmarks),
# BENCHMARK_DATE (default today; set it to resume a run started on another day).
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${NNUNET_UNPAIRED_BENCHMARK_OUTPUT:-$HOME/nnunet_unpaired_benchmarks}"
DATE="${BENCHMARK_DATE:-$(date +%F)}"
