"""Atomic artifact writing and run-folder metadata.

Every file a stage produces goes to a temporary sibling first and is moved into place with
``os.replace``, so a killed stage leaves either the old artifact or the new one, never half of one.

Every stage follows one protocol for work that exists already (:func:`reuse_finished`, :func:`resume_partial`):
finished work made from the same settings and inputs is reused, finished work made from others is refused
with a message (``--overwrite`` recomputes), and partial work resumes only when its stamp matches. Settings and
files are identified by :func:`settings_digest` and :func:`file_sha256`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rank1.constants import ARGV_JSON, CHECKPOINT_DONE, CONFIG_JSON, RESUME_STAMP
from rank1.errors import OtherSettings

log = logging.getLogger(__name__)
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


# ---- identity of settings and files ---------------------------------------------------------------------

def settings_digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; values JSON cannot hold written with ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(*paths: str | os.PathLike) -> str:
    """sha256 of the bytes of ``paths``, one after another in the order given."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---- the finished / refuse / resume protocol ------------------------------------------------------------

def _saved_value(saved: Mapping[str, Any], dotted: str) -> Any:
    value: Any = saved
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def reuse_finished(done: str | os.PathLike, expected: Mapping[str, Any], overwrite: bool,
                   redo: str = "pass --overwrite to recompute it") -> dict | None:
    """The saved JSON ``done`` (the file a stage writes last) when it can be reused; None when the work must be
    done (no such file, or ``overwrite``). ``expected`` maps a dotted key of the saved JSON (``"settings"``,
    ``"identity.weights_sha256"``, ``"config.n_splits"``) to the value this run would write there (compared
    after a JSON round trip, so tuples equal lists). A file made with other values raises
    :class:`~rank1.errors.OtherSettings` naming them and ``redo``."""
    done = Path(done)
    if overwrite or not done.is_file():
        return None
    saved = read_json(done)
    changed = [k for k, v in expected.items() if _saved_value(saved, k) != json.loads(json.dumps(v, default=str))]
    if changed:
        what = "; ".join(f"{k}: {_short(_saved_value(saved, k))} there, {_short(expected[k])} now" for k in changed)
        raise OtherSettings(f"{done} was made with other settings or inputs ({what}); {redo}")
    log.info("%s is up to date (same settings and inputs); skipping (--overwrite recomputes)", done)
    return saved


def resume_partial(folder: str | os.PathLike, stamp: Any, overwrite: bool, restart_other: bool = False) -> bool:
    """Make ``folder`` the place of resumable partial work started with ``stamp`` (settings and inputs, JSON),
    recorded in its :data:`~rank1.constants.RESUME_STAMP`. It is emptied first with ``overwrite``, when it has
    no stamp (left by something else), or, with ``restart_other``, when its stamp differs; a different stamp
    is otherwise refused with :class:`~rank1.errors.OtherSettings`. Returns whether earlier work is kept."""
    folder = Path(folder)
    marker = folder / RESUME_STAMP
    stamp = json.loads(json.dumps(stamp, default=str))
    keep = folder.is_dir() and not overwrite and marker.is_file()
    if keep and read_json(marker) != stamp:
        if not restart_other:
            raise OtherSettings(f"{folder} holds partial work of other settings or inputs; pass --overwrite to "
                                f"discard it, or rerun with the same settings to resume")
        keep = False
    if folder.is_dir() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not keep:
        write_json(marker, stamp)
    return keep
