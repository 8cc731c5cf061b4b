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
TIMES="${RANK1_ROOT:-$REPO}/logs/run_all-$PROFILE-times.tsv"
mkdir -p "$(dirname "$TIMES")"

# Run one stage command; print and log its wall time; on failure name the stage and how to rerun it.
stage() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  if ! "$@"; then
    echo "error: stage '$name' failed; rerun it with: $*  (or rerun run_all.sh: finished stages are skipped)" >&2
    exit 1
  fi
  printf '%s\t%s\t%ss\n' "$(date +%FT%T)" "$name" "$((SECONDS - t0))" | tee -a "$TIMES"
}

# 0. Train the rank-1 LoRA on reasoning traces (writes s1_peft/ckpts_lora/<run>/)
stage "0.0 train LoRA" bash "$REPO/0_train_lora.sh" --profile "$PROFILE"

# 0.1 Train the full finetune, the baseline of every recovery number (writes s1_peft/ckpts_full/<profile>-full/)
stage "0.1 train full" bash "$REPO/0_train_lora.sh" --profile "$PROFILE" --full

# 0.2 Benchmarks for base, LoRA, full finetune, MLP- and attention-ablated LoRA; the recovery tables
#     (paper Table 1 and Table 2; writes results/<profile>/eval/<run>/)
stage "eval_benchmarks" "$PY" "$REPO/s1_peft/eval_benchmarks.py" --profile "$PROFILE" ${GPQA_PATH:+--gpqa_path "$GPQA_PATH"}

# 1. Adapter ablations and Figure 1: which layers and adapter types carry the effect
#    (writes results/<profile>/ablations/<run>/)
stage "1.0_generate_ablation_data" "$PY" "$REPO/1_lora_adapter_ablations/1.0_generate_ablation_data.py" --profile "$PROFILE"
stage "1.1_visualize_ablation_results" "$PY" "$REPO/1_lora_adapter_ablations/1.1_visualize_ablation_results.py" --profile "$PROFILE"
stage "lora_ablation_all_by_type" "$PY" "$REPO/1_lora_adapter_ablations/lora_ablation_all_by_type.py" --profile "$PROFILE"
stage "iterative_mlp_ablation_by_matrix" "$PY" "$REPO/1_lora_adapter_ablations/iterative_mlp_ablation_by_matrix.py" --profile "$PROFILE"
stage "lora_layer_ablation_kl_visualization" "$PY" "$REPO/1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py" --profile "$PROFILE"

# 2.0 Every adapter's scalar activation per token over the training corpus (results/<profile>/lora_activations/<run>/)
stage "2.0_extract_lora_activations" "$PY" "$REPO/2_lora_activation_interp/2.0_extract_lora_activations.py" --profile "$PROFILE"

# 2.1 Top-k examples, quantiles, histograms and scoring samples per adapter and polarity (.../lora_topk/<run>/)
stage "2.1_precompute_lora_topk" "$PY" "$REPO/2_lora_activation_interp/2.1_precompute_lora_topk.py" --profile "$PROFILE"

# 2.3 Static HTML dashboard of the adapter activations (.../lora_dashboard/<run>/index.html)
stage "2.3_lora_activation_dashboard" "$PY" "$REPO/2_lora_activation_interp/2.3_lora_activation_dashboard.py" --profile "$PROFILE"

# 2.4-2.5 The MLP-neuron baseline: base-model neurons, same corpus, same count per layer, same top-k
stage "2.4_extract_mlp_activations" "$PY" "$REPO/2_lora_activation_interp/2.4_extract_mlp_activations.py" --profile "$PROFILE"
stage "2.5_precompute_mlp_topk" "$PY" "$REPO/2_lora_activation_interp/2.5_precompute_mlp_topk.py" --profile "$PROFILE"

# 2.2, 2.7 Autointerp: explain, rate, categorise and score (held out) every LoRA feature and MLP neuron
stage "2.2_run_lora_autointerp" "$PY" "$REPO/2_lora_activation_interp/2.2_run_lora_autointerp.py" --profile "$PROFILE"
stage "2.7_run_mlp_autointerp" "$PY" "$REPO/2_lora_activation_interp/2.7_run_mlp_autointerp.py" --profile "$PROFILE"
# 2.3 Class shares with bootstrap CIs by layer bin and projection, both sides
stage "2.3_analyze_lora_interpretability" "$PY" "$REPO/2_lora_activation_interp/2.3_analyze_lora_interpretability.py" --profile "$PROFILE"
stage "2.3_analyze_mlp_interpretability" "$PY" "$REPO/2_lora_activation_interp/2.3_analyze_lora_interpretability.py" --profile "$PROFILE" --kind mlp
# 2.8 LoRA directions vs. MLP neurons: Figure 2 (results/<profile>/lora_vs_mlp/<run>/)
stage "2.8_compare_lora_mlp" "$PY" "$REPO/2_lora_activation_interp/2.8_compare_lora_mlp.py" --profile "$PROFILE"

# 3.0 BatchTopK SAE (SAELens) on the adapter state; held-out FVU, L0, dead fraction, loss-gap share (results/<profile>/sae/<run>/)
stage "3.0_train_sae" "$PY" "$REPO/3_lora_sae/3.0_train_sae.py" --profile "$PROFILE"
# 3.1 Top examples, densities and decoder loadings of the alive SAE features (.../sae_features/<run>/)
stage "3.1_collect_sae_features" "$PY" "$REPO/3_lora_sae/3.1_collect_sae_features.py" --profile "$PROFILE"
# 3.3.0-3.3.1 Explanations with held-out scores, then the paper's 7 categories (.../sae_autointerp/<run>/)
stage "3.3.0_autointerp" "$PY" "$REPO/3_lora_sae/3.3_autointerp/3.3.0_autointerp.py" --profile "$PROFILE"
stage "3.3.1_categorize" "$PY" "$REPO/3_lora_sae/3.3_autointerp/3.3.1_categorize.py" --profile "$PROFILE"
# 3.2 Static SAE feature dashboard with explanations and categories (.../sae_dashboard/<run>/index.html)
stage "3.2_generate_sae_dashboard" "$PY" "$REPO/3_lora_sae/3.2_generate_sae_dashboard.py" --profile "$PROFILE"
# 3.3.2 Activation mass per category; 3.3.3 Figure 3 donut (.../sae_autointerp/<run>/)
stage "3.3.2_compute_activation_densities" "$PY" "$REPO/3_lora_sae/3.3_autointerp/3.3.2_compute_activation_densities.py" --profile "$PROFILE"
stage "3.3.3_create_donut_fig" "$PY" "$REPO/3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py" --profile "$PROFILE"

# 4. Interventions: weight geometry, attribution, steering, counterfactual rollouts, correctness probes
#    (writes results/<profile>/{weight_geometry,attribution,steering,rollouts,probes}/<run>/)
stage "4.4_weight_geometry" "$PY" "$REPO/4_lora_interventions/4.4_weight_geometry.py" --profile "$PROFILE"
stage "4.1_attribution" "$PY" "$REPO/4_lora_interventions/4.1_attribution.py" --profile "$PROFILE"
stage "4.0_steering" "$PY" "$REPO/4_lora_interventions/4.0_steering.py" --profile "$PROFILE"
stage "4.2_counterfactual_rollouts" "$PY" "$REPO/4_lora_interventions/4.2_counterfactual_rollouts.py" --profile "$PROFILE"
stage "4.3_correctness_probes" "$PY" "$REPO/4_lora_interventions/4.3_correctness_probes.py" --profile "$PROFILE"
