"""Benchmark evaluation and the recovery tables (paper Table 1 and Table 2).

Usage:
    python s1_peft/eval_benchmarks.py --profile tiny                       # held-out + 30 MATH500 problems
    python s1_peft/eval_benchmarks.py --profile paper --backend vllm --gpqa_path /secure/gpqa_diamond.csv
    python s1_peft/eval_benchmarks.py --benchmarks heldout --limit 16 --variants base,lora
    python s1_peft/eval_benchmarks.py --extra_runs tiny-r1-all-mlp,tiny-r1-all-attn   # retrained subsets
    python s1_peft/eval_benchmarks.py --regrade                            # regrade saved generations

Variants: base (adapter disabled), lora, full (the --full run), mlp_ablated / attn_ablated (all MLP or
all attention adapters ablated by hooks), plus --extra_runs. Greedy s1 generation with budget forcing
(think up to --think_tokens, then "<|im_start|>answer\\nAnswer:" and up to --answer_tokens).
Writes results/<profile>/eval/<name>/: generations/<variant>__<benchmark>.jsonl (every generation and
its grade; a finished file is reused), recovery.json, recovery_tables.md, recovery_bars.{pdf,png},
config.json (with the identity of every run) and argv.json.
"""

from rank1.config import parse_config
from rank1.logs import run_main
from rank1.training.config import EvalConfig
from rank1.training.stage import run_eval_benchmarks


def main(cfg: EvalConfig) -> None:
    run_eval_benchmarks(cfg)


if __name__ == "__main__":
    config = parse_config(EvalConfig, "eval", __doc__)
    run_main(main, config)
