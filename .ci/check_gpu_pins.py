#!/usr/bin/env python3
"""Check that requirements-gpu.txt installs together on a CUDA machine: pip's resolver, metadata only.

    python .ci/check_gpu_pins.py [--requirements FILE] [--glibc 2.31] [--index-url URL] [--report OUT.json]

Nothing is installed here and no GPU is needed. Against the package index alone (this machine's pip
configuration, find-links and constraints are left out, so a local CPU build of torch cannot stand in for the
CUDA one):

1. ``pip install --dry-run --ignore-installed --report`` resolves the whole set, dependencies included, with
   pip PIP_VERSION from a throwaway virtual environment (one pip for every machine that runs the check). Markers
   and wheel tags are those of the Python running the check, so it must run on the target kind of machine,
   CPython 3.11 on Linux x86_64 (no GPU or CUDA needed). ``--platform`` cannot be used for this step: pip
   refuses it unless every package is a wheel, and deepspeed and transformers-stream-generator (through sae-lens
   and transformer-lens) are published only as source; pip builds their metadata from the sdist
   (DS_BUILD_OPS=0: no CUDA ops compiled). Everything else must resolve to a wheel (no compiler on the cluster).
   Wheel metadata is read with HTTP range requests (pip's ``fast-deps``): a few MB, not the wheels.
2. Each exact version step 1 chose has a wheel for CPython 3.11 on manylinux_<glibc>_x86_64 or older (the tags
   pip accepts with ``--platform``), from the index's file lists: it installs on machines with that glibc, not
   only on this one.

Then: every package of requirements.txt is pinned in the GPU set too (the GPU install is the whole project),
pip chose the pinned versions, and torch is the CUDA build (it depends on NVIDIA's CUDA wheels). The
differences from requirements.txt are printed with the requirements that force them.

Exit status: 0 the set resolves; 1 a conflict or a failed check (pip's explanation is printed); 2 the check
cannot run here (another platform, or the index cannot be reached).
"""

# ruff: noqa: T201
# (a command-line check: it prints)
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    from packaging.specifiers import SpecifierSet
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename
except ImportError:  # an interpreter without packaging: pip's copy
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.tags import compatible_tags, cpython_tags
    from pip._vendor.packaging.utils import parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
TARGET_PYTHON = (3, 11)
PIP_VERSION = "26.3"
__doc__ = __doc__.replace("PIP_VERSION", PIP_VERSION)
# Published only as source distributions: pip builds their metadata; everything else must be a wheel.
SOURCE_ONLY = ("deepspeed", "transformers-stream-generator")
# Connection settings that may stay; every other PIP_* variable (find-links, constraints, extra indexes) goes.
PIP_ENV_KEPT = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_PROXY", "PIP_TRUSTED_HOST", "PIP_RETRIES")
UNREACHABLE = re.compile(r"NewConnectionError|Failed to establish|Temporary failure in name resolution|"
                         r"ConnectTimeout|Network is unreachable|Max retries exceeded|No route to host")


class CannotRun(Exception):
    """The check cannot run here (exit status 2)."""


class Conflict(Exception):
    """pip refused the set, or a wheel is missing (exit status 1)."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """name -> version specifier ('' when unpinned) of a requirements file (no includes, no options)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            raise CannotRun(f"{path.name}: options and includes are not supported by this check: {line}")
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", line)
        pins[norm(m.group(1))] = m.group(3).strip()
    return pins


def pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in PIP_ENV_KEPT}
    env["PIP_CONFIG_FILE"] = os.devnull  # no global, user or site pip.conf
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["DS_BUILD_OPS"] = "0"
    return env


def run_pip(python: Path, args: list[str], index_url: str, cwd: Path) -> None:
    """``python -m pip`` with ``args`` against ``index_url`` alone; raises with pip's explanation."""
    proc = subprocess.run([str(python), "-m", "pip", *args, "--index-url", index_url, "--progress-bar", "off"],
                          cwd=cwd, env=pip_env(), capture_output=True, text=True)  # cwd: nothing shadows a module
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if UNREACHABLE.search(out):
            raise CannotRun(f"{index_url} cannot be reached:\n{explain(out)}")
        raise Conflict(explain(out))


def explain(out: str) -> str:
    """The part of pip's output that says why it failed."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if "conflict is caused by" in line or line.startswith("ERROR"):
            return "\n".join(lines[max(0, i - 2):i + 40])
    return "\n".join(lines[-40:])


def bootstrap_pip(tmp: Path, index_url: str) -> Path:
    """A throwaway virtual environment with pip PIP_VERSION; its python."""
    venv = tmp / "pip-venv"
    proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CannotRun(f"{sys.executable} cannot make a virtual environment:\n{proc.stdout}{proc.stderr}")
    python = venv / "bin" / "python"
    run_pip(python, ["install", "-q", f"pip=={PIP_VERSION}"], index_url, tmp)
    return python


def platforms(glibc: str) -> list[str]:
    """The wheel platform tags a Linux x86_64 machine with this glibc accepts, newest first."""
    major, minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    return tags + [tag for m, tag in legacy.items() if m <= minor]


def index_files(index_url: str, project: str) -> list[str]:
    """The file names the index lists for a project (PEP 691 JSON, else the HTML page's links)."""
    req = urllib.request.Request(f"{index_url.rstrip('/')}/{norm(project)}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(req, timeout=60) as r:
        body, kind = r.read().decode(), r.headers.get("Content-Type", "")
    if "json" in kind:
        return [f["filename"] for f in json.loads(body)["files"]]
    return re.findall(r">\s*([^<>\s]+)\s*</a>", body)


def missing_wheels(chosen: list[tuple[str, str]], glibc: str, index_url: str) -> list[str]:
    """The (name, version) pairs without a wheel for CPython 3.11 on this glibc or older."""
    plats = platforms(glibc)
    accepted = {*cpython_tags(TARGET_PYTHON, platforms=plats),
                *compatible_tags(TARGET_PYTHON, interpreter=f"cp{''.join(map(str, TARGET_PYTHON))}", platforms=plats)}

    def has_wheel(pair: tuple[str, str]) -> bool:
        name, version = pair
        for fname in index_files(index_url, name):
            if not fname.endswith(".whl") or version not in fname:
                continue
            try:
                _, v, _, tags = parse_wheel_filename(fname)
            except ValueError:  # an old file name that no longer parses: pip skips it too
                continue
            if str(v) == version and tags & accepted:
                return True
        return False

    try:
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(has_wheel, chosen))
    except OSError as e:
        raise CannotRun(f"{index_url} cannot be reached ({e})") from e
    return [f"{n}=={v}" for (n, v), ok in zip(chosen, found, strict=True) if not ok]


def excluded_by(name: str, version: str, chosen: dict[str, dict]) -> list[str]:
    """The requirements on ``name`` of the chosen packages that ``version`` does not meet (why a pin moved)."""
    out = []
    for item in chosen.values():
        for req in item["metadata"].get("requires_dist") or []:
            m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*\(?([^;)]*)", req)
            if "extra ==" in req or not m or norm(m.group(1)) != name or not m.group(3).strip():
                continue
            spec = m.group(3).strip()
            if not SpecifierSet(spec).contains(version, prereleases=True):
                out.append(f"{item['metadata']['name']} {item['metadata']['version']} requires {name}{spec}")
    return out


def filename(item: dict) -> str:
    return item.get("download_info", {}).get("url", "").rsplit("/", 1)[-1]


def check(chosen: dict[str, dict], gpu: dict[str, str], cpu: dict[str, str]) -> list[str]:
    """Problems with what pip chose (empty when all is well); prints what it checked."""
    problems = [f"requirements.txt has {n} but the GPU set does not pin it" for n in cpu if n not in gpu]
    for name, spec in gpu.items():
        got = chosen.get(name)
        if got is None:
            problems.append(f"{name} is pinned but pip did not choose it")
        elif spec.startswith("==") and got["metadata"]["version"] != spec[2:].strip():
            problems.append(f"{name}: pinned {spec}, pip chose {got['metadata']['version']}")
    torch = chosen.get("torch")
    if torch is not None:
        cuda = [r.split(";")[0] for r in torch["metadata"].get("requires_dist") or []
                if re.match(r"(cuda-toolkit|nvidia-cuda-runtime)\b", norm(r))]
        if not cuda or "+cpu" in filename(torch):
            problems.append(f"torch {torch['metadata']['version']} resolves to a CPU build ({filename(torch)})")
        else:
            print(f"torch: {filename(torch)}, the CUDA build (requires {cuda[0]})")
    return problems


def run(args: argparse.Namespace, tmp: Path) -> int:
    here = f"{platform.python_implementation()} {platform.python_version()} on {sys.platform} {platform.machine()}"
    if (platform.python_implementation() != "CPython" or sys.version_info[:2] != TARGET_PYTHON
            or not sys.platform.startswith("linux") or platform.machine() != "x86_64"):
        raise CannotRun(f"the target is CPython {'.'.join(map(str, TARGET_PYTHON))} on Linux x86_64, this is {here}")
    gpu, cpu = read_pins(args.requirements), read_pins(REPO / "requirements.txt")
    print(f"checking {args.requirements.name} ({len(gpu)} pins) with pip {PIP_VERSION}'s resolver, metadata only, "
          f"for {here} and glibc >= {args.glibc}; index {args.index_url}", flush=True)
    t0 = time.monotonic()
    python = bootstrap_pip(tmp, args.index_url)
    report = args.report or tmp / "report.json"
    step1 = ["install", "--dry-run", "--ignore-installed", "--report", str(report), "--use-feature=fast-deps",
             "--only-binary=:all:", "--no-binary=" + ",".join(SOURCE_ONLY), "-r", str(args.requirements)]
    print(f"1. the whole set with its dependencies, for this machine:\n  $ pip {' '.join(step1)}", flush=True)
    run_pip(python, step1, args.index_url, tmp)
    install = json.loads(report.read_text())["install"]
    chosen = {norm(i["metadata"]["name"]): i for i in install}
    print(f"  pip resolved {len(chosen)} packages ({time.monotonic() - t0:.0f} s)")
    for name in sorted(set(gpu) & set(cpu)):
        if gpu[name] != cpu[name]:
            pinned = cpu[name][2:].strip() if cpu[name].startswith("==") else ""
            why = "; ".join(excluded_by(name, pinned, chosen)) if pinned else ""
            why = why or f"no chosen package excludes {cpu[name] or 'it'}"
            print(f"  differs from requirements.txt: {name} {cpu[name] or '(any)'} -> {gpu[name]} ({why})")
    for name in sorted(set(gpu) - set(cpu)):
        print(f"  GPU only: {name}{gpu[name]}")
    sources = sorted(f"{i['metadata']['name']} {i['metadata']['version']}" for i in install
                     if not filename(i).endswith(".whl"))
    print(f"  from source (DS_BUILD_OPS=0): {', '.join(sources) or 'none'}")

    t1 = time.monotonic()
    wheels = [(i["metadata"]["name"], i["metadata"]["version"]) for i in install if filename(i).endswith(".whl")]
    print(f"2. the {len(wheels)} wheels chosen, for CPython 3.11 on manylinux_{args.glibc.replace('.', '_')}_x86_64 "
          "or older:", flush=True)
    missing = missing_wheels(wheels, args.glibc, args.index_url)
    if missing:
        raise Conflict(f"no wheel for glibc {args.glibc} or older: {', '.join(missing)}")
    print(f"  every one has such a wheel ({time.monotonic() - t1:.0f} s)")

    problems = check(chosen, gpu, cpu)
    for p in problems:
        print(f"FAILED: {p}")
    if problems:
        return 1
    print(f"OK: {args.requirements.name} resolves as pinned ({len(chosen)} packages, {time.monotonic() - t0:.0f} s)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requirements", type=Path, default=REPO / "requirements-gpu.txt")
    ap.add_argument("--glibc", default="2.31", help="the oldest glibc of the target machines (default: 2.31)")
    ap.add_argument("--index-url", default="https://pypi.org/simple")
    ap.add_argument("--report", type=Path, help="keep pip's JSON report of step 1 here")
    args = ap.parse_args()
    args.requirements, args.report = args.requirements.resolve(), args.report and args.report.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return run(args, Path(tmp))
        except CannotRun as e:
            print(f"cannot check here: {e}")
            return 2
        except Conflict as e:
            print(f"CONFLICT: pip cannot install {args.requirements.name} together:\n{e}")
            return 1


if __name__ == "__main__":
    sys.exit(main())
