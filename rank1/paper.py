"""The paper's numbers, in one table: every artifact, figure and report that sets ours beside theirs reads
them here (sources: the paper's text and tables, and the authors' committed outputs; see REFERENCE.md)."""

# Recovery of the full finetune's gain in %, paper Table 1 (rank-1 LoRA) and Table 2 (ablated adapters);
# cells the sources do not give are absent.
PAPER_RECOVERY = {
    "lora": {"aime24": 72.73, "math500": 86.36, "gpqa": 89.90},
    "mlp_ablated": {"aime24": -37.50},
    "attn_ablated": {"aime24": 50.02},
}

# Stage 2: autointerp ratings of LoRA directions vs. MLP neurons, and the category enrichment (keys of the
# lexicon scheme: "operators" is "Mathematical Operators", "answer" is "Answer and Solution Markers").
PAPER_INTERP = {
    "monosemantic_share_text": {"lora": 0.224, "mlp": 0.202},
    "committed_table": {"lora": {"n": 367, "monosemantic": 0.161, "broad but consistent": 0.398,
                                 "polysemantic": 0.441},
                        "mlp": {"n": 376, "monosemantic": 0.130, "broad but consistent": 0.266,
                                "polysemantic": 0.604},
                        "chi_square": 20.3},
    "enrichment": {"operators": 8.5, "answer": 3.0, "procedure": 2.2},
}

# Stage 1: which adapters carry the effect in Qwen2.5-32B (64 layers).
PAPER_ABLATION = {
    "n_layers": 64,
    "largest_kl_projection": "gate_proj",
    "mlp_vs_attention": "all MLP adapters ablated >> all attention adapters ablated (Table 2; no KL given)",
    "dominant_layers": (44, 45, 46, 62),
}

# Stage 3: the BatchTopK SAE on the 448-d adapter state (expansion 8, k 16); the paper gives no FVU.
PAPER_SAE = {"d_in": 448, "d_sae": 3584, "k": 16, "n_alive": 2000, "fvu": None}

# Side experiments: steering needed magnitudes over 50x the normal activations.
PAPER_STEERING = {"magnitude": 50.0}
