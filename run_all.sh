#!/usr/bin/env bash
# The whole pipeline, in the paper's order, on one profile (default: the embedded tiny profile).
# Usage: bash run_all.sh [--profile tiny]
# Each stage skips work whose artifacts already exist, so a killed run continues where it stopped.
# GPQA_PATH=/secure/gpqa_diamond.csv adds GPQA-Diamond where the profile's [eval] benchmarks list it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
export PYTHON="$PY"
PROFILE="${RANK1_PROFILE:-tiny}"
[ "${1:-}" = "--profile" ] && PROFILE="$2"

# 0. Train the rank-1 LoRA on reasoning traces (writes s1_peft/ckpts_lora/<run>/)
bash "$REPO/0_train_lora.sh" --profile "$PROFILE"

# 0.1 Train the full finetune, the baseline of every recovery number (writes s1_peft/ckpts_full/<profile>-full/)
bash "$REPO/0_train_lora.sh" --profile "$PROFILE" --full

# 0.2 Benchmarks for base, LoRA, full finetune, MLP- and attention-ablated LoRA; the recovery tables
#     (paper Table 1 and Table 2; writes results/<profile>/eval/<run>/)
"$PY" "$REPO/s1_peft/eval_benchmarks.py" --profile "$PROFILE" ${GPQA_PATH:+--gpqa_path "$GPQA_PATH"}
