"""Logging set-up and the error boundary of entry points: one format, rank 0 speaks, the resolved config comes
first; bad input ends in one ``error:`` line and exit status 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from safetensors import SafetensorError

from rank1.artifacts import (
    WRITE_ELSEWHERE,
    cannot_write,
    forget_new_folders,
    public_config,
    redact,
    remove_new_empty_folders,
)
from rank1.errors import Rank1Error

# Libraries that log every request at INFO (with its URL) or below: kept at WARNING. The HTTP client of the
# autointerp stage quiets the ones it actually runs on as well (rank1.autointerp.client).
HTTP_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "requests")


class RedactSecrets(logging.Filter):
    """A handler filter: every record the handler emits (also another library's: HTTP clients log the URLs they
    call) has its URL credentials and the values of secret environment variables replaced by ``***``
    (:func:`rank1.artifacts.redact`), in the message, the traceback and the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it (logging.Handler.handleError)
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def setup_logging(cfg=None, level: int = logging.INFO) -> None:
    """One format, rank 0 at ``level`` (others at WARNING), HTTP libraries at WARNING, a :class:`RedactSecrets`
    filter on every root handler; then the resolved config (without secrets) is logged."""
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    for noisy in (*HTTP_LOGGERS, "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if cfg is not None and rank == 0:
        logging.getLogger("config").info("%s %s", type(cfg).__name__,
                                         json.dumps(public_config(cfg), indent=1, default=str))


def run_main(main: Callable[[Any], None], cfg: Any) -> None:
    """Run a stage's ``main(cfg)``. Bad input and failed checks end in one ``error:`` line and exit status 2
    instead of a traceback (:func:`report_error` says which errors), and the output folders the stage created are
    removed again if they are still empty. ``RANK1_DEBUG=1`` keeps the traceback."""
    setup_logging(cfg)
    forget_new_folders()
    try:
        main(cfg)
    except Exception as e:
        remove_new_empty_folders()
        if not report_error(e):
            raise
        sys.exit(2)
    forget_new_folders()


def report_error(e: BaseException) -> bool:
    """Print the ``error:`` line of ``e`` and return True when it is bad input or a failed check: the library's
    errors (:class:`rank1.errors.Rank1Error`), invalid values (``ValueError``, undecodable JSON among them), files
    that cannot be read or written (``OSError``: missing, disk full, read-only), damaged safetensors files, and
    HTTP errors of the ``openai`` client. False (print nothing) for anything else, a bug, and when ``RANK1_DEBUG``
    is set: the caller re-raises it with its traceback."""
    message = None if os.environ.get("RANK1_DEBUG") else error_message(e)
    if message is None:
        return False
    print(f"error: {message}", file=sys.stderr, flush=True)
    return True


def error_message(e: BaseException) -> str | None:
    """The one-line message of an error :func:`report_error` reports (None: not one of those)."""
    if isinstance(e, Rank1Error):
        return str(e)
    endpoint = _endpoint(e)
    if endpoint is not None:
        return (f"the LLM endpoint {endpoint} failed ({type(e).__name__}: {e}); check that it is up, OpenAI-compatible "
                f"(the base URL ends in /v1) and serves the model (--llm_base_url, --llm_model), then rerun")
    if isinstance(e, SafetensorError):
        path = _path_in_traceback(e, ".safetensors")
        if str(e).startswith("Error while serializing"):
            written = cannot_write(path or "a safetensors file", e)
            return str(written) if written else f"cannot write {path or 'a safetensors file'} ({e})"
        return (f"{path or 'a safetensors file'} is damaged or cut short ({e}); restore it, or rerun the stage that "
                f"wrote it with --overwrite (an adapter: retrain it, 0_train_lora.sh)")
    if isinstance(e, json.JSONDecodeError):
        path = _path_in_traceback(e, ".json")
        return f"{path or 'a JSON file'} is damaged or cut short (not valid JSON: {e}); restore it, or rerun the " \
               f"stage that wrote it with --overwrite"
    if isinstance(e, OSError):
        return _os_error_message(e)
    if isinstance(e, ValueError):
        return str(e)
    return None


def _os_error_message(e: OSError) -> str:
    """An OSError naming its file and, for a full disk or a place it may not write, what to do."""
    if e.filename is None:
        return str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):  # raised by writes only
        return str(cannot_write(e.filename, e))
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{e.filename}: permission denied; make it accessible to this user, {WRITE_ELSEWHERE}"
    return str(e)


def _path_in_traceback(e: BaseException, suffix: str) -> str | None:
    """The file a failed read was reading: the innermost frame's local variable that names a ``suffix`` file."""
    for frame in reversed(_frames(e)):
        for value in frame.f_locals.values():
            if isinstance(value, str | Path) and str(value).endswith(suffix) and Path(value).is_file():
                return str(value)
    return None


def _endpoint(e: BaseException) -> str | None:
    """For an error of the ``openai`` client (its own, or a JSON or I/O error raised inside it: a server that
    answers something else than JSON), the URL of the request, without credentials; None for any other error."""
    openai = sys.modules.get("openai")  # imported by the stages that talk to an LLM; nothing else raises its errors
    if openai is None or not isinstance(e, openai.OpenAIError | ValueError | OSError):
        return None
    frames = _frames(e)
    if not isinstance(e, openai.OpenAIError) and not any(_is_http(f.f_globals.get("__name__", "")) for f in frames):
        return None
    holders = [e, *(v for f in reversed(frames) for v in f.f_locals.values() if _is_http(type(v).__module__))]
    url = next((u for u in map(_request_url, holders) if u is not None), None)
    if url is None:
        return "(its URL is unknown: see --llm_base_url)"
    host = url.hostname or ""
    return urlunsplit((url.scheme, f"{host}:{url.port}" if url.port else host, url.path, "", ""))


def _is_http(module: str) -> bool:
    """A module of the ``openai`` client or of the HTTP library under it (``httpx``, or a fork of it)."""
    return module.startswith(("openai", "httpx"))


def _request_url(holder: Any):
    """The URL of an httpx request, or of the request of a response or of an openai error, split; else None."""
    try:
        request = holder if type(holder).__name__ == "Request" else holder.request
        return urlsplit(str(request.url))
    except (AttributeError, RuntimeError, ValueError):  # httpx raises RuntimeError for a response without request
        return None


def _frames(e: BaseException) -> list:
    """The frames of ``e``'s traceback, outermost first."""
    tb, frames = e.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames
