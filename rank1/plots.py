"""Figures, drawn from saved artifacts only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rank1.artifacts import read_json, write_with  # noqa: E402


def plot_loss_curve(loss_log_json: str | Path, pdf: str | Path, png: str | Path) -> None:
    """Training loss (and learning rate) per optimizer step, from a saved loss log."""
    log = read_json(loss_log_json)
    steps = [r["step"] for r in log["steps"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in log["steps"]], lw=1.2, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.set_title(log.get("title", "training loss"), fontsize=9)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in log["steps"]], color="tab:gray", lw=0.8, ls="--")
    ax2.set_ylabel("learning rate", color="tab:gray")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    fig.tight_layout()
    for path, fmt in ((pdf, "pdf"), (png, "png")):
        write_with(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=150))
    plt.close(fig)


def save_figure(fig, stem: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` atomically as ``<stem>.pdf`` and ``<stem>.png``, then close it."""
    stem = Path(stem)
    paths = []
    for fmt in ("pdf", "png"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        write_with(path, lambda tmp, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=dpi))
        paths.append(path)
    plt.close(fig)
    return paths
