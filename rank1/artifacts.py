"""Atomic artifact writing and run-folder metadata.

Every file a stage produces goes to a temporary sibling first and is moved into place with
``os.replace``, so a killed stage leaves either the old artifact or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rank1.constants import ARGV_JSON, CHECKPOINT_DONE, CONFIG_JSON

SECRET_MARKERS = ("token", "key", "secret", "password")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to {target}")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Let ``writer(tmp_path)`` produce a file or folder, then move it atomically onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def newest_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered ``folder/<step>/`` marked complete (``CHECKPOINT_DONE``), or None."""
    done = [p.parent for p in folder.glob(f"*/{CHECKPOINT_DONE}")]
    return max(done, key=lambda p: int(p.name)) if done else None


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def public_config(cfg: Any) -> dict[str, Any]:
    """The config as a dict, without fields that look like secrets."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: v for k, v in values.items() if not is_secret_name(k)}


def is_secret_name(name: str) -> bool:
    """``hf_token``, ``api_key``, ``openai_secret``, ``password``: a word of the name is a secret marker
    (``max_tokens`` or ``batch_tokens`` are counts, not secrets)."""
    words = name.lower().replace("-", "_").split("_")
    return any(m in words for m in SECRET_MARKERS) or name.lower().endswith(SECRET_MARKERS)


def write_run_metadata(folder: str | os.PathLike, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config and the command line into ``folder``."""
    folder = Path(folder)
    write_json(folder / CONFIG_JSON, {**public_config(cfg), **(extra or {})})
    write_json(folder / ARGV_JSON, {
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cwd": os.getcwd(),
    })
