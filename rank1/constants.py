"""Names shared by every stage: projections, artifact file names, environment variables."""

# The seven projections adapted in every selected layer, in the order the paper counts them.
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTN_PROJECTIONS + MLP_PROJECTIONS

# Environment variables that move the whole project without editing code.
ENV_ROOT = "RANK1_ROOT"  # every output and cache path derives from this directory
ENV_CACHE = "RANK1_CACHE"  # converted models (default <root>/cache), shareable between roots
ENV_PROFILE = "RANK1_PROFILE"  # profile name or path to a profile TOML

# Files written into a run folder.
ADAPTER_DIR = "adapter"  # PEFT adapter (adapter_config.json + adapter_model.safetensors)
FULL_MODEL_DIR = "model"  # full-finetune weights
CONFIG_JSON = "config.json"  # resolved config of the stage that wrote the folder
ARGV_JSON = "argv.json"  # command line and environment facts of that stage
LOSS_LOG_JSON = "loss_log.json"  # one record per optimizer step
LOSS_CURVE_PDF = "loss_curve.pdf"
LOSS_CURVE_PNG = "loss_curve.png"
CHECKPOINTS_DIR = "checkpoints"  # intermediate Trainer checkpoints (removed after a clean finish)
CHECKPOINT_DONE = "CHECKPOINT_COMPLETE"  # marker written after a checkpoint is fully on disk
RESUME_STAMP = "settings.json"  # in a folder of partial work: the settings and inputs it was started with

# Files written into results/<profile>/eval/<name>/ by the benchmark evaluation.
GENERATIONS_DIR = "generations"  # <variant>__<benchmark>.jsonl: every generation with its grade
RECOVERY_JSON = "recovery.json"  # accuracy and recovery estimates with CIs
RECOVERY_MD = "recovery_tables.md"  # paper Table 1 and Table 2 layout, paper numbers beside ours
RECOVERY_PDF = "recovery_bars.pdf"
RECOVERY_PNG = "recovery_bars.png"

# Files written into data/<profile>/ for generated data.
TRAIN_JSONL = "train.jsonl"
EVAL_JSONL = "eval.jsonl"  # held-out loss and exact-match report

# The s1 assistant-turn layout.
THINK_TAG = "<|im_start|>think"
ANSWER_TAG = "<|im_start|>answer"
ANSWER_PREFIX = "Answer: "
IGNORE_INDEX = -100  # label of a token that is not a training target (padding, prompt)

# Stage 2: activation stores, top-k examples and dashboards (under results/<profile>/<stage>/<run>/).
STORE_MANIFEST = "manifest.json"  # written last: a store without it did not finish
STORE_SHARDS_DIR = "shards"  # shard_00000.safetensors, ... (activations, token ids, doc ids, positions)
TOPK_TENSORS = "topk.safetensors"  # top-k / decile / random examples with contexts, histograms, quantiles
TOPK_FEATURES = "features.json"  # one record per feature (site x polarity), in tensor row order
TOPK_VOCAB = "vocab.json"  # token id -> decoded string for every token the examples show
DASHBOARD_INDEX = "index.html"

# Stage 1 (adapter ablations): results/<profile>/ablations/<run>/
ABLATION_STAGE = "ablations"
ABLATION_JSON = "ablation_results.json"  # config, sample, run identity, means with bootstrap CIs
ABLATION_TOKENS = "ablation_per_token.safetensors"  # per-token KL / CE change of every ablation
ABLATION_PARTIAL_DIR = ".partial"  # finished sample batches of an interrupted sweep
FIGURE1_STEM = "lora_component_ablation_final"  # Figure 1 (.pdf and .png)
BY_TYPE_JSON = "ablation_all_by_type.json"
BY_TYPE_STEM = "lora_ablation_all_by_type"
ITERATIVE_JSON = "iterative_mlp_ablation.json"
ITERATIVE_STEM = "iterative_mlp_ablation_by_matrix"
TOKEN_KL_JSON = "layer_ablation_token_kl.json"  # mean KL by class of predicted token
TOKEN_KL_STEM = "lora_layer_ablation_kl_visualization"

# Stage 2 part 2 (autointerp): results/<profile>/{lora,mlp}_autointerp/<run>/ (explanations and held-out scores),
# {lora,mlp}_interpretability/<run>/ (2.3's class shares), lora_vs_mlp/<run>/ (2.8, Figure 2).
AUTOINTERP_STAGE = "{kind}_autointerp"  # kind: lora | mlp (stage 3 adds its own)
INTERPRETABILITY_STAGE = "{kind}_interpretability"
COMPARE_STAGE = "lora_vs_mlp"
AUTOINTERP_RESULTS = "explanations.jsonl"  # one record per feature, in feature order (finished runs only)
AUTOINTERP_JOURNAL = "explanations.partial.jsonl"  # settings key, then features as they finish (resume)
AUTOINTERP_SUMMARY = "summary.json"  # counts, mean scores, requests and tokens
AUTOINTERP_CACHE = "autointerp"  # under the cache root: one JSON per (model, request)
INTERPRETABILITY_JSON = "interpretability.json"  # class shares with CIs by layer bin and projection, scores
INTERPRETABILITY_STEM = "interpretability"
COMPARE_JSON = "lora_vs_mlp.json"  # shares, chi-square, rank tests, category enrichment, the paper's numbers
FIGURE2_STEM = "lora_vs_mlp_interpretability"  # Figure 2 (.pdf and .png)
ENV_LLM_BASE_URL = "OPENAI_BASE_URL"  # the LLM endpoint when the profile leaves llm_base_url empty
ENV_LLM_MODEL = "RANK1_LLM_MODEL"  # the LLM model when the profile leaves llm_model empty

# Stage 3 (SAE on the adapter state): results/<profile>/<stage>/<run>/
SAE_STAGE = "sae"  # 3.0: the SAELens folder (cfg.json + sae_weights.safetensors) + our metadata
SAE_FEATURES_STAGE = "sae_features"  # 3.1: top-k folder (TOPK_* files) of the alive latents + SAE_LATENTS
SAE_DASHBOARD_STAGE = "sae_dashboard"  # 3.2
SAE_AUTOINTERP_STAGE = "sae_autointerp"  # 3.3: explanations, categories, category densities, Figure 3
SAE_METRICS_JSON = "sae_metrics.json"  # held-out FVU, L0, dead/alive fractions, loss-gap share
SAE_TRAIN_LOG_JSON = "sae_train_log.json"  # losses every few steps
SAE_LATENTS = "latents.safetensors"  # per latent: firing count, activation mass, max, decoder row (all latents)
CATEGORIES_JSON = "categories.json"  # {"categories": [...], "features": {name: {category, subcategory}}}
CATEGORY_DENSITIES_JSON = "category_densities.json"  # activation mass and firing shares per (sub)category
FIGURE3_STEM = "sae_feature_categories_donut"  # Figure 3 (.pdf and .png)

# Stage 4 (interventions): results/<profile>/<stage>/<run>/
GEOMETRY_STAGE = "weight_geometry"
GEOMETRY_JSON = "weight_geometry.json"  # norms, layer x layer and cross-projection cosines, chance levels
GEOMETRY_STEM = "weight_geometry"  # weight_geometry_<figure>.{pdf,png}
STEERING_STAGE = "steering"
STEERING_JSON = "steering.json"  # per setting: KL, marker rates, accuracy, length, repetition
STEERING_GENERATIONS = "steering_generations.jsonl"  # a few generations per setting
STEERING_PARTIAL_DIR = ".partial"  # finished settings of an interrupted sweep
STEERING_STEM = "steering_curves"
ATTRIBUTION_STAGE = "attribution"
ATTRIBUTION_JSON = "attribution.json"  # top adapters per problem, agreement with zeroing
ATTRIBUTION_TENSORS = "attribution.safetensors"  # adapters x positions attribution per problem
ATTRIBUTION_STEM = "attribution_by_adapter"  # mean |attr| per adapter, layer x projection
ATTRIBUTION_CHECK_STEM = "attribution_vs_zeroing"  # predicted vs actual change when zeroing
ATTRIBUTION_PARTIAL_DIR = ".partial"  # finished problems of an interrupted run
ATTRIBUTION_HTML_DIR = "html"  # the adapters x positions dashboard
ROLLOUTS_STAGE = "rollouts"
ROLLOUTS_JSONL = "rollouts.jsonl"  # every sampled rollout with its grade
ROLLOUTS_ACTS = "rollout_activations.safetensors"  # per rollout: mean adapter activations (trace, last tokens)
ROLLOUTS_JSON = "counterfactual.json"  # paired correct vs incorrect differences per adapter, tests
ROLLOUTS_STEM = "counterfactual_differences"
ROLLOUTS_PARTIAL_DIR = ".partial"  # finished groups of problems of an interrupted run
PROBES_STAGE = "probes"
PROBES_JSON = "probes.json"  # ROC-AUC with CIs of each probe and baseline
PROBES_STEM = "probe_auc"

# Stage 5 (SAE-LoRA: a low-rank finetune in an SAE's latent space): results/<profile>/sae_lora/<name>/
SAE_LORA_STAGE = "sae_lora"
BEHAVIOR_DIR = "data"  # train.jsonl (n modified + n unmodified), heldout.jsonl (inside and outside the condition)
BEHAVIOR_TRAIN = "train.jsonl"
BEHAVIOR_HELDOUT = "heldout.jsonl"
BEHAVIOR_INFO = "dataset.json"  # how the data was made, counts, seed
RESID_STORE_DIR = "resid_store"  # the activation store of the residual entering the hook layer
RESID_SAE_DIR = "sae"  # the SAELens SAE (cfg.json + sae_weights.safetensors) + its metrics
RESID_SAE_METRICS = "resid_sae_metrics.json"  # FVU, L0, dead fraction, spliced CE vs clean / zero / mean ablation
ADAPTERS_DIR = "adapters"  # one folder per (penalty, l1_weight)
SAE_LORA_WEIGHTS = "adapter.safetensors"  # A [d_sae, r], B [r, d_sae], s [r]
SAE_LORA_CONFIG = "adapter_config.json"  # settings (incl. data and SAE identity), d_sae, steps; written last
SAE_LORA_LOG = "train_log.json"  # per step: CE, penalty, raw norms, s, Hoyer sparsity of the directions
STANDARD_LORA_DIR = "standard_lora"  # the rank-1 LoRA baseline of rank1.training.train on layers l..L-1
SAE_LORA_RESULTS = "sae_lora_results.json"  # every number of 5.4
SAE_LORA_SWEEP_STEM = "sae_lora_sweep"  # sparsity and behaviour vs l1 weight, both penalties
SAE_LORA_WEIGHTS_STEM = "sae_lora_directions"  # sorted magnitudes of the read and write directions
