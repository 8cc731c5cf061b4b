#!/usr/bin/env bash
# The whole pipeline, in the paper's order, on one profile (default: the embedded tiny profile).
# Usage: bash run_all.sh [--profile tiny|paper|test|FILE.toml] [--dry-run]
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

# The stages, in order: name | runner (py: the Python above; bash) | devices | disk | script from the repository
# root [args]. Each runs with --profile added. devices and disk name what the dry run reports for the stage (the keys
# of rank1.pipeline.DEVICES and rank1.pipeline.DISK; '-' for small JSON and figures). rank1/pipeline/stages.py reads this
# table when it runs or plans; a new stage is one line here.
: <<'STAGES'
# 0. The rank-1 LoRA, the full finetune, and the recovery tables (paper Tables 1 and 2)
0.0 train LoRA                       | bash | train     | adapter     | 0_train_lora.sh
0.1 train full                       | bash | train     | full        | 0_train_lora.sh --full
eval_benchmarks                      | py   | eval      | -           | s1_peft/eval_benchmarks.py
# 1. Adapter ablations and Figure 1: which layers and adapter types carry the effect
1.0_generate_ablation_data           | py   | model     | -           | 1_lora_adapter_ablations/1.0_generate_ablation_data.py
1.1_visualize_ablation_results       | py   | artifacts | -           | 1_lora_adapter_ablations/1.1_visualize_ablation_results.py
lora_ablation_all_by_type            | py   | artifacts | -           | 1_lora_adapter_ablations/lora_ablation_all_by_type.py
iterative_mlp_ablation_by_matrix     | py   | model     | -           | 1_lora_adapter_ablations/iterative_mlp_ablation_by_matrix.py
lora_layer_ablation_kl_visualization | py   | model     | -           | 1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py
# 2. Adapter activations vs. MLP neurons and random directions: stores, top-k, dashboard, autointerp, Figure 2
2.0_extract_lora_activations         | py   | extract   | store       | 2_lora_activation_interp/2.0_extract_lora_activations.py
2.1_precompute_lora_topk             | py   | artifacts | -           | 2_lora_activation_interp/2.1_precompute_lora_topk.py
2.3_lora_activation_dashboard        | py   | artifacts | -           | 2_lora_activation_interp/2.3_lora_activation_dashboard.py
2.4_extract_mlp_activations          | py   | extract   | mlp_store   | 2_lora_activation_interp/2.4_extract_mlp_activations.py
2.5_precompute_mlp_topk              | py   | artifacts | -           | 2_lora_activation_interp/2.5_precompute_mlp_topk.py
2.6_extract_random_activations       | py   | extract   | store       | 2_lora_activation_interp/2.6_extract_random_activations.py
2.6_precompute_random_topk           | py   | artifacts | -           | 2_lora_activation_interp/2.6_precompute_random_topk.py
2.2_run_lora_autointerp              | py   | llm2      | -           | 2_lora_activation_interp/2.2_run_lora_autointerp.py
2.7_run_mlp_autointerp               | py   | llm2      | -           | 2_lora_activation_interp/2.7_run_mlp_autointerp.py
2.6_run_random_autointerp            | py   | llm2      | -           | 2_lora_activation_interp/2.6_run_random_autointerp.py
2.3_analyze_lora_interpretability    | py   | artifacts | -           | 2_lora_activation_interp/2.3_analyze_lora_interpretability.py
2.3_analyze_mlp_interpretability     | py   | artifacts | -           | 2_lora_activation_interp/2.3_analyze_lora_interpretability.py --kind mlp
2.3_analyze_random_interpretability  | py   | artifacts | -           | 2_lora_activation_interp/2.3_analyze_lora_interpretability.py --kind random
2.8_compare_lora_mlp                 | py   | artifacts | -           | 2_lora_activation_interp/2.8_compare_lora_mlp.py
# 3. The BatchTopK SAE on the adapter state, its features, categories and Figure 3
3.0_train_sae                        | py   | sae       | sae         | 3_lora_sae/3.0_train_sae.py
3.1_collect_sae_features             | py   | artifacts | -           | 3_lora_sae/3.1_collect_sae_features.py
3.3.0_autointerp                     | py   | llm3      | -           | 3_lora_sae/3.3_autointerp/3.3.0_autointerp.py
3.3.1_categorize                     | py   | llm3      | -           | 3_lora_sae/3.3_autointerp/3.3.1_categorize.py
3.2_generate_sae_dashboard           | py   | artifacts | -           | 3_lora_sae/3.2_generate_sae_dashboard.py
3.3.2_compute_activation_densities   | py   | artifacts | -           | 3_lora_sae/3.3_autointerp/3.3.2_compute_activation_densities.py
3.3.3_create_donut_fig               | py   | artifacts | -           | 3_lora_sae/3.3_autointerp/3.3.3_create_donut_fig.py
# 4. Interventions: weight geometry, attribution, steering, counterfactual rollouts, correctness probes
4.4_weight_geometry                  | py   | weights   | -           | 4_lora_interventions/4.4_weight_geometry.py
4.1_attribution                      | py   | model     | -           | 4_lora_interventions/4.1_attribution.py
4.0_steering                         | py   | model     | -           | 4_lora_interventions/4.0_steering.py
4.2_counterfactual_rollouts          | py   | rollouts  | -           | 4_lora_interventions/4.2_counterfactual_rollouts.py
4.3_correctness_probes               | py   | artifacts | -           | 4_lora_interventions/4.3_correctness_probes.py
# 5. SAE-LoRA: a low-rank finetune in the latent space of a residual-stream SAE
5.0_make_behavior_dataset            | py   | behaviour | -           | 5_sae_latent_lora/5.0_make_behavior_dataset.py
5.1_train_residual_sae               | py   | sae       | resid_store | 5_sae_latent_lora/5.1_train_residual_sae.py
5.2_train_sae_lora                   | py   | model     | -           | 5_sae_latent_lora/5.2_train_sae_lora.py
5.3_train_standard_lora              | py   | model     | -           | 5_sae_latent_lora/5.3_train_standard_lora.py
5.4_analyze                          | py   | model     | -           | 5_sae_latent_lora/5.4_analyze.py
# 6. Feature pages (what each direction reads, writes, does); the report: did the paper's claims hold here?
6.0_feature_pages                    | py   | artifacts | -           | 6_report/6.0_feature_pages.py
6.1_write_report                     | py   | artifacts | -           | 6_report/6.1_write_report.py
STAGES

exec "$PY" -m rank1.pipeline "$@"
