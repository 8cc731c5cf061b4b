"""The error boundary of every entry point: bad input, damaged artifacts and places that cannot be written end in
one ``error:`` line and exit status 2, with no traceback and nothing left behind.

The table at the end runs each numbered script as ``python <script> <args>`` would, but in this process (the
imports are paid once, so the whole table takes seconds): ``sys.argv`` set, the script run as ``__main__``, its
exit status and stderr kept. One row also runs in a real process, to show that the two agree."""

import contextlib
import errno
import http.server
import io
import json
import os
import re
import runpy
import shutil
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError

from helpers import outputs_under, run_script, train_test_run
from rank1 import constants as K
from rank1.activations.config import ExtractConfig, TopKConfig
from rank1.activations.stage import extract, precompute_topk
from rank1.artifacts import atomic_path, make_folder, read_json, remove_new_empty_folders, reuse_finished, write_json
from rank1.config import REPO_ROOT, config_from_profile
from rank1.errors import CannotWrite, CorruptArtifact
from rank1.logs import run_main
from rank1.lora import AdapterCheckError
from rank1.serving import ParityError
from rank1.store import Store

ERROR_LINE = re.compile(r"^(?:[\w.-]+: )?error: ")  # ours, or argparse's "<script>: error: "


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ERROR_LINE.match(line)]


# ---------------------------------------------------------------- the boundary itself


@pytest.mark.parametrize("error", [AdapterCheckError("adapter in /r/a is incomplete: layer 1 gate_proj lora_B is 0"),
                                   ParityError("vllm: first-token log-probs differ from the PEFT model on prompt 0"),
                                   ValueError("--k must be >= 1"), FileNotFoundError("/x/manifest.json"),
                                   CorruptArtifact("/x/features.json is damaged"),
                                   CannotWrite("cannot write /x/a.json: no space left", errno.ENOSPC)])
def test_a_failed_check_ends_in_one_error_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)

    def main(cfg):
        raise error

    with pytest.raises(SystemExit) as exit_:
        run_main(main, None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {error}"]


def test_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("RANK1_DEBUG", "1")

    def main(cfg):
        raise AdapterCheckError("incomplete")

    with pytest.raises(AdapterCheckError, match="incomplete"):
        run_main(main, None)


def test_a_bug_is_not_turned_into_an_error_line(monkeypatch):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)

    def main(cfg):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_main(main, None)


def _boundary(main, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_:
        run_main(main, None)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def test_errors_without_a_file_name_get_one(tmp_path, capsys, monkeypatch):
    """Decoding errors of other libraries name the file being read (found in the failing frame); an OSError of a
    full disk says what to do."""
    monkeypatch.delenv("RANK1_DEBUG", raising=False)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    loose = tmp_path / "records.json"
    loose.write_text('{"a": [1, 2')
    from safetensors.torch import load_file

    code, err = _boundary(lambda cfg: load_file(str(weights)), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {weights} is damaged or cut short"), err
    code, err = _boundary(lambda cfg: json.loads(loose.read_text()), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {loose} is damaged or cut short"), err

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.json"))

    code, err = _boundary(full, capsys)
    assert code == 2 and err == [f"error: cannot write {tmp_path / 'out.json'}: no space left on the device (or over "
                                 f"quota); free space there, or write elsewhere: RANK1_ROOT=DIR moves every output "
                                 f"(--out DIR one stage's)"]


@pytest.fixture
def llm_server():
    """A local server that answers every request with HTTP 200 and a body that is not JSON."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the name http.server calls)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


def test_http_errors_that_escape_the_client_name_the_endpoint_without_its_key(llm_server, capsys, monkeypatch):
    """A server that answers 200 with a body that is not JSON, and one that cannot be reached: the openai client's
    errors (a JSONDecodeError, an APIConnectionError) name the endpoint, never the credentials in its URL."""
    monkeypatch.delenv("RANK1_DEBUG", raising=False)
    import openai

    def ask(url):
        def main(cfg):
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=5)
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        return main

    code, err = _boundary(ask(f"http://user:CANARY@127.0.0.1:{llm_server}/v1"), capsys)
    assert code == 2 and len(err) == 1 and "CANARY" not in err[0], err
    assert err[0].startswith(f"error: the LLM endpoint http://127.0.0.1:{llm_server}/v1/chat/completions failed "
                             f"(JSONDecodeError: "), err
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once it is closed
    code, err = _boundary(ask(f"http://127.0.0.1:{closed}/v1"), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: the LLM endpoint http://127.0.0.1:{closed}/v1/chat/completions failed "
                             f"(APIConnectionError: "), err


def test_writing_onto_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "deeper" / "a.json"
    with pytest.raises(CannotWrite, match=rf"^cannot write {re.escape(str(out))}: no space left") as caught:
        with atomic_path(out) as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deeper", "new"]  # no temporary file
    remove_new_empty_folders()  # what the entry point does when the stage fails
    assert list(tmp_path.iterdir()) == []
    make_folder(tmp_path / "kept")
    (tmp_path / "kept" / "x").write_text("")
    remove_new_empty_folders()
    assert (tmp_path / "kept" / "x").is_file()  # a folder with something in it stays


def test_a_damaged_json_file_names_itself_and_what_rebuilds_it(tmp_path):
    folder = tmp_path / "weight_geometry"
    write_json(folder / "weight_geometry.json", {"a": 1})
    write_json(folder / K.ARGV_JSON, {"argv": ["4_lora_interventions/4.4_weight_geometry.py", "--profile", "test"]})
    (folder / "weight_geometry.json").write_text('{"a": ')
    with pytest.raises(CorruptArtifact, match=r"weight_geometry.json is damaged or cut short \(not valid JSON: "
                                              r"Expecting value, line 1 column 7\); rerun 4_lora_interventions/"
                                              r"4.4_weight_geometry.py with --overwrite"):
        read_json(folder / "weight_geometry.json")
    (tmp_path / K.TOPK_FEATURES).write_bytes(b"\xff\xfe[")
    with pytest.raises(json.JSONDecodeError, match=r"not UTF-8\); rerun the top-k stage that made it \(2.1"):
        read_json(tmp_path / K.TOPK_FEATURES)  # still a JSONDecodeError: readers that recover from one still do
    # the finished work of a stage is never up to date over a damaged file, its own or one beside it
    write_json(tmp_path / "done.json", {"settings": 1})
    with pytest.raises(CorruptArtifact, match=r"features.json is damaged .*; the finished work in .* is not whole: "
                                              r"pass --overwrite to recompute it"):
        reuse_finished(tmp_path / "done.json", {"settings": 1}, overwrite=False)
    (tmp_path / K.TOPK_FEATURES).unlink()
    assert reuse_finished(tmp_path / "done.json", {"settings": 1}, overwrite=False) == {"settings": 1}


# ---------------------------------------------------------------- scripts, run as a user runs them


def run_entry_point(argv: list, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python argv[0] argv[1:]`` (``argv[0]`` a script of the repository, or a module run with ``-m``) in this
    process: (exit status, stderr). An exception that escapes is printed as the interpreter prints it (status 1)."""
    old_argv, old_env = sys.argv, dict(os.environ)
    os.environ.update(env or {})
    sys.argv = [str(a) for a in argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                if sys.argv[0].endswith(".py"):
                    runpy.run_path(str(REPO_ROOT / sys.argv[0]), run_name="__main__")
                else:
                    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 (what the interpreter would print)
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = old_argv
        os.environ.clear()
        os.environ.update(old_env)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 2-step test-profile run ``a`` with its store (2.0) and top-k examples (2.1) under ``root``, and damaged
    or odd inputs under ``bad``, shared by the rows of the table (none of which may change any of them)."""
    base = tmp_path_factory.mktemp("bad_input")
    with outputs_under(base / "root") as root:
        run = train_test_run(n_train=12)
        store = extract(config_from_profile(ExtractConfig, "extract", "test", run="a", max_docs=2), "lora")
        topk = precompute_topk(config_from_profile(TopKConfig, "topk", "test", run="a", k=5), "lora")
    bad = base / "bad"
    adapter = run / K.ADAPTER_DIR / "adapter_model.safetensors"
    for name, damage in (("trunc", lambda p: p.write_bytes(adapter.read_bytes()[:500])),
                         ("rand", lambda p: p.write_bytes(torch.randint(0, 256, (3000,), dtype=torch.uint8,
                                                                        generator=torch.Generator().manual_seed(0))
                                                          .numpy().tobytes())),
                         ("noweights", Path.unlink)):
        shutil.copytree(run, bad / name)
        damage(bad / name / K.ADAPTER_DIR / "adapter_model.safetensors")
    shutil.copytree(run, bad / "rank2")
    config = bad / "rank2" / K.ADAPTER_DIR / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "r": 2}))
    shutil.copytree(run, bad / "cfgtrunc")
    (bad / "cfgtrunc" / K.CONFIG_JSON).write_text((run / K.CONFIG_JSON).read_text()[:20])
    for name, file, text in (("store", K.STORE_MANIFEST, None), ("topk", K.TOPK_FEATURES, None),
                             ("topk_done", K.CONFIG_JSON, None), ("topk_bytes", K.TOPK_FEATURES, b"\xff\xfe[{")):
        src = store if name == "store" else topk
        shutil.copytree(src, bad / name)
        (bad / name / file).write_bytes(text or (src / file).read_bytes()[:100])
    (bad / "file").write_text("a file where a folder is expected\n")
    (base / "read_only").mkdir()
    return SimpleNamespace(base=base, root=root, run=run, store=store, topk=topk, bad=bad, ro=base / "read_only")


def tree(base: Path) -> dict[str, tuple]:
    """Every file and folder under ``base`` with its size and modification time (folders: their name only)."""
    return {str(p.relative_to(base)): () if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(base.rglob("*"))}


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only: its mode, and, for root (whom modes do not stop), this process refusing what the
    kernel would refuse there: making a folder, opening a file to write (EACCES)."""
    folder.chmod(0o555)
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.ExitStack() as restore:
        restore.callback(folder.chmod, 0o755)
        if os.geteuid() == 0:
            _refuse_writes_below(folder, monkeypatch)
        yield folder


def _refuse_writes_below(folder: Path, monkeypatch) -> None:
    """``os.mkdir`` and ``os.open`` for writing (what ``Path.mkdir``, ``tempfile`` and ``open`` end in) fail below
    ``folder`` as the kernel fails them for a user without write permission there."""
    real_mkdir, real_open = os.mkdir, os.open

    def refuse(path):
        if Path(os.fsdecode(path)).absolute().is_relative_to(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def mkdir(path, *args, **kwargs):
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@contextlib.contextmanager
def disk_full():
    """Writing a safetensors file fails as on a full disk: part of it written, then the library's I/O error."""
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr("safetensors.torch.save_file", save_file)
        monkeypatch.setattr("rank1.topk.save_file", save_file, raising=False)
        yield


@contextlib.contextmanager
def no_stage_runs():
    """The main job must stop before its first stage: starting one fails the row."""
    def call(*args, **kwargs):
        raise AssertionError(f"a stage was started: {args[0]}")

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr("subprocess.call", call)
        yield


@dataclass
class Row:
    id: str
    argv: list  # a script of the repository (or the pipeline's module) and its arguments; --profile test is added
    expect: str | tuple  # a fragment of the error line, or several
    env: dict = field(default_factory=dict)  # added to the environment
    conditions: tuple = ()  # world -> a context manager: what the row needs around it
    # in argv, expect and env, "{bad}" and "{ro}" stand for the world's folders of odd inputs and a read-only one


S2 = "2_lora_activation_interp"
S4 = "4_lora_interventions"
TOPK = f"{S2}/2.1_precompute_lora_topk.py"
EXTRACT = f"{S2}/2.0_extract_lora_activations.py"
DASHBOARD = f"{S2}/2.3_lora_activation_dashboard.py"
GEOMETRY = f"{S4}/4.4_weight_geometry.py"
STEERING = f"{S4}/4.0_steering.py"
PROBES = f"{S4}/4.3_correctness_probes.py"
EVAL = "s1_peft/eval_benchmarks.py"
PAGES = "6_report/6.0_feature_pages.py"
UNTERMINATED = "is damaged or cut short (not valid JSON: Unterminated string starting at, line 7 column 5); "

ROWS = [
    # flags and values, refused before anything is read
    Row("unknown-profile", [GEOMETRY, "--profile", "nope"], "unknown profile 'nope'"),
    Row("profile-file-missing", [GEOMETRY, "--profile", "{bad}/mine.toml"], "unknown profile '{bad}/mine.toml'"),
    Row("unknown-flag", [TOPK, "--nope", "4"], "unrecognized arguments: --nope 4"),
    Row("flag-of-wrong-type", [TOPK, "--k", "abc"], "argument --k: invalid int value: 'abc'"),
    Row("negative-k", [TOPK, "--k", "-1", "--out", "{bad}/topk_new"], "k >= 1"),
    Row("zero-problems", [STEERING, "--n_problems", "0"], "--n_problems, --n_layers, --think_tokens, --batch_size and "
                                                         "--n_resamples must be >= 1"),
    Row("bad-dtype", [EXTRACT, "--dtype", "float8"], "--dtype must be one of ['float16', 'bfloat16', 'float32']"),
    Row("problem-source-typo", [STEERING, "--problems", "heldot"], "--problems must be one of"),
    Row("layers-not-numbers", [STEERING, "--layers", "0,x"], "argument --layers: '0,x': 'x' is not an integer"),
    Row("one-sample-per-problem", [f"{S4}/4.2_counterfactual_rollouts.py", "--n_samples", "1"],
        "--n_samples must be >= 2"),
    Row("bad-cs", [PROBES, "--cs", "-1"], "--cs must be positive numbers (at least one), got [-1.0]"),
    Row("attribution-target-typo", [f"{S4}/4.1_attribution.py", "--target", "logits"], "--target must be one of"),
    Row("benchmark-name-typo", [EVAL, "--benchmarks", "math50"], "unknown benchmark 'math50'"),
    Row("gpqa-without-path", [EVAL, "--benchmarks", "gpqa"], "no --gpqa_path was given"),
    Row("llm-without-endpoint", [f"{S2}/2.2_run_lora_autointerp.py", "--explainer", "llm", "--llm_base_url", "",
                                 "--llm_model", "", "--out", "{bad}/autointerp_new"], "needs a base URL and a model",
        env={"OPENAI_BASE_URL": "", "RANK1_LLM_MODEL": ""}),
    # inputs that are missing or do not fit
    Row("missing-run", [GEOMETRY, "--run", "nope"], "run 'nope' not found"),
    Row("missing-run-eval", [EVAL, "--run", "nope"], "run 'nope' not found"),
    Row("adapter-without-weights", [GEOMETRY, "--adapter", "{bad}/noweights/adapter"],
        "adapter_model.safetensors is missing"),
    Row("adapter-of-rank-2", [EXTRACT, "--run", "{bad}/rank2"], "the adapter has rank 2, this stage needs rank 1"),
    Row("missing-corpus", [EXTRACT, "--corpus", "{bad}/none.jsonl", "--out", "{bad}/store_new"],
        "{bad}/none.jsonl does not exist"),
    Row("missing-store", [TOPK, "--store", "{bad}/none", "--out", "{bad}/topk_new"],
        "{bad}/none holds no activation store"),
    Row("probes-before-rollouts", [PROBES], "holds no finished rollouts"),
    Row("compare-before-autointerp", [f"{S2}/2.8_compare_lora_mlp.py", "--lora", "{bad}/none", "--mlp", "{bad}/none"],
        "holds no finished autointerp results"),
    Row("training-layer-out-of-range", ["s1_peft/train.py", "--layer_start", "5"],
        "--layer_start 5 out of range: the model has layers 0..1"),
    Row("steering-layer-out-of-range", [STEERING, "--layers", "3"],
        "--layers 3: layer 3 is out of range (the model has 2 layers: 0..1)"),
    Row("sae-lora-layer-out-of-range", ["5_sae_latent_lora/5.1_train_residual_sae.py", "--layer", "7"],
        "--layer 7 is out of range"),
    Row("ablation-sample-too-large", ["1_lora_adapter_ablations/1.0_generate_ablation_data.py", "--n_samples", "99"],
        "a sample of 99 sequences is larger than the data"),
    Row("finished-with-other-settings", [TOPK, "--k", "3"], "was made with other settings or inputs"),
    # damaged artifacts
    Row("truncated-adapter", [GEOMETRY, "--run", "{bad}/trunc"], "{bad}/trunc/adapter/adapter_model.safetensors"),
    Row("random-bytes-adapter", [GEOMETRY, "--run", "{bad}/rand"], "{bad}/rand/adapter/adapter_model.safetensors"),
    Row("truncated-run-config", [GEOMETRY, "--run", "{bad}/cfgtrunc"], "{bad}/cfgtrunc/config.json is damaged"),
    Row("truncated-manifest", [TOPK, "--store", "{bad}/store", "--out", "{bad}/topk_new"],
        ("{bad}/store/manifest.json is damaged or cut short (not valid JSON: Unterminated string",
         "; rerun the extraction that made the store: 2.0 (adapters) or 2.4 (MLP neurons) keep its finished shards")),
    Row("truncated-features-its-stage", [TOPK, "--out", "{bad}/topk"], "{bad}/topk/features.json " + UNTERMINATED +
        "the finished work in {bad}/topk is not whole: pass --overwrite to recompute it"),
    Row("truncated-features-reader", [DASHBOARD, "--topk", "{bad}/topk", "--out", "{bad}/dashboard_new"],
        "{bad}/topk/features.json " + UNTERMINATED + "rerun the top-k stage that made it (2.1"),
    Row("features-not-text", [DASHBOARD, "--topk", "{bad}/topk_bytes", "--out", "{bad}/dashboard_new"],
        "features.json is damaged or cut short (not valid JSON: not UTF-8)"),
    Row("truncated-finished-file", [TOPK, "--out", "{bad}/topk_done"], "{bad}/topk_done/config.json is damaged"),
    # places that cannot be written
    Row("out-below-a-file", [EXTRACT, "--out", "{bad}/file/x"], "output folder {bad}/file is not writable"),
    Row("read-only-out", [GEOMETRY, "--out", "{ro}/x"], "output folder {ro}/x is not writable",
        conditions=(lambda w: read_only(w.ro),)),
    Row("disk-full-during-2.1", [TOPK, "--out", "{bad}/topk_new"],
        "cannot write {bad}/topk_new/topk.safetensors: no space left on the device",
        conditions=(lambda w: disk_full(),)),
    Row("read-only-root-for-run_all.sh", ["rank1.pipeline"], "{ro}/logs: permission denied", env={"RANK1_ROOT": "{ro}"},
        conditions=(lambda w: read_only(w.ro), lambda w: no_stage_runs())),
    Row("negative-read-batch", [f"{S4}/4.2_counterfactual_rollouts.py", "--read_batch", "-1"],
        "--read_batch must be >= 0 (0: --batch_size), got -1"),
    Row("neuronpedia-model-id", [PAGES, "--neuronpedia_model", "Qwen/Qwen2.5"],
        "--neuronpedia_model 'Qwen/Qwen2.5' is invalid: use only lowercase letters, digits, '-', '.' and '_'"),
    Row("pages-zero-examples", [PAGES, "--n_examples", "0"], "--n_examples must be >= 1, got 0"),
    Row("failed-share-out-of-range", [f"{S2}/2.2_run_lora_autointerp.py", "--max_failed_share", "1.5", "--out",
                                      "{bad}/autointerp_new"], "max_failed_share must be a share between 0 and 1"),
]


def command(row: Row, world) -> tuple[list[str], dict[str, str]]:
    """The row's command line (with ``--profile test`` unless it names one) and environment, filled in."""
    fill = {"bad": world.bad, "ro": world.ro}
    argv = [str(a).format(**fill) for a in row.argv]
    if "--profile" not in argv:
        argv[1:1] = ["--profile", "test"]
    return argv, {"RANK1_ROOT": str(world.root), **{k: v.format(**fill) for k, v in row.env.items()}}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_error_line_and_leaves_nothing(row, world, monkeypatch):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)
    argv, env = command(row, world)
    before = tree(world.base)
    with contextlib.ExitStack() as stack:
        for condition in row.conditions:
            stack.enter_context(condition(world))
        code, err = run_entry_point(argv, env)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, f"exit {code}:\n{err[-3000:]}"
    for fragment in row.expect if isinstance(row.expect, tuple) else (row.expect,):
        assert fragment.format(bad=world.bad, ro=world.ro) in lines[0]
    after = tree(world.base)
    assert after == before, f"left behind: {sorted(set(after) - set(before))}, changed: " \
                            f"{sorted(k for k in before if after.get(k) != before[k])}"


def test_the_table_covers_what_it_promises():
    assert len(ROWS) >= 30 and len({r.id for r in ROWS}) == len(ROWS)


def test_a_row_in_a_real_process_ends_the_same(world):
    """The in-process runner of the table agrees with ``python <script>``: exit status and error line."""
    argv, env = command(next(r for r in ROWS if r.id == "random-bytes-adapter"), world)
    code, err = run_entry_point(argv, env)
    proc = run_script(argv, env=env, check=False)
    assert proc.returncode == code == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == error_lines(err) and len(error_lines(err)) == 1


def test_damaged_artifacts_are_rebuilt_by_their_stage(world, tmp_path):
    """2.0 rebuilds a store whose manifest is damaged from its shards, keeping them; 2.1 --overwrite rebuilds top-k
    examples whose features.json is damaged."""
    store = tmp_path / "store"
    shutil.copytree(world.store, store)
    shard = store / K.STORE_SHARDS_DIR / "shard_00000.safetensors"
    stamp = shard.stat().st_mtime_ns
    good = read_json(store / K.STORE_MANIFEST)
    (store / K.STORE_MANIFEST).write_text((world.store / K.STORE_MANIFEST).read_text()[:100])
    env = {"RANK1_ROOT": str(world.root)}
    code, err = run_entry_point([EXTRACT, "--profile", "test", "--max_docs", "2", "--out", store], env)
    assert code == 0, err
    rebuilt = Store.open(store).manifest
    assert [rebuilt[k] for k in ("store_key", "shards", "n_tokens")] == [good[k] for k in ("store_key", "shards",
                                                                                           "n_tokens")]
    assert shard.stat().st_mtime_ns == stamp  # kept, not computed again
    topk = tmp_path / "topk"
    shutil.copytree(world.bad / "topk", topk)
    code, err = run_entry_point([TOPK, "--profile", "test", "--out", topk, "--overwrite"], env)
    assert code == 0, err
    assert read_json(topk / K.TOPK_FEATURES) == read_json(world.topk / K.TOPK_FEATURES)
