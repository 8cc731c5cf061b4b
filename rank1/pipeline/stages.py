"""The stage table of ``run_all.sh`` (read when the job runs or plans, never at import) and each stage's
command line."""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rank1.config import REPO_ROOT, Profile, project_root
from rank1.pipeline.estimates import DEVICE_MEMORY, DEVICES, DISK, STAGE_MEMORY, Estimate

ENV_GPQA = "GPQA_PATH"  # the GPQA-Diamond CSV (never shipped); adds --gpqa_path to the evaluation


@dataclass(frozen=True)
class Stage:
    name: str  # as logged in the times file and named on failure
    argv: tuple[str, ...]  # "{py}" the Python, "{repo}" the repository, "{profile}" the profile
    devices: str | Callable[[Profile], str]  # what it runs on
    disk: Callable[[Profile], Estimate] | None = None  # what it writes (None: small JSON and figures)
    memory: Callable[[Profile], Estimate] | None = None  # what one device holds (None: nothing that matters)


def times_path(profile_name: str) -> Path:
    return project_root() / "logs" / f"run_all-{profile_name}-times.tsv"


RUNNERS = {"py": "{py}", "bash": "bash"}
RUN_ALL = REPO_ROOT / "run_all.sh"


def read_stage_table(path: Path = RUN_ALL) -> list[Stage]:
    """The stages of ``run_all.sh``'s table (the lines between ``: <<'STAGES'`` and ``STAGES``), each line
    ``name | py|bash | devices | disk | script [args]``: the script runs from the repository with ``--profile``
    added; devices and disk are keys of :data:`DEVICES` and :data:`DISK`; the memory estimate is the stage's in
    :data:`STAGE_MEMORY`, else its devices key's in :data:`DEVICE_MEMORY`."""
    lines = path.read_text().splitlines()
    try:
        start = lines.index(": <<'STAGES'") + 1
        end = lines.index("STAGES", start)
    except ValueError:
        raise ValueError(f"{path}: no stage table (lines between \": <<'STAGES'\" and \"STAGES\")") from None
    stages = []
    for n, line in enumerate(lines[start:end], start + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or parts[1] not in RUNNERS or not parts[4]:
            raise ValueError(f"{path}:{n}: expected 'name | py|bash | devices | disk | script [args]', got {line!r}")
        name, runner, devices, disk, (script, *extra) = *parts[:4], shlex.split(parts[4])
        for what, key, known in (("devices", devices, DEVICES), ("disk", disk, DISK)):
            if key not in known:
                raise ValueError(f"{path}:{n}: unknown {what} {key!r} for stage {name!r}; known: {sorted(known)}")
        stages.append(Stage(name, (RUNNERS[runner], f"{{repo}}/{script}", "--profile", "{profile}", *extra),
                            DEVICES[devices], DISK[disk], STAGE_MEMORY.get(name) or DEVICE_MEMORY.get(devices)))
    return stages


@functools.cache
def stages() -> tuple[Stage, ...]:
    """The main job's stages, in order (read once from ``run_all.sh``)."""
    return tuple(read_stage_table())


def command(stage: Stage, profile: str, python: str, repo: Path = REPO_ROOT,
            env: Mapping[str, str] = os.environ) -> list[str]:
    """The stage's command line (the evaluation gets ``--gpqa_path`` when ``GPQA_PATH`` is set). ``profile`` is
    what the stage gets as ``--profile``: a :attr:`Profile.spec` (a shipped profile's name, else an absolute path,
    which reads the same file from any working directory)."""
    argv = [a.format(py=python, repo=repo, profile=profile) for a in stage.argv]
    if stage.name == "eval_benchmarks" and env.get(ENV_GPQA):
        argv += ["--gpqa_path", env[ENV_GPQA]]
    return argv


