"""Stage 1: where in a trace an ablation matters, from 1.0's per-token KL (no model is loaded).

Draws the per-token KL(P_full || P_ablated) along one sample sequence for the layers whose removal
costs most, with the predicted tokens on the axis, and summarises the whole sample by class of the
predicted token ("Wait", answer markers, digits, operators, newlines, other): mean KL per class and
each class's share of the KL mass next to its share of the tokens.

Usage:
    python 1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py                # tiny profile
    python 1_lora_adapter_ablations/lora_layer_ablation_kl_visualization.py --viz_sequence 3 --viz_top 4

Writes layer_ablation_token_kl.json and lora_layer_ablation_kl_visualization.pdf/.png beside
ablation_results.json.
"""

import logging

import numpy as np

from rank1 import constants as K
from rank1.ablation.sweep import AblationConfig, load_per_token, read_result, results_folder
from rank1.ablation.plots import token_kl
from rank1.artifacts import write_json
from rank1.config import parse_config
from rank1.logs import run_main
from rank1.models import load_tokenizer
from rank1.tokens import TOKEN_CLASSES, token_class

log = logging.getLogger("lora_layer_ablation_kl_visualization")


def class_summary(kl_AN: np.ndarray, names: list[str], classes_N: np.ndarray) -> dict:
    """Per ablation: mean KL of the tokens of each class, and the class's share of all KL mass."""
    present = [c for c in TOKEN_CLASSES if (classes_N == c).any()]
    masks = [classes_N == c for c in present]
    total = kl_AN.sum(1)
    return {"classes": present, "n_tokens": [int(m.sum()) for m in masks],
            "token_share": [float(m.mean()) for m in masks],
            "mean_kl": {n: [float(kl_AN[a, m].mean()) for m in masks] for a, n in enumerate(names)},
            "kl_share": {n: [float(kl_AN[a, m].sum() / total[a]) if total[a] > 0 else None for m in masks]
                         for a, n in enumerate(names)}}


def main(cfg: AblationConfig) -> None:
    folder = results_folder(cfg)
    report = read_result(folder, K.ABLATION_JSON, "1.0_generate_ablation_data.py")
    if "layer" not in report:
        raise ValueError(f"{folder / K.ABLATION_JSON} has no leave-one-layer-out results: run 1.0 with the "
                         f"layer family")
    tensors, names = load_per_token(folder / report["per_token_file"])
    ptr, iptr = tensors["seq_ptr"].numpy(), tensors["input_ptr"].numpy()
    n_seq = len(ptr) - 1
    if not 0 <= cfg.viz_sequence < n_seq:
        raise ValueError(f"--viz_sequence {cfg.viz_sequence} out of range: the sample has sequences 0..{n_seq - 1}")
    tokenizer = load_tokenizer(report["identity"]["base_model"])
    ids, pos = tensors["input_ids"].numpy(), tensors["positions"].numpy()
    seq_of = np.repeat(np.arange(n_seq), np.diff(ptr))
    predicted = ids[iptr[seq_of] + pos + 1]
    texts = [tokenizer.decode([int(t)]) for t in predicted]
    classes = np.array([token_class(t) for t in texts])
    shown = [n for n in names if n.startswith("L") and "." not in n or n in ("mlp", "attn", "all")]
    kl = tensors["kl"].double().numpy()
    summary = class_summary(kl[[names.index(n) for n in shown]], shown, classes)
    layer_kl = dict(zip([f"L{lay}" for lay in report["layer"]["layers"]], report["layer"]["kl"]["mean"], strict=True))
    top = sorted(layer_kl, key=lambda n: -layer_kl[n])[:cfg.viz_top]
    s = cfg.viz_sequence
    cols = slice(ptr[s], ptr[s + 1])
    write_json(folder / K.TOKEN_KL_JSON, {
        "run": report["run"], "identity": report["identity"], "kl_direction": report["kl_direction"],
        "token": "each position is classed by the token it predicts (the next token)",
        "top_layers": top, "sequence": s, "record_index": report["sample"]["indices"][s], **summary})
    title = (f"sequence {s} (record {report['sample']['indices'][s]}): per-token KL(P_full || P_ablated); "
             f"tick = predicted token")
    for path in token_kl(texts[cols], {n: kl[names.index(n), cols] for n in top},
                         {**summary, "mean_kl": {n: summary["mean_kl"][n] for n in top}}, title,
                         folder / K.TOKEN_KL_STEM):
        log.info("wrote %s", path)
    for n in top:
        log.info("%s removed: share of KL / share of tokens by predicted-token class: %s", n, ", ".join(
            f"{c} {k:.3f}/{t:.3f}" for c, k, t in zip(summary["classes"], summary["kl_share"][n],
                                                      summary["token_share"], strict=True)))


if __name__ == "__main__":
    run_main(main, parse_config(AblationConfig, "ablation", __doc__))
