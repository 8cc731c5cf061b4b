"""Failed features: the summary's failure counts on a run with known failures (a scripted client in-process),
the retry of failed features without --overwrite, the --max_failed_share threshold (in-process and through
2.2's entry point: one ``error:`` line, exit 2), and answers that are no chat completion."""

import json
import logging
from types import SimpleNamespace

import httpx
import openai
import pytest

from helpers import hand_topk, make_run, outputs_under, queued_http_server, run_script
from rank1 import constants as K
from rank1.artifacts import read_json
from rank1.autointerp import AutointerpOptions, LexiconCategoriser, LLMExplainer, run_autointerp
from rank1.autointerp.client import ChatClient, LLMSettings
from rank1.autointerp.run import TooManyFailures
from rank1.rehearsal import ScriptedEndpoint, free_port
from rank1.runs import run_from_folder

VALID = '{"explanation": "the word Wait", "classification": 0, "reasoning": "every peak is Wait"}'
HTML = "<html>502 Bad Gateway</html>"
MALFORMED = "malformed answer: no JSON object in the answer"


def _bad_request() -> openai.BadRequestError:
    response = httpx.Response(400, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"),
                              json={"error": {"message": "prompt too long"}})
    return openai.BadRequestError("prompt too long", response=response, body={"message": "prompt too long"})


class ScriptedOpenAI:
    """Stands in for ``openai.OpenAI`` inside a real :class:`ChatClient`: each request takes the next item of
    ``script``: a text (answered as a chat completion, 10 prompt and 5 completion tokens), the bare string
    :data:`HTML` (what ``openai`` returns for a body that is not JSON) or an exception (raised)."""

    def __init__(self, script):
        self.script, self.sent = list(script), 0
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, model, **request):
        self.sent += 1
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        if item == HTML:
            return item
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=item))],
                               usage=SimpleNamespace(prompt_tokens=10, completion_tokens=5))


def _client(tmp_path, script) -> ChatClient:
    client = ChatClient(LLMSettings("http://127.0.0.1:1/v1", "scripted-model", max_retries=0), tmp_path / "cache")
    client._client = ScriptedOpenAI(script)
    return client


def _features():
    """Five features with top examples (each prompt different: no two share a cached answer) and a sixth
    without (skipped)."""
    specs = [{"top": [([" So", f" {i}", " Wait", ","], [0, 0, 4.0, 0], 2)] * 3, "name": f"f{i}"} for i in range(5)]
    return hand_topk([*specs, {"top": [], "name": "empty"}], context=4)


def _run(tmp_path, script, share, out="run"):
    client = _client(tmp_path, script)
    run_autointerp(_features(), tmp_path / out, LLMExplainer(client), None, LexiconCategoriser(),
                   AutointerpOptions(n_examples=3, window=2, max_failed_share=share), {"what": "test"})
    return client


def _records(folder):
    return [json.loads(x) for x in (folder / K.AUTOINTERP_RESULTS).read_text().splitlines()]


def test_failure_counts_agree_threshold_and_retry(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    # features 0..4 in order: ok, malformed answer, HTTP 400, ok, an HTML page; feature 5 is skipped
    script = [VALID, "not json at all", _bad_request(), VALID, HTML]
    with pytest.raises(TooManyFailures) as err:
        _run(tmp_path, script, share=0.5)
    msg = str(err.value)
    assert msg.startswith(f"{out}: 3 of 5 attempted features failed (60%, more than --max_failed_share 0.5)")
    assert f"most common failure (1x): {MALFORMED}" in msg and "rerun the same command" in msg

    # the records are written, and every failure count agrees with them (counted by hand above)
    assert [r["status"] for r in _records(out)] == ["ok", "error", "error", "ok", "error", "skipped"]
    assert (out / K.CONFIG_JSON).is_file() and not (out / K.AUTOINTERP_JOURNAL).exists()
    summary = read_json(out / K.AUTOINTERP_SUMMARY)
    assert summary["status"] == {"ok": 2, "error": 3, "skipped": 1}
    assert summary["failed_steps"] == {"explain": 3}
    causes = summary["failures"].pop("causes")
    assert summary["failures"] == {"attempted": 5, "failed": 3, "share": 0.6, "max_failed_share": 0.5}
    assert list(causes.values()) == [1, 1, 1] and list(causes)[0] == MALFORMED
    assert list(causes)[1].startswith("request failed: HTTP 400: prompt too long")
    assert list(causes)[2] == f"request failed: the answer is not a chat completion: {HTML!r}"
    assert summary["usage"] == {"requests": 5, "cached": 0, "retries": 0, "failed_requests": 2,
                                "prompt_tokens": 30, "completion_tokens": 15}  # 3 answers came: 10 + 5 tokens each

    # the same command again retries only features 1, 2 and 4 (the malformed answer is asked again, not taken
    # from the cache) and keeps the others as they were
    kept = _records(out)
    caplog.clear()
    client = _run(tmp_path, [VALID] * 3, share=0.5)
    assert client._client.sent == 3 and "retrying 3 failed of 6 features" in caplog.text
    again = _records(out)
    assert [r["status"] for r in again] == ["ok"] * 5 + ["skipped"]
    assert [again[i] for i in (0, 3, 5)] == [kept[i] for i in (0, 3, 5)]
    summary = read_json(out / K.AUTOINTERP_SUMMARY)
    assert summary["failures"] == {"attempted": 5, "failed": 0, "share": 0.0, "max_failed_share": 0.5, "causes": {}}
    assert summary["failed_steps"] == {} and summary["usage"]["requests"] == 3

    # finished without failures: up to date, and another threshold is no other setting (nothing recomputed)
    before = (out / K.CONFIG_JSON).read_text()
    client = _run(tmp_path, [], share=0.0)
    assert client._client.sent == 0 and (out / K.CONFIG_JSON).read_text() == before


def test_failures_within_the_threshold_are_kept_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    script = [VALID, "not json at all", VALID, VALID, VALID]
    _run(tmp_path, script, share=0.2)  # 1 of 5 = 0.2: not more than the threshold
    summary = read_json(tmp_path / "run" / K.AUTOINTERP_SUMMARY)
    assert summary["status"] == {"ok": 4, "error": 1, "skipped": 1} and summary["failures"]["share"] == 0.2
    assert summary["usage"]["failed_requests"] == 0  # the answer came; it did not parse
    assert f"1 of 5 attempted features failed (most common: {MALFORMED}); rerun the same command" in caplog.text
    with pytest.raises(TooManyFailures, match="1 of 5 attempted features failed"):
        _run(tmp_path, [VALID, "still not json", VALID, VALID, VALID], share=0.1, out="strict")


def test_an_answer_that_is_no_chat_completion_is_a_failed_request(tmp_path):
    client = _client(tmp_path, [json.JSONDecodeError("Expecting value", "<html>", 0), HTML, VALID])
    first, second, third = (client.complete([{"role": "user", "content": str(i)}]) for i in range(3))
    assert first.text is None and first.error.startswith("the answer is not a chat completion (Expecting value")
    assert second.text is None and second.error == f"the answer is not a chat completion: {HTML!r}"
    assert third.text == VALID and third.error is None
    assert (client.usage.requests, client.usage.failed_requests, client.usage.prompt_tokens) == (3, 2, 10)


def test_threshold_is_checked():
    with pytest.raises(ValueError, match="max_failed_share must be a share between 0 and 1, got 1.5"):
        AutointerpOptions(max_failed_share=1.5)
    assert "max_failed_share" not in AutointerpOptions().settings()


# ---------------------------------------------------------------- through 2.2's entry point


@pytest.fixture
def topk_of_a_run(tmp_path):
    """Under a fresh RANK1_ROOT: a test-profile run and a hand-made LoRA top-k folder recorded as made from it."""
    with outputs_under(tmp_path / "root"):
        run = make_run("a")
        res = _features()
        res.meta = {"kind": "lora", "identity": run_from_folder(run).identity(), "n_tokens": 100}
        folder = tmp_path / "topk"
        res.save(folder)
        (folder / K.CONFIG_JSON).write_text(json.dumps(res.meta))
        yield run, folder


def _garbage_server():
    """An OpenAI-compatible endpoint whose every answer is a chat completion with text that is not JSON."""
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "Sure! Here you go."}}]}).encode()
    return queued_http_server(default=(200, {}, body))[1]


def test_entry_point_fails_with_one_error_line_then_a_rerun_retries(topk_of_a_run, tmp_path):
    run, topk = topk_of_a_run
    out = tmp_path / "out"
    env = {"RANK1_ROOT": str(tmp_path / "root"), "RANK1_CACHE": str(tmp_path / "cache")}

    def script(url):
        return run_script(["2_lora_activation_interp/2.2_run_lora_autointerp.py", "--profile", "test", "--run",
                           run, "--topk", topk, "--out", out, "--explainer", "llm", "--scorer", "none",
                           "--categoriser", "lexicon", "--llm_base_url", url, "--llm_model", "scripted",
                           "--llm_max_retries", "0", "--llm_concurrency", "2"], check=False, env=env)

    httpd = _garbage_server()
    try:
        proc = script(f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    finally:
        httpd.shutdown()
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {out}: 5 of 5 attempted features failed (100%, more than "
                               f"--max_failed_share 0.1); most common failure (5x): {MALFORMED}")
    assert "rerun the same command" in lines[0]
    assert read_json(out / K.AUTOINTERP_SUMMARY)["status"] == {"error": 5, "skipped": 1}

    port = free_port()
    with ScriptedEndpoint(port, "scripted") as endpoint:  # the endpoint fixed (served at another address)
        proc = script(f"http://127.0.0.1:{port}/v1")
    assert proc.returncode == 0, proc.stderr
    assert endpoint.requests == 5 and "retrying 5 failed of 6 features" in proc.stderr
    assert read_json(out / K.AUTOINTERP_SUMMARY)["status"] == {"ok": 5, "skipped": 1}
