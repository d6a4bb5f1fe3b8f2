#!/usr/bin/env bash
# Set up the environment and run the whole test suite (the README's test command; CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (pytest-xdist; a file's tests stay together on one worker, and so do the files that share a session
# fixture's work, slow files first: tests/conftest.py). Most of the suite's time is nnU-Net subprocesses starting up
# (torch import + nnU-Net's trainer lookup, about 13 s each), which uses one core, so two workers nearly halve the wall
# time on 2 cores. TEST_WORKERS=0 runs in one process.
# Files run longest first (tests/file_durations.json); TEST_RECORD_DURATIONS=1 rewrites that file from this run.
WORKERS=${TEST_WORKERS:-2}
PARALLEL=()
# --no-loadscope-reorder: xdist would otherwise reorder the files by their number of tests (most first), which put
# the long one-test files (demo, real data) last and left one worker idle at the end
[ "$WORKERS" != 0 ] && PARALLEL=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
exec .venv/bin/python -m pytest -ra --durations=25 "${PARALLEL[@]}" "$@"
