"""Compare the artifacts of two pipeline runs (two ``RANK1_ROOT`` folders): JSON and JSONL equal once each
root's path (and each checkout's, with ``--repo_a/--repo_b``) is replaced by ``<root>`` and wall-time
fields are dropped, safetensors equal tensor by tensor (bit for bit), every other text file equal after the path
replacement; figures (PDF, PNG), logs and the weights-hash cache are not compared. Identity digests (sha256 hex
strings) may differ only consistently: one digest of A always stands where the same digest of B does (a digest
that records a folder, or a local base-model path, differs between two roots). Prints each difference and exits 1
if there is any, 0 if none.

Usage:
    python tests/compare_artifacts.py ROOT_A ROOT_B [--repo_a DIR --repo_b DIR] [--show 20]

For example, the whole test-profile pipeline before and after a change:
    RANK1_ROOT=/tmp/a bash run_all.sh --profile test      # on the old commit
    RANK1_ROOT=/tmp/b bash run_all.sh --profile test      # on the new one
    python tests/compare_artifacts.py /tmp/a /tmp/b --repo_a /tmp/before --repo_b .
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

TIME_KEY = re.compile(r"(^|_)(time|times|runtime|seconds|secs|elapsed|wall|duration|timestamp|date|started|finished"
                      r"|per_s)(_|s?$)")
DURATION = re.compile(r"\b\d+(\.\d+)? ?(s|min|h)\b")  # wall times in a text file (the report's stage times)
SKIP_SUFFIXES = {".pdf", ".png", ".log", ".pt", ".bin", ".pth", ".tsv"}
SKIP_NAMES = {"argv.json", ".weights_sha256.json"}
DIGEST = re.compile(r"[0-9a-f]{64}")
UNORDERED_KEYS = {"target_modules"}  # PEFT writes this set in hash-seed order
FOLDERS = ("data", "results", "reports", "s1_peft")


def drop_times(obj):
    if isinstance(obj, dict):
        return {k: drop_times(v) for k, v in obj.items() if not TIME_KEY.search(str(k).lower())}
    if isinstance(obj, list):
        return [drop_times(v) for v in obj]
    return obj


def normalised_text(path: Path, root: Path, repo: Path | None = None) -> str:
    text = path.read_text(errors="replace")
    for where in (root, repo):
        if where is not None:
            text = text.replace(str(where.resolve()), "<root>").replace(str(where), "<root>")
    return text


def same(a, b, digests: dict[str, str], reverse: dict[str, str]) -> bool:
    """Equal JSON values, where a 64-hex digest of A may stand for one of B if it always does."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            same(sorted(a[k]), sorted(b[k]), digests, reverse) if k in UNORDERED_KEYS and isinstance(a[k], list)
            and isinstance(b[k], list) else same(a[k], b[k], digests, reverse) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, digests, reverse) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and a != b and DIGEST.fullmatch(a) and DIGEST.fullmatch(b):
        if digests.setdefault(a, b) != b or reverse.setdefault(b, a) != a:
            return False
        return True
    return a == b


def json_value(path: Path, root: Path, repo: Path | None = None):
    text = normalised_text(path, root, repo)
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
        if x.dtype != y.dtype or x.shape != y.shape or not x.view(-1).view(torch.uint8).equal(
                y.view(-1).view(torch.uint8)):
            return f"tensor {k} differs"
    return None


def differences(root_a: Path, root_b: Path, repo_a: Path | None = None, repo_b: Path | None = None,
                digests: dict[str, str] | None = None) -> list[str]:
    files_a = {p.relative_to(root_a) for f in FOLDERS for p in (root_a / f).rglob("*") if p.is_file()}
    files_b = {p.relative_to(root_b) for f in FOLDERS for p in (root_b / f).rglob("*") if p.is_file()}
    out = [f"only in {root_a}: {p}" for p in sorted(files_a - files_b) if p.suffix not in SKIP_SUFFIXES]
    out += [f"only in {root_b}: {p}" for p in sorted(files_b - files_a) if p.suffix not in SKIP_SUFFIXES]
    digests = {} if digests is None else digests
    reverse: dict[str, str] = {}
    # JSON first: the digests it pairs are then masked in the text files (the report quotes them)
    for rel in sorted(files_a & files_b, key=lambda r: (r.suffix not in (".json", ".jsonl"), r)):
        a, b = root_a / rel, root_b / rel
        if rel.suffix in SKIP_SUFFIXES or rel.name in SKIP_NAMES:
            continue
        if rel.suffix == ".safetensors":
            problem = tensors_equal(a, b)
        elif rel.suffix in (".json", ".jsonl"):
            equal = same(json_value(a, root_a, repo_a), json_value(b, root_b, repo_b), digests, reverse)
            problem = None if equal else "JSON differs"
        else:
            try:
                ta, tb = normalised_text(a, root_a, repo_a), normalised_text(b, root_b, repo_b)
                for da, db in digests.items():
                    ta = ta.replace(da, db).replace(da[:12], db[:12])
                problem = None if DURATION.sub("<t>", ta) == DURATION.sub("<t>", tb) else "text differs"
            except UnicodeDecodeError:
                problem = None if a.read_bytes() == b.read_bytes() else "bytes differ"
        if problem:
            out.append(f"{rel}: {problem}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root_a", type=Path)
    parser.add_argument("root_b", type=Path)
    parser.add_argument("--repo_a", type=Path, help="the checkout that made ROOT_A (its path is masked too)")
    parser.add_argument("--repo_b", type=Path, help="the checkout that made ROOT_B")
    parser.add_argument("--show", type=int, default=50, help="differences printed at most")
    args = parser.parse_args(argv)
    digests: dict[str, str] = {}
    diffs = differences(args.root_a, args.root_b, args.repo_a, args.repo_b, digests)
    for d in diffs[:args.show]:
        print(d)
    n = sum(1 for f in FOLDERS for p in (args.root_a / f).rglob("*") if p.is_file())
    print(f"{len(diffs)} difference(s) over {n} files of {args.root_a}; {len(digests)} identity digest(s) differ "
          f"consistently")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
