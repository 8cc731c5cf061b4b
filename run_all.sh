#!/usr/bin/env bash
# The whole pipeline, in the paper's order, on one profile (default: the embedded tiny profile).
# Usage: bash run_all.sh [--profile tiny|paper|test|FILE.toml] [--dry-run]
# The stage list lives in rank1/pipeline.py (one list for the run and for the plan).
# Each stage skips work whose artifacts already exist, so a killed run continues where it stopped; a failing
# stage names itself and the command that reruns it; wall times go to logs/run_all-<profile>-times.tsv.
# --dry-run prints each stage's command, devices and disk, checks the profile's ids and paths, runs nothing.
# Environment: PYTHON (default .venv/bin/python), RANK1_PROFILE, RANK1_ROOT (where outputs go),
#   GPQA_PATH=/secure/gpqa_diamond.csv adds GPQA-Diamond where the profile's [eval] benchmarks list it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
export PYTHON="$PY"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m rank1.pipeline "$@"
