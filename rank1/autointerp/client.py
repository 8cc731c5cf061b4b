"""Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, ``transformers serve``), cached.

- The ``openai`` client sends the requests; the API key is read from an environment variable whose *name*
  the config holds (default ``OPENAI_API_KEY``) and is never written anywhere: error texts are scrubbed of it
  and of the credentials of the base URL (``http://user:KEY@host/v1`` is sent as given, written as
  ``http://user:***@host/v1``), and the HTTP libraries under the client are kept at WARNING (they log every
  request's URL at INFO).
- Cache: one JSON file per request under ``<cache root>/autointerp/``, keyed by sha256 of the model and
  the request (messages and sampling settings), written atomically; a rerun sends no request for what
  it has seen. The raw answer is cached, so a malformed answer stays malformed (and recorded as an error)
  until the prompt or the model changes, or a run retries the feature: inside :meth:`ChatClient.refreshing`
  (a failed feature retried, see :mod:`rank1.autointerp.run`) the cache is not read, and the new answer
  replaces the entry.
- Bounded concurrency: at most ``concurrency`` requests in flight, whatever the number of threads.
- Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter
  (a 429's ``Retry-After`` is honoured); the client's own retries are off, so every retry is counted
  and the first request that exhausts them aborts the whole run (:class:`EndpointError`) instead of every
  feature retrying against a dead server. A wrong key (401/403), a model the server does not serve (404,
  or a 4xx that names the requested model) abort at once with a message that says what to fix. Other 4xx answers
  (a prompt too long, say) and an answer that is no chat completion (a proxy's HTML page, text that is not JSON)
  are recorded as that request's error (counted as ``failed_requests``).

The retry loop is written here rather than left to ``openai`` (which retries too) for the counts and the
run-wide abort.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rank1.artifacts import REDACTED, read_json, settings_digest, strip_credentials, write_json
from rank1.logs import HTTP_LOGGERS

log = logging.getLogger(__name__)


class EndpointError(ValueError):
    """The endpoint cannot be used as configured (unreachable, refused key, model not served)."""


class Aborted(EndpointError):
    """A request not sent because another one failed fatally."""


@dataclass
class Completion:
    text: str | None  # None when the request failed (``error`` says why)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None


@dataclass
class LLMSettings:
    base_url: str
    model: str
    auth_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    concurrency: int = 8
    max_retries: int = 5
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each time (capped at 60 s)
    timeout: float = 120.0
    temperature: float = 0.0  # negative: not sent (reasoning models such as gpt-5-mini accept only their default)
    max_tokens: int = 300
    token_limit_field: str = "max_tokens"  # or max_completion_tokens (what OpenAI's reasoning models require)

    def describe(self) -> dict[str, Any]:
        """What decides the answers (part of a run's settings): the model and the sampling, not where it is
        served (a run resumes against the same model at another address) and never the key."""
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "token_limit_field": self.token_limit_field}


@dataclass
class Usage:
    """Counts for the progress bar and the summary (cost-relevant: requests and tokens). ``failed_requests``:
    requests that got no usable chat completion (an HTTP error answer other than those that stop the run, no
    message content, an answer that is no chat completion); an answer that came but does not parse is the
    caller's error, not counted here."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "cached", "retries", "failed_requests", "prompt_tokens",
                                              "completion_tokens")}


class ChatClient:
    """``complete(messages)`` -> :class:`Completion`; thread-safe; see the module docstring."""

    def __init__(self, settings: LLMSettings, cache_dir: Path | None):
        import openai

        if not settings.base_url or not settings.model:
            raise EndpointError("the LLM needs a base URL and a model: set llm_base_url and llm_model in the "
                                "profile's [autointerp] table (or --llm_base_url / --llm_model, or the environment "
                                "variables OPENAI_BASE_URL / RANK1_LLM_MODEL)")
        self.settings = settings
        self.cache_dir = cache_dir
        self._key = os.environ.get(settings.auth_env) or ""
        # servers without authentication (vLLM, transformers serve) accept any key; the client needs one
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=self._key or "EMPTY", max_retries=0,
                                     timeout=settings.timeout)
        self._slots = threading.BoundedSemaphore(max(1, settings.concurrency))
        self.usage = Usage()
        self.abort = threading.Event()  # set on the first fatal error: other threads stop at once
        self._local = threading.local()  # .fresh: this thread's requests skip the cache (refreshing)
        quiet_http_loggers(self._client)

    @contextmanager
    def refreshing(self) -> Iterator[None]:
        """Inside, this thread's requests do not read the cache: they are sent, and a new answer replaces the
        cached one (a failed feature retried gets new answers, not its old malformed ones)."""
        before = getattr(self._local, "fresh", False)
        self._local.fresh = True
        try:
            yield
        finally:
            self._local.fresh = before

    def _scrub(self, text: str) -> str:
        """``text`` without the API key and without the credentials of any URL in it."""
        text = strip_credentials(text)
        return text.replace(self._key, REDACTED) if self._key else text

    def complete(self, messages: list[dict[str, str]]) -> Completion:
        s = self.settings
        request: dict[str, Any] = {"messages": messages, s.token_limit_field: s.max_tokens}
        if s.temperature >= 0:
            request["temperature"] = s.temperature
        key = settings_digest({"model": s.model, **request})
        path = self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file() and not getattr(self._local, "fresh", False):
            try:
                hit = read_json(path)
                self.usage.add(cached=1)
                return Completion(hit["text"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0), True)
            except (json.JSONDecodeError, KeyError, OSError):
                log.warning("unreadable cache entry %s; asking again", path)
        done = self._send(request)
        if done.text is not None and path is not None:
            write_json(path, {"model": s.model, "text": done.text, "prompt_tokens": done.prompt_tokens,
                              "completion_tokens": done.completion_tokens})
        return done

    def _send(self, request: dict[str, Any]) -> Completion:
        import openai

        s = self.settings
        for attempt in range(s.max_retries + 1):
            if self.abort.is_set():
                raise Aborted("stopped: another request failed")
            try:
                with self._slots:
                    self.usage.add(requests=1)
                    resp = self._client.chat.completions.create(model=s.model, **request)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                if attempt == s.max_retries:
                    raise self._fatal(self._gave_up(e, attempt + 1)) from None
                wait = self._backoff(attempt, e)
                log.warning("%s; retry %d/%d in %.1f s", self._describe(e), attempt + 1, s.max_retries, wait)
                self.usage.add(retries=1)
                time.sleep(wait)
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._fatal(f"the endpoint {s.base_url} refused the API key ({self._describe(e)}); set the "
                                  f"environment variable {s.auth_env} to a valid key (llm_auth_env names another "
                                  f"variable)") from None
            except openai.NotFoundError as e:
                raise self._fatal(self._not_served(e)) from None
            except openai.APIStatusError as e:
                if self._names_the_model(self._detail(e)):  # transformers serve: 400 "pinned to 'X'; requested 'Y'"
                    raise self._fatal(self._not_served(e)) from None
                self.usage.add(failed_requests=1)
                return Completion(None, error=self._describe(e))
            except (json.JSONDecodeError, openai.APIResponseValidationError) as e:  # a body that is not JSON
                self.usage.add(failed_requests=1)
                return Completion(None, error=self._scrub(f"the answer is not a chat completion ({e})"[:500]))
            if not hasattr(resp, "choices"):  # a body of another content type comes back as its text
                self.usage.add(failed_requests=1)
                return Completion(None, error=self._scrub(f"the answer is not a chat completion: "
                                                          f"{str(resp)[:200]!r}"))
            choice = resp.choices[0] if resp.choices else None
            text = choice.message.content if choice is not None and choice.message is not None else None
            u = resp.usage
            pt, ct = (u.prompt_tokens or 0, u.completion_tokens or 0) if u is not None else (0, 0)
            self.usage.add(prompt_tokens=pt, completion_tokens=ct)
            if text is None:
                self.usage.add(failed_requests=1)
                return Completion(None, pt, ct, error="the answer has no message content")
            return Completion(text, pt, ct)
        raise AssertionError("unreachable")

    def _fatal(self, message: str) -> EndpointError:
        self.abort.set()
        return EndpointError(self._scrub(message))

    def _backoff(self, attempt: int, err: Exception) -> float:
        retry_after = None
        response = getattr(err, "response", None)
        if response is not None:
            try:
                retry_after = float(response.headers.get("retry-after"))
            except (TypeError, ValueError):
                retry_after = None
        if retry_after is not None:
            return min(60.0, max(0.0, retry_after))
        return min(60.0, self.settings.retry_backoff * 2 ** attempt) * (0.5 + random.random() / 2)

    def _names_the_model(self, detail: str) -> bool:
        """Whether a 4xx answer's text names the requested model in quotes, as a server refusing it does
        (``requested 'Y'``, ``model `Y```; quotes escaped inside JSON too). A bare substring would read any
        error whose text merely contains a short model name (``m`` in "maximum") as "model not served" and stop
        the run; a quoted mention in another error still would, which no text-only check can rule out."""
        name = re.escape(self.settings.model)
        return re.search(rf"(\\?['\"`]){name}\1", detail) is not None

    @staticmethod
    def _detail(err: Exception) -> str:
        body = getattr(err, "body", None)
        if isinstance(body, dict):
            body = body.get("detail") or body.get("message") or body.get("error") or body
        if body is None:
            response = getattr(err, "response", None)
            body = getattr(response, "text", "") if response is not None else ""
        return body if isinstance(body, str) else json.dumps(body)

    def _describe(self, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        detail = self._detail(err) or str(err)
        return self._scrub(f"HTTP {status}: {detail}"[:500] if status else f"{type(err).__name__}: {err}")

    def _not_served(self, err: Exception) -> str:
        s = self.settings
        return (f"the endpoint {s.base_url} does not serve model {s.model!r} ({self._describe(err)}); pass the "
                f"name it serves with --llm_model (GET {s.base_url.rstrip('/')}/models lists them) or fix "
                f"--llm_base_url (OpenAI-compatible servers end in /v1)")

    def _gave_up(self, err: Exception, attempts: int) -> str:
        s = self.settings
        import openai

        if isinstance(err, openai.APIConnectionError):
            return (f"cannot reach the LLM endpoint {s.base_url} after {attempts} attempts ({self._describe(err)}); "
                    f"start the server or fix --llm_base_url. Features finished so far are kept: rerun the same "
                    f"command to continue")
        return (f"the LLM endpoint {s.base_url} kept failing after {attempts} attempts ({self._describe(err)}); "
                f"lower --llm_concurrency or wait, then rerun the same command to continue (finished features "
                f"are kept)")


def quiet_http_loggers(client: Any) -> None:
    """Set the loggers of the ``openai`` client and of the HTTP library it runs on to WARNING: the fixed list
    :data:`rank1.logs.HTTP_LOGGERS` and the packages the client's HTTP objects actually come from (``openai``
    may run on a fork of ``httpx``, whose loggers have other names)."""
    http = getattr(client, "_client", None)
    transport = getattr(http, "_transport", None)
    packages = {cls.__module__.split(".")[0] for obj in (http, transport, getattr(transport, "_pool", None))
                if obj is not None for cls in type(obj).__mro__}
    for name in sorted(set(HTTP_LOGGERS) | (packages - set(sys.stdlib_module_names))):
        logging.getLogger(name).setLevel(logging.WARNING)
