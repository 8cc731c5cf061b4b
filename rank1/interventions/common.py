"""What the stage-4 scripts (``4_lora_interventions/``) share: their run options, output folder, the
skip-or-redo rule for finished artifacts, and the held-out problems they work on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank1.artifacts import read_json, write_run_metadata
from rank1.benchmarks import Benchmark, BenchmarkSpec, load_benchmark
from rank1.config import option, results_dir
from rank1.runs import Run, RunError, RunOptions, check_same_identity
from rank1.store import check_writable

log = logging.getLogger(__name__)


@dataclass
class StageOptions(RunOptions):
    """Run options plus where a stage-4 script writes and whether it redoes finished work."""

    out: str | None = option("output folder (default: results/<profile>/<stage>/<run>)")
    overwrite: bool = option("recompute even if the artifacts exist", False)


def output_folder(cfg: StageOptions, stage: str, run: Run) -> Path:
    folder = Path(cfg.out) if cfg.out else results_dir(cfg.profile, stage, run.name)
    check_writable(folder)
    return folder


def finished(path: Path, run: Run, config: dict[str, Any], keys: tuple[str, ...], overwrite: bool) -> dict | None:
    """The saved result at ``path`` if it exists, was made from ``run``'s weights and with the same
    values of the config ``keys``; None when it must be (re)computed. A result from other weights or
    settings is refused with a message unless ``overwrite``."""
    if overwrite or not path.is_file():
        return None
    saved = read_json(path)
    check_same_identity(run.identity(), saved.get("identity", {}), str(path))
    changed = [k for k in keys if saved.get("config", {}).get(k) != config.get(k)]
    if changed:
        raise RunError(f"{path} was made with other settings ({', '.join(changed)}); pass --overwrite to "
                       f"recompute it, or --out for a new folder")
    log.info("%s exists (same run and settings); pass --overwrite to recompute", path)
    return saved


def save_metadata(folder: Path, cfg: Any, run: Run) -> None:
    write_run_metadata(folder, cfg, {"identity": run.identity()})


def heldout_problems(profile: str, n: int, offset: int = 0) -> Benchmark:
    """Problems ``offset .. offset+n`` of the profile's held-out split (never trained on), with the
    integer grader."""
    if n < 1 or offset < 0:
        raise ValueError(f"need n >= 1 problems and offset >= 0, got n={n}, offset={offset}")
    bench = load_benchmark(BenchmarkSpec("heldout"), profile)
    items = bench.items[offset:offset + n]
    if len(items) < n:
        raise ValueError(f"asked for held-out problems {offset}..{offset + n - 1}, but {bench.source} has "
                         f"{len(bench.items)}; lower the count or the offset")
    return Benchmark(bench.name, bench.source, items, bench.grade)

