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

# 1. Adapter ablations and Figure 1: which layers and adapter types carry the effect
#    (writes results/<profile>/ablations/<run>/)
"$PY" "$REPO/1_lora_adapter_ablations/1.0_generate_ablation_data.py" --profile "$PROFILE"
"$PY" "$REPO/1_lora_adapter_ablations/1.1_visualize_ablation_results.py" --profile "$PROFILE"
"$PY" "$REPO/1_lora_adapter_ablations/lora_ablation_all_by_type.py" --profile "$PROFILE"
"$PY" "$REPO/1_lora_adapter_ablations/iterative_mlp_ablation_by_matrix.py" --profile "$PROFILE"
"$PY" "$REPO/1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py" --profile "$PROFILE"
