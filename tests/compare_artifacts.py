"""Compare the artifacts of two pipeline runs (two ``RANK1_ROOT`` folders): JSON and JSONL equal once each
root's path is replaced by ``<root>`` and wall-time fields are dropped, safetensors equal tensor by tensor
(bit for bit), every other text file equal after the path replacement; figures (PDF, PNG) and logs are not
compared. Prints each difference and exits 1 if there is any, 0 if none.

Usage:
    python tests/compare_artifacts.py ROOT_A ROOT_B [--show 20]

For example, the whole test-profile pipeline before and after a change:
    RANK1_ROOT=/tmp/a bash run_all.sh --profile test      # on the old commit
    RANK1_ROOT=/tmp/b bash run_all.sh --profile test      # on the new one
    python tests/compare_artifacts.py /tmp/a /tmp/b
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TIME_KEY = re.compile(r"(^|_)(time|times|seconds|secs|elapsed|wall|duration|timestamp|date|started|finished)(_|s?$)")
SKIP_SUFFIXES = {".pdf", ".png", ".log", ".pt", ".bin", ".pth", ".tsv"}
FOLDERS = ("data", "results", "reports", "s1_peft")


def drop_times(obj):
    if isinstance(obj, dict):
        return {k: drop_times(v) for k, v in obj.items() if not TIME_KEY.search(str(k).lower())}
    if isinstance(obj, list):
        return [drop_times(v) for v in obj]
    return obj


def normalised_text(path: Path, root: Path) -> str:
    text = path.read_text(errors="replace")
    return text.replace(str(root.resolve()), "<root>").replace(str(root), "<root>")


def json_value(path: Path, root: Path):
    text = normalised_text(path, root)
    if path.suffix == ".jsonl":
        return [drop_times(json.loads(line)) for line in text.splitlines() if line.strip()]
    return drop_times(json.loads(text))


def tensors_equal(a: Path, b: Path) -> str | None:
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys():
        return f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}"
    for k in ta:
        x, y = ta[k].contiguous(), tb[k].contiguous()
        if x.dtype != y.dtype or x.shape != y.shape or not x.view(-1).view(torch.uint8).equal(y.view(-1).view(torch.uint8)):
            return f"tensor {k} differs"
    return None


def differences(root_a: Path, root_b: Path) -> list[str]:
    files_a = {p.relative_to(root_a) for f in FOLDERS for p in (root_a / f).rglob("*") if p.is_file()}
    files_b = {p.relative_to(root_b) for f in FOLDERS for p in (root_b / f).rglob("*") if p.is_file()}
    out = [f"only in {root_a}: {p}" for p in sorted(files_a - files_b) if p.suffix not in SKIP_SUFFIXES]
    out += [f"only in {root_b}: {p}" for p in sorted(files_b - files_a) if p.suffix not in SKIP_SUFFIXES]
    for rel in sorted(files_a & files_b):
        a, b = root_a / rel, root_b / rel
        if rel.suffix in SKIP_SUFFIXES or rel.name == "argv.json":
            continue
        if rel.suffix == ".safetensors":
            problem = tensors_equal(a, b)
        elif rel.suffix in (".json", ".jsonl"):
            problem = None if json_value(a, root_a) == json_value(b, root_b) else "JSON differs"
        else:
            try:
                problem = None if normalised_text(a, root_a) == normalised_text(b, root_b) else "text differs"
            except UnicodeDecodeError:
                problem = None if a.read_bytes() == b.read_bytes() else "bytes differ"
        if problem:
            out.append(f"{rel}: {problem}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root_a", type=Path)
    parser.add_argument("root_b", type=Path)
    parser.add_argument("--show", type=int, default=50, help="differences printed at most")
    args = parser.parse_args(argv)
    diffs = differences(args.root_a, args.root_b)
    for d in diffs[:args.show]:
        print(d)
    n = sum(1 for f in FOLDERS for p in (args.root_a / f).rglob("*") if p.is_file())
    print(f"{len(diffs)} difference(s) over {n} files of {args.root_a}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
