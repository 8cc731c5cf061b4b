"""Secrets stay out of what is saved and logged: URL credentials stripped from hand-written URLs, argv and the
config; the logging filter redacts secret environment values and URL credentials in any library's records; the
HTTP loggers the LLM client runs on are quiet; and a canary run of 2.2's entry point against the scripted endpoint
(key in the environment, password in the endpoint URL) sends the credentials but writes and prints neither."""

import base64
import json
import logging
from pathlib import Path

import pytest

from helpers import hand_topk, make_run, outputs_under, run_script
from rank1 import constants as K
from rank1.artifacts import public_argv, public_config, redact, strip_credentials, write_run_metadata
from rank1.autointerp.client import ChatClient, LLMSettings
from rank1.logs import RedactSecrets, setup_logging
from rank1.rehearsal import ScriptedEndpoint, free_port
from rank1.runs import run_from_folder

KEY = "sk-canary-7d3f0a9b1c2e4f56"  # the API key, in the environment variable the client reads
URL_SECRET = "canary-url-secret"  # the password written into the endpoint URL


@pytest.mark.parametrize("url,expected", [
    ("http://user:KEY@host/v1", "http://user:***@host/v1"),
    ("https://user:p%40ss@h.example:8443/v1/", "https://user:***@h.example:8443/v1/"),
    ("https://ghp_TOKEN@github.com/o/r.git", "https://***@github.com/o/r.git"),  # a lone userinfo is a token
    ("http://h/v1?api_key=abc&model=m&token=t#top", "http://h/v1?api_key=***&model=m&token=***#top"),
    ("s3://b/k?X-Amz-Signature=ff&X-Amz-Credential=cc&x=1", "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***&x=1"),
    ("http://host:8000/v1", "http://host:8000/v1"),  # nothing secret: unchanged
    ("http://h/max_tokens?max_tokens=3", "http://h/max_tokens?max_tokens=3"),  # a count, not a secret
    ("see 'http://u:PW@h/x' and http://a:B@c", "see 'http://u:***@h/x' and http://a:***@c"),  # inside text
    ("user:pw@host", "user:pw@host"),  # no scheme: not a URL
])
def test_strip_credentials_of_hand_written_urls(url, expected):
    assert strip_credentials(url) == expected


def test_strip_credentials_recursively_and_argv():
    value = {"a": ["http://u:PW@h", ("x", "ftp://q:R@s")], "n": 3, "b": {"c": "http://h?key=K"}}
    assert strip_credentials(value) == {"a": ["http://u:***@h", ("x", "ftp://q:***@s")], "n": 3,
                                        "b": {"c": "http://h?key=***"}}
    argv = ["2.2.py", "--llm_base_url=http://u:PW@h/v1", "--hf_token", "hf_abc", "--max_tokens", "3",
            "--api_key=zzz", "--use_key", "--x", "http://h?token=T"]
    assert public_argv(argv) == ["2.2.py", "--llm_base_url=http://u:***@h/v1", "--hf_token", "***",
                                 "--max_tokens", "3", "--api_key=***", "--use_key", "--x", "http://h?token=***"]
    assert public_config({"llm_base_url": "http://u:PW@h/v1", "hf_token": "x", "n": 1}) == \
        {"llm_base_url": "http://u:***@h/v1", "n": 1}


def test_redact_replaces_secret_environment_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_canary_0123456789")
    monkeypatch.setenv("MY_API_KEY", "short")  # under MIN_SECRET_LENGTH: ordinary text, kept
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-but-long")  # not a secret name
    assert redact("a hf_canary_0123456789 b short false-but-long http://u:P@h") == \
        "a *** b short false-but-long http://u:***@h"


def test_run_metadata_holds_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr("sys.argv", ["x.py", f"--llm_base_url=http://user:{URL_SECRET}@h/v1", "--api_key", KEY])
    write_run_metadata(tmp_path, {"llm_base_url": f"http://user:{URL_SECRET}@h/v1", "api_key": KEY},
                       {"nested": [f"http://h/v1?access_token={URL_SECRET}"]})
    config = json.loads((tmp_path / K.CONFIG_JSON).read_text())
    assert config == {"llm_base_url": "http://user:***@h/v1", "nested": ["http://h/v1?access_token=***"]}
    assert json.loads((tmp_path / K.ARGV_JSON).read_text())["argv"] == \
        ["x.py", "--llm_base_url=http://user:***@h/v1", "--api_key", "***"]


@pytest.fixture
def redacting_root(caplog):
    """setup_logging's filter on the root handlers (pytest's capture among them), removed afterwards."""
    caplog.set_level(logging.INFO)
    setup_logging()
    yield caplog
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(f)


def test_log_filter_redacts_every_library_record(redacting_root, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert all(any(isinstance(f, RedactSecrets) for f in h.filters) for h in logging.getLogger().handlers)
    logging.getLogger("some.http.library").warning("POST %s with key %s", f"http://u:{URL_SECRET}@h/v1", KEY)
    try:
        raise ValueError(f"refused {KEY}")
    except ValueError:
        logging.getLogger("other").exception("failed at http://h/v1?token=%s", URL_SECRET)
    text = redacting_root.text
    assert "POST http://u:***@h/v1 with key ***" in text and "http://h/v1?token=***" in text
    assert "ValueError: refused ***" in text and KEY not in text and URL_SECRET not in text


def test_http_loggers_of_the_client_are_quiet(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK1_CACHE", str(tmp_path / "cache"))
    port = free_port()
    settings = LLMSettings(f"http://127.0.0.1:{port}/v1", "scripted")

    def http_loggers():
        return {n.split(".")[0] for n in logging.root.manager.loggerDict
                if n.startswith(("openai", "httpx", "httpcore", "urllib3"))}

    with ScriptedEndpoint(port, "scripted"):
        ChatClient(settings, None).complete([{"role": "user", "content": "hello"}])  # every HTTP logger exists now
        for name in http_loggers():  # as OPENAI_LOG=debug, or another library, would leave them
            logging.getLogger(name).setLevel(logging.DEBUG)
        client = ChatClient(settings, None)
        assert client.complete([{"role": "user", "content": "hello"}]).text is not None
    used = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in http_loggers()]
    assert "openai" in http_loggers() and len(used) >= 3
    assert {n: logging.getLogger(n).getEffectiveLevel() for n in used} == {n: logging.WARNING for n in used}


# ---------------------------------------------------------------- the canary run of 2.2


@pytest.fixture
def topk_of_a_run(tmp_path):
    """Under a fresh RANK1_ROOT: a test-profile run and a hand-made LoRA top-k folder of two features recorded as
    made from it."""
    with outputs_under(tmp_path / "root"):
        run = make_run("a")
        specs = [{"top": [([" So", f" {i}", " Wait", ","], [0, 0, 4.0, 0], 2)] * 3,
                  "decile": [([" a", " Wait", " b"], [0, 3.0, 0], 1)] * 2,
                  "random": [([" c", " d", " e"], [0, 0, 0], 1)] * 2, "threshold": 1.0} for i in range(2)]
        res = hand_topk(specs, context=4)
        res.meta = {"kind": "lora", "identity": run_from_folder(run).identity(), "n_tokens": 100}
        folder = tmp_path / "root" / "topk"
        res.save(folder)
        (folder / K.CONFIG_JSON).write_text(json.dumps(res.meta))
        yield run, folder


def test_canary_secrets_are_sent_but_never_written_or_printed(topk_of_a_run, tmp_path):
    run, topk = topk_of_a_run
    root, out = tmp_path / "root", tmp_path / "root" / "out"
    port = free_port()
    url = f"http://user:{URL_SECRET}@127.0.0.1:{port}/v1"
    env = {"RANK1_ROOT": str(root), "RANK1_CACHE": str(root / "cache"), "OPENAI_API_KEY": KEY,
           "HF_TOKEN": f"hf_{KEY}", "OPENAI_LOG": "debug"}  # OPENAI_LOG: the openai client would log every request
    endpoint = ScriptedEndpoint(port, "scripted", tmp_path / "serve.log")
    seen = []

    class Recording(endpoint.server.RequestHandlerClass):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            super().do_POST()

    endpoint.server.RequestHandlerClass = Recording
    with endpoint:
        proc = run_script(["2_lora_activation_interp/2.2_run_lora_autointerp.py", "--profile", "test", "--run", run,
                           "--topk", topk, "--out", out, "--explainer", "llm", "--scorer", "llm", "--categoriser",
                           "llm", f"--llm_base_url={url}", "--llm_model", "scripted", "--llm_concurrency", "2"],
                          check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (out / K.AUTOINTERP_RESULTS).read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"] and endpoint.requests >= 6
    # the credentials of the URL were sent (httpx turns the URL's userinfo into basic authentication)
    assert seen and set(seen) == {"Basic " + base64.b64encode(f"user:{URL_SECRET}".encode()).decode()}
    # ... and appear nowhere: no file of the run (config.json, argv.json, the records, the cache), no output
    assert json.loads((out / K.CONFIG_JSON).read_text())["llm_base_url"] == f"http://user:***@127.0.0.1:{port}/v1"
    assert f"--llm_base_url=http://user:***@127.0.0.1:{port}/v1" in json.loads((out / K.ARGV_JSON).read_text())["argv"]
    assert "llm_base_url" in proc.stderr  # the logged config is there, without the secret
    files = [p for p in root.rglob("*") if p.is_file()] + [tmp_path / "serve.log"]
    assert len(files) > 5
    for text, where in [(p.read_bytes().decode(errors="replace"), p) for p in files] + \
                       [(proc.stdout, "stdout"), (proc.stderr, "stderr")]:
        for canary in (KEY, URL_SECRET):
            assert canary not in text, f"{canary} in {where}"
    assert Path(out).is_dir()
