#!/usr/bin/env bash
# The whole pipeline, in the paper's order, on one profile (default: the embedded tiny profile).
# Usage: bash run_all.sh [--profile tiny]
# Each stage skips work whose artifacts already exist, so a killed run continues where it stopped.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
PROFILE="${RANK1_PROFILE:-tiny}"
[ "${1:-}" = "--profile" ] && PROFILE="$2"

# 0. Train the rank-1 LoRA on reasoning traces (writes s1_peft/ckpts_lora/<run>/)
bash "$REPO/0_train_lora.sh" --profile "$PROFILE"

# 0.1 Held-out loss and exact-match accuracy, base vs. adapter (writes <run>/eval_heldout.json)
"$PY" "$REPO/s1_peft/eval_heldout.py" --profile "$PROFILE"
