"""Payloads of the attribution dashboard (adapters x positions per problem), from saved results only."""

from __future__ import annotations

from typing import Any

import torch


def build_payloads(report: dict[str, Any], attr: dict[str, torch.Tensor], vocab_of, n_rows: int,
                   title: str) -> tuple[dict, dict[str, dict]]:
    """(index, {page key: problem payload}); ``attr`` holds ``attr_ST_<i>`` and ``ids_T_<i>`` per problem,
    ``vocab_of(ids)`` decodes a list of ids to one string per token."""
    sites = report["sites"]
    layers = sorted({s["layer"] for s in sites})
    projs = list(dict.fromkeys(s["proj"] for s in sites))
    where = {(s["layer"], s["proj"]): i for i, s in enumerate(sites)}
    mean_abs = report["mean_abs_by_adapter"]
    grid = [[mean_abs[where[(la, p)]] if (la, p) in where else None for p in projs] for la in layers]
    pages, problems = {}, []
    for i, prob in enumerate(report["problems"]):
        attr_ST, ids_T = attr[f"attr_ST_{i}"], attr[f"ids_T_{i}"]
        rows = torch.argsort(attr_ST.abs().sum(1), descending=True)[:n_rows].tolist()
        key = f"problem_{i:04d}"
        pages[key] = {"id": prob["id"], "question": prob["question"], "gold": prob["gold"],
                      "target_token": prob["target_token"], "target_value": prob["target_value"],
                      "total": float(attr_ST.sum()), "tokens": vocab_of(ids_T.tolist()),
                      "rows": [f"L{sites[r]['layer']} {sites[r]['proj'].removesuffix('_proj')}" for r in rows],
                      "matrix": [[float(f"{v:.3g}") for v in attr_ST[r].tolist()] for r in rows]}
        problems.append({"key": key, "id": prob["id"], "question": prob["question"]})
    index = {"title": title, "run": report["identity"]["run"], "target": report["config"]["target"],
             "freeze": report["config"]["freeze"], "layers": layers,
             "projections": [p.removesuffix("_proj") for p in projs], "mean_abs": grid, "problems": problems}
    return index, pages
