"""Atomic artifact writing and run-folder metadata.

Every file a stage produces goes to a temporary sibling first and is moved into place with
``os.replace``, so a killed stage leaves either the old artifact or the new one, never half of one.

Every stage follows one protocol for work that exists already (:func:`reuse_finished`, :func:`resume_partial`):
finished work made from the same settings and inputs is reused, finished work made from others is refused
with a message (``--overwrite`` recomputes), and partial work resumes only when its stamp matches. Settings and
files are identified by :func:`settings_digest` and :func:`file_sha256`.

Finished work whose files no longer parse (cut short, overwritten) is never reported up to date: it is refused
with a message naming the file and saying to recompute it (``--overwrite``), as work of other settings is. It is
not recomputed on its own: the folder may hold hours of other results, and a damaged file that was written
atomically means something outside the stage changed it. (An activation store is the exception: its shards carry
their own key, so a damaged manifest is rebuilt from them; see :func:`rank1.store.extract_store`.)

Errors name what they are about (:func:`read_json`, :func:`cannot_write`), and a stage that fails leaves no
empty output folder behind (:func:`make_folder`, :func:`remove_new_empty_folders`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file

from rank1.constants import (
    ARGV_JSON,
    CHECKPOINT_DONE,
    CONFIG_JSON,
    RESUME_STAMP,
    STORE_MANIFEST,
    TOPK_FEATURES,
    TOPK_VOCAB,
)
from rank1.errors import CannotWrite, CorruptArtifact, OtherSettings

log = logging.getLogger(__name__)
SECRET_MARKERS = ("token", "key", "secret", "password")
SECRET_PARAMS = ("sig", "signature", "auth", "authorization", "credential", "credentials", "apikey")  # query names
REDACTED = "***"
MIN_SECRET_LENGTH = 8  # a secret environment variable's value shorter than this is not redacted from logs
URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
SECRET_QUERY_RE = re.compile(r"([?&;]([^=&#;]+)=)([^&#;]*)")
TIMINGS_JSON = "timings.json"  # beside a stage's artifacts: the wall times kept out of them (see record_timings)
REPO = Path(__file__).resolve().parents[1]
WRITE_ELSEWHERE = "or write elsewhere: RANK1_ROOT=DIR moves every output (--out DIR one stage's)"
# What rebuilds a file of this name, where no argv.json beside it names the script that wrote it.
REBUILT_BY = {
    STORE_MANIFEST: "rerun the extraction that made the store: 2.0 (adapters) or 2.4 (MLP neurons) keep its "
                    "finished shards and write the manifest again; 5.1 (residual stream) with --overwrite",
    TOPK_FEATURES: "rerun the top-k stage that made it (2.1 adapters, 2.5 MLP neurons, 3.1 SAE latents) with "
                   "--overwrite",
}
REBUILT_BY[TOPK_VOCAB] = REBUILT_BY[TOPK_FEATURES]
_new_folders: list[Path] = []  # output folders this process created (make_folder), until the stage ends


# ---- output folders and write errors --------------------------------------------------------------------

def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder``, remembering the folders it created: if the stage then fails, its entry point removes
    those still empty (:func:`remove_new_empty_folders`), so a refused run leaves no empty output folder."""
    folder = Path(folder).absolute()
    new = []
    p = folder
    while not p.exists() and not p.is_symlink() and p != p.parent:
        new.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    _new_folders.extend(new)
    return folder


def remove_new_empty_folders() -> None:
    """Remove the folders :func:`make_folder` created that are still empty (the deepest first), and forget them."""
    for p in sorted(set(_new_folders), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()
    _new_folders.clear()


def forget_new_folders() -> None:
    """Keep the folders created so far (the stage finished, or another begins)."""
    _new_folders.clear()


def _errno_of(e: BaseException) -> int | None:
    """The errno of an OSError, or of the I/O error a safetensors error reports (``... (os error 28)``)."""
    if isinstance(e, OSError):
        return e.errno
    m = re.search(r"os error (\d+)", str(e)) if isinstance(e, SafetensorError) else None
    return int(m.group(1)) if m else None


def cannot_write(path: str | os.PathLike, e: BaseException) -> CannotWrite | None:
    """The error to raise when writing ``path`` failed with ``e``: one that names the path, why (disk full,
    read-only, no permission, a file in the way) and what to do; None when ``e`` is not such a failure."""
    code = _errno_of(e)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why, fix = "no space left on the device (or over quota)", "free space there"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why, fix = "read-only or not permitted", "make it writable"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why, fix = "a file is in the way of a folder", "move the file"
    else:
        return None
    return CannotWrite(f"cannot write {path}: {why}; {fix}, {WRITE_ELSEWHERE}", code)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` (file or folder). A full disk or an
    unwritable folder raises :class:`~rank1.errors.CannotWrite` naming ``path``."""
    path = Path(path)
    try:
        with _atomic_path(path) as target:
            yield target
    except (OSError, SafetensorError) as e:
        err = None if isinstance(e, CannotWrite) else cannot_write(path, e)
        if err is None:
            raise
        raise err from e


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    make_folder(path.parent)
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
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON; ``sort_keys`` where the key order means nothing and may come from a set or another
    library's dict (the file is then the same bytes in every process)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
                      ) -> Path:
    """``tensors`` (name -> torch tensor) and ``metadata`` as a safetensors file, atomically. The same tensors and
    metadata give the same bytes in every process: safetensors writes ``__metadata__`` in hash order, which
    varies between processes, so its keys are sorted here (tensors are already ordered by dtype and name)."""
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)
        if metadata:
            _sort_safetensors_metadata(tmp)

    return write_with(path, write)


def _sort_safetensors_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file ``path`` in place with its ``__metadata__`` keys sorted. The same
    compact JSON in another key order has the same length (safetensors and ``json`` escape the same characters),
    so the tensor data stay where they are; any room left is padded with spaces, as the format allows."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:
            raise RuntimeError(f"{path}: the safetensors header grew from {n} to {len(text)} bytes when its metadata "
                               f"was sorted; this version of safetensors writes JSON another way")
        f.seek(8)
        f.write(text.ljust(n, b" "))


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Let ``writer(tmp_path)`` produce a file or folder, then move it atomically onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def newest_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered ``folder/<step>/`` marked complete (``CHECKPOINT_DONE``), or None."""
    done = [p.parent for p in folder.glob(f"*/{CHECKPOINT_DONE}")]
    return max(done, key=lambda p: int(p.name)) if done else None


def read_json(path: str | os.PathLike, rebuild: str | None = None) -> Any:
    """The JSON in ``path``. A file that does not parse raises :class:`~rank1.errors.CorruptArtifact` naming it and
    what rebuilds it: ``rebuild`` (the caller knows), else :func:`rebuild_hint`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"{e.msg}, line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise CorruptArtifact(f"{path} is damaged or cut short (not valid JSON: {why}); "
                              f"{rebuild or rebuild_hint(path)}") from None


def rebuild_hint(path: Path) -> str:
    """What rebuilds the artifact ``path``: the script recorded in the ``argv.json`` beside it (a script of this
    repository), else the stage known to write a file of that name (:data:`REBUILT_BY`), else its stage."""
    try:
        script = Path(json.loads((path.parent / ARGV_JSON).read_text())["argv"][0])
        rel = (REPO / script).resolve().relative_to(REPO)
        if path.name != ARGV_JSON and rel.suffix == ".py" and not rel.parts[0].startswith("."):
            return f"rerun {rel} with --overwrite to rebuild it"
    except (OSError, ValueError, KeyError, IndexError, TypeError):  # no such record, or not one of our scripts
        pass
    return REBUILT_BY.get(path.name, "rerun the stage that wrote it with --overwrite to rebuild it")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def public_config(cfg: Any) -> dict[str, Any]:
    """The config as a dict, without fields that look like secrets and without credentials in its values
    (:func:`strip_credentials`)."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: strip_credentials(v) for k, v in values.items() if not is_secret_name(k)}


def is_secret_name(name: str) -> bool:
    """``hf_token``, ``api_key``, ``openai_secret``, ``password``: a word of the name is a secret marker
    (``max_tokens`` or ``batch_tokens`` are counts, not secrets)."""
    words = name.lower().replace("-", "_").split("_")
    return any(m in words for m in SECRET_MARKERS) or name.lower().endswith(SECRET_MARKERS)


def strip_credentials(value: Any) -> Any:
    """``value`` (a string, or lists, tuples and dicts of them, recursively) with the credentials of every URL in
    it replaced by ``***``: the password of the userinfo (``http://user:KEY@host`` -> ``http://user:***@host``; a
    userinfo without password, often a token itself, as a whole: ``https://***@host``) and the values of query
    parameters named like secrets (``?api_key=...``, ``&token=...``; :func:`is_secret_name`, :data:`SECRET_PARAMS`).
    A URL here is ``scheme://...`` up to the next blank or quote. Other values are returned as they are."""
    return _map_strings(value, _strip_text)


def redact(value: Any) -> Any:
    """:func:`strip_credentials` of ``value``, with the values of secret environment variables
    (:func:`secret_env_values`) replaced by ``***`` too."""
    secrets = secret_env_values()

    def text(s: str) -> str:
        s = _strip_text(s)
        for secret in secrets:
            s = s.replace(secret, REDACTED)
        return s

    return _map_strings(value, text)


def secret_env_values() -> list[str]:
    """The values of the environment variables whose names look secret (:func:`is_secret_name`: ``HF_TOKEN``,
    ``OPENAI_API_KEY``) and that are long enough (:data:`MIN_SECRET_LENGTH`) not to be ordinary words; longest
    first, so a secret that contains another is replaced whole."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def public_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every flag named like a secret (``--hf_token X``, ``--api_key=X``) replaced by
    ``***`` and the rest :func:`redact`-ed."""
    out, hide_next = [], False
    for arg in argv:
        name, eq, _ = arg.partition("=")
        flag = arg.startswith("-")
        if hide_next and not flag:
            out.append(REDACTED)
        elif flag and eq and is_secret_name(name.lstrip("-")):
            out.append(f"{name}={REDACTED}")
        else:
            out.append(redact(arg))
        hide_next = flag and not eq and is_secret_name(arg.lstrip("-"))
    return out


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``fn`` applied to every string of ``value`` (dict values, list and tuple items, recursively)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_map_strings(v, fn) for v in value)
    return value


def _strip_text(text: str) -> str:
    return URL_RE.sub(lambda m: _strip_url(m.group(0)), text) if "://" in text else text


def _strip_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        authority = f"{user}:{REDACTED}@{host}" if has_password and user else f"{REDACTED}@{host}"
    tail = SECRET_QUERY_RE.sub(lambda m: m.group(1) + (REDACTED if _secret_param(m.group(2)) else m.group(3)), tail)
    return f"{scheme}://{authority}{tail}"


def _secret_param(name: str) -> bool:
    return is_secret_name(name) or name.lower().replace("-", "_").endswith(SECRET_PARAMS)


def write_run_metadata(folder: str | os.PathLike, cfg: Any, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config and the command line into ``folder``, without secrets: config fields named like
    secrets are left out, every value has its URL credentials replaced by ``***`` (:func:`strip_credentials`), and
    the command line also the values of secret flags and environment variables (:func:`public_argv`). (The config
    is not searched for environment values: what a rerun compares with it must not depend on the environment.)"""
    folder = Path(folder)
    write_json(folder / CONFIG_JSON, strip_credentials({**public_config(cfg), **(extra or {})}))
    write_json(folder / ARGV_JSON, redact({
        "argv": public_argv(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cwd": os.getcwd(),
    }))


def record_timings(folder: str | os.PathLike, artifact: str, **seconds: float) -> Path:
    """Record the wall times (``seconds``, by name) of making ``artifact`` in ``folder``'s :data:`TIMINGS_JSON`,
    one entry per artifact (a rerun replaces its own). Wall times differ from run to run, so they stay out of the
    artifacts, which are then the same bytes for the same inputs and seed."""
    path = Path(folder) / TIMINGS_JSON
    try:
        timings = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # a damaged record of times is replaced, not an error
        timings = {}
    timings = timings if isinstance(timings, dict) else {}
    timings[artifact] = {k: round(float(v), 3) for k, v in seconds.items()}
    return write_json(path, timings, sort_keys=True)


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


_ABSENT = object()  # an entry one side of a comparison lacks


def _differences(key: str, there: Any, now: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, value now) of each leaf that differs: a changed settings dict is named by the
    entries that changed (``settings.tokens_sha256``), not shown whole. Inside two compared dicts an entry one
    side lacks differs from every value, null included, and reads "(absent)" (as dict equality has it); a
    dotted key of ``expected`` the saved file lacks reads null there (:func:`_saved_value`)."""
    if isinstance(there, Mapping) and isinstance(now, Mapping):
        return [d for sub in sorted(set(there) | set(now), key=str)
                for d in _differences(f"{key}.{sub}", there.get(sub, _ABSENT), now.get(sub, _ABSENT))]
    return [] if there == now else [(key, there, now)]


def _short(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def reuse_finished(done: str | os.PathLike, expected: Mapping[str, Any], overwrite: bool,
                   redo: str = "pass --overwrite to recompute it") -> dict | None:
    """The saved JSON ``done`` (the file a stage writes last) when it can be reused; None when the work must be
    done (no such file, or ``overwrite``). ``expected`` maps a dotted key of the saved JSON (``"settings"``,
    ``"identity.weights_sha256"``, ``"config.n_splits"``) to the value this run would write there (compared
    after a JSON round trip, so tuples equal lists). A file made with other values raises
    :class:`~rank1.errors.OtherSettings` naming them and ``redo``. The finished work is ``done`` and the JSON files
    beside it: one that does not parse raises :class:`~rank1.errors.CorruptArtifact` naming it and ``redo``."""
    done = Path(done)
    if overwrite or not done.is_file():
        return None
    damaged = f"the finished work in {done.parent} is not whole: {redo}"
    saved = read_json(done, damaged)
    for other in sorted(done.parent.glob("*.json")):
        if other != done and other.name != TIMINGS_JSON and not other.name.startswith(".") and other.is_file():
            read_json(other, damaged)
    changed = [d for k, v in expected.items()
               for d in _differences(k, _saved_value(saved, k), json.loads(json.dumps(v, default=str)))]
    if changed:
        what = "; ".join(f"{k}: {_short(there)} there, {_short(now)} now" for k, there, now in changed)
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
    make_folder(folder)
    if not keep:
        write_json(marker, stamp)
    return keep
