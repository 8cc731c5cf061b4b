"""The random-direction control of Figure 2: untrained directions at the adapter's sites, read like its features.

The lexicon explainer rates a feature by how concentrated its strong tokens are, which depends on how densely
the feature fires as much as on how many meanings it has. Whether training made the adapter's directions
readable is therefore measured against directions nobody trained, at the same sites, through the same code.

The control is a PEFT adapter folder (so :class:`rank1.runs.Run` loads it and the LoRA capture of 2.0 reads
it unchanged):

- ``lora_A`` of every (layer, projection) the run adapts: a direction drawn from a standard Gaussian, seeded by
  (seed, layer, projection), then scaled to the norm of the trained ``lora_A`` there, so each control scalar has
  the scale of the feature it stands beside;
- ``lora_B = 0`` everywhere: the control adds nothing to any projection, so the model with it **is the base
  model** (the control's scalars are read from the base model's activations, like the MLP-neuron baseline's).

An adapter whose every B is zero is what the training check (:func:`rank1.lora.verify_adapter`) rejects as
untrained; the control is exempt by record, not by weakening that check: its folder holds
:data:`rank1.lora.CONTROL_RECORD` and is checked by :func:`rank1.lora.verify_control_adapter`, which requires
every B to be zero instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rank1.artifacts import reuse_finished, write_json
from rank1.constants import PROJECTIONS
from rank1.lora import CONTROL_RECORD, SAVED_KEY_RE, verify_control_adapter
from rank1.runs import Run

CONTROL_DIR = "control_adapter"  # inside the control's store folder
KIND = "random_directions"


def random_directions(trained_A: dict[tuple[int, str], torch.Tensor], seed: int) -> dict[tuple[int, str],
                                                                                         torch.Tensor]:
    """{(layer, projection): A [in]}: a standard Gaussian draw per site, seeded by (seed, layer, projection
    index) only (adding sites never changes the others), scaled to the norm of ``trained_A`` at that site."""
    out = {}
    for (layer, proj), a in trained_A.items():
        rng = np.random.default_rng([seed, layer, PROJECTIONS.index(proj)])
        g = torch.from_numpy(rng.standard_normal(a.numel())).to(torch.float64)
        out[(layer, proj)] = (g * (a.double().norm() / g.norm())).to(torch.float32)
    return out


def control_tensors(run: Run, seed: int) -> dict[str, torch.Tensor]:
    """The control's tensors under the run's own saved key names: random A (1 x in), zero B (out x 1)."""
    saved = load_file(str(run.weights_dir / "adapter_model.safetensors"))
    keys = {(int(m.group(1)), m.group(2), m.group(3)): k for k in saved if (m := SAVED_KEY_RE.search(k))}
    directions = random_directions({(lay, p): saved[k][0].float() for (lay, p, ab), k in keys.items() if ab == "A"},
                                   seed)
    out = {}
    for (lay, p, ab), k in keys.items():
        if saved[k].dim() != 2 or (saved[k].shape[0] if ab == "A" else saved[k].shape[1]) != 1:
            raise ValueError(f"layer {lay} {p} lora_{ab} has shape {tuple(saved[k].shape)}: the control needs rank 1")
        out[k] = directions[(lay, p)][None, :].contiguous() if ab == "A" else torch.zeros(saved[k].shape)
    return out


def control_record(run: Run, seed: int) -> dict[str, Any]:
    """What the control is, written beside it (the exemption's record) and into the store's manifest."""
    ident = run.identity()
    return {"kind": KIND, "seed": seed, "trained_run": ident["run"], "trained_weights_sha256": ident["weights_sha256"],
            "base_model": ident["base_model"], "lora_A": "standard Gaussian per site, scaled to the trained A's norm",
            "lora_B": "zero: the model with the control is the base model"}


def ensure_control_adapter(run: Run, folder: Path, seed: int, overwrite: bool) -> tuple[Run, bool]:
    """The control adapter of ``run`` under ``folder`` (written when missing, reused when made with the same seed
    from the same weights, refused otherwise unless ``overwrite``), checked; returns (its run, whether it was
    written now)."""
    record = control_record(run, seed)
    done = folder / CONTROL_RECORD
    expected = {k: record[k] for k in ("kind", "seed", "trained_weights_sha256", "base_model")}
    fresh = reuse_finished(done, expected, overwrite, "pass --overwrite to draw the control again") is None
    if fresh:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy(run.weights_dir / "adapter_config.json", tmp / "adapter_config.json")
        save_file(control_tensors(run, seed), str(tmp / "adapter_model.safetensors"))
        write_json(tmp / CONTROL_RECORD, record)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    sites = {(int(m.group(1)), m.group(2)) for k in load_file(str(run.weights_dir / "adapter_model.safetensors"))
             if (m := SAVED_KEY_RE.search(k))}
    verify_control_adapter(folder, sorted({lay for lay, _ in sites}),
                           tuple(p for p in PROJECTIONS if any(q == p for _, q in sites)))
    return Run("lora", run.model_id, folder, None, {"control": record}), fresh
