"""The main job: every stage in the paper's order, one list that both runs them and prints the plan.

``run_all.sh`` is a thin wrapper over :func:`main`. Each stage is a command that skips work whose artifacts
exist, so a killed job continues where it stopped; every finished stage appends its wall time to
``logs/run_all-<profile>-times.tsv``; a failing stage names itself and the command that reruns it.

``--dry-run`` prints, without running anything, each stage's command, the devices it expects, the disk it
will write and the memory one device holds, computed from the profile alone (its stage tables and its ``[plan]``
table of model dimensions, corpus size and hardware, so no model is downloaded), and checks every input a run
reads: models and datasets (local, in the Hugging Face cache, or downloadable from here), the GPQA CSV, the LLM
endpoint, DeepSpeed and vLLM where the profile needs them. Problems end in a nonzero exit, before any stage
runs; what the check cannot be sure of (an endpoint that does not answer within a few seconds, a stage over one
GPU's memory) is a note.

The stage list is the table in ``run_all.sh`` (read by :func:`stages` when the job runs or plans, never at
import), so the main job shows its stages where a reader looks for them; each line names its devices and disk
by a key of :data:`DEVICES` and :data:`DISK`; a new stage is one line there, at its place in the order (the
report stays last).

The package: :mod:`~rank1.pipeline.stages` reads that table, :mod:`~rank1.pipeline.estimates` computes the disk,
memory and devices of each stage, :mod:`~rank1.pipeline.inputs` checks the inputs; this module plans and runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from rank1.config import Profile, load_profile, project_root
from rank1.constants import ENV_PROFILE
from rank1.logs import report_error
from rank1.pipeline.estimates import (
    DEVICE_MEMORY,
    DEVICES,
    DISK,
    STAGE_MEMORY,
    Estimate,
    Part,
    human_bytes,
    memory_device,
    plan_values,
)
from rank1.pipeline.inputs import check_profile
from rank1.pipeline.stages import ENV_GPQA, Stage, command, read_stage_table, stages, times_path
from rank1.rehearsal import llm_endpoint, prepare

__all__ = ["DEVICES", "DEVICE_MEMORY", "DISK", "ENV_GPQA", "STAGE_MEMORY", "Estimate", "Part", "Stage",
           "check_profile", "command", "human_bytes", "main", "plan_text", "plan_values", "read_stage_table",
           "run_stages", "stages", "times_path"]

# ---- plan and run ---------------------------------------------------------------------------------------

def plan_text(profile: Profile, spec: str, python: str, env: Mapping[str, str] = os.environ) -> str:
    """The dry-run plan: every stage's command, devices, disk and memory, then the disk in all and at its peak."""
    per = memory_device(profile)
    lines = [f"Plan of the main job on profile {profile.name} ({profile.path}), {len(stages())} stages; "
             f"outputs under {project_root()}; memory is {per}", ""]
    kept, peak, peak_stage, unknown = 0, 0, "", False
    for i, st in enumerate(stages(), 1):
        devices = st.devices(profile) if callable(st.devices) else st.devices
        lines += [f"{i:2d}. {st.name}", f"    command: {shlex.join(command(st, spec, python, env=env))}",
                  f"    devices: {devices}"]
        disk = st.disk(profile) if st.disk else []
        for part in disk:
            lines.append(f"    disk:    {human_bytes(part.size)}  {part.what}")
            unknown |= part.size is None
        kept += sum(p.size or 0 for p in disk if p.kept)
        if kept + sum(p.size or 0 for p in disk if not p.kept) > peak:
            peak, peak_stage = kept + sum(p.size or 0 for p in disk if not p.kept), st.name
        memory = st.memory(profile) if st.memory else []
        lines += [f"    memory:  {human_bytes(p.size)}  {p.what}" for p in memory]
        if len(memory) > 1:
            total = None if any(p.size is None for p in memory) else sum(p.size for p in memory)
            lines.append(f"    memory:  {human_bytes(total)}  in all, {per}")
    lines += ["", f"disk in all (estimated): {human_bytes(kept)} after the job{' + unknown parts' if unknown else ''}; "
                  f"at most {human_bytes(peak)} at once (while {peak_stage} runs)",
              f"stage times go to {times_path(profile.name)}"]
    return "\n".join(lines)


def run_stages(spec: str, python: str, env: Mapping[str, str] = os.environ,
               stage_list: Sequence[Stage] | None = None) -> int:
    """Run every stage (of ``stage_list``, default :func:`stages`) in order; log each wall time; stop at the
    first failure, naming it. A profile given by a relative path reaches every stage as its absolute path."""
    profile = load_profile(spec)
    times = times_path(profile.name)
    times.parent.mkdir(parents=True, exist_ok=True)
    for st in stages() if stage_list is None else stage_list:
        argv = command(st, profile.spec, python, env=env)
        print(f"=== {st.name}: {shlex.join(argv)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(argv, env={**env, "PYTHON": python})
        if rc != 0:
            print(f"error: stage '{st.name}' failed (exit {rc}); rerun it with: {shlex.join(argv)}  "
                  f"(or rerun run_all.sh: finished stages are skipped)", file=sys.stderr, flush=True)
            return 1
        line = f"{datetime.now().isoformat(timespec='seconds')}\t{st.name}\t{round(time.monotonic() - t0)}s"
        print(line, flush=True)
        with times.open("a") as f:
            f.write(line + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get(ENV_PROFILE) or "tiny",
                        help=f"profile name or .toml path (env {ENV_PROFILE}, default tiny)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the plan and check the profile; run nothing")
    args = parser.parse_args(argv)
    python = os.environ.get("PYTHON") or sys.executable
    try:
        profile = load_profile(args.profile)
        rehearsal = prepare(profile)  # a rehearsal profile's fixtures exist before anything reads them
        problems, notes = check_profile(profile)
        if args.dry_run:
            print(plan_text(profile, profile.spec, python))
    except Exception as e:
        if not report_error(e):  # bad input is one error line, a bug keeps its traceback
            raise
        return 2
    for n in notes:
        print(f"note: {n}")
    if problems:
        print(f"\n{len(problems)} problem(s) with profile {profile.name}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"\nprofile {profile.name}: every required id and path is set")
        return 0
    try:
        with llm_endpoint(profile, rehearsal, project_root() / "logs"):
            return run_stages(args.profile, python)
    except Exception as e:  # e.g. RANK1_ROOT read-only or full: the times file cannot be written
        if not report_error(e):
            raise
        return 2

