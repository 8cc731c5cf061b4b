"""The main job's stage list: the dry-run plan, disk estimates, profile checks, and the runner's failure message."""

import sys

import pytest

from rank1 import pipeline
from rank1.config import load_profile
from rank1.pipeline import Stage, check_profile, command, main, planned_tokens, stages, store_bytes


def profile_file(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_profile(str(path))


def test_dry_run_prints_every_stage_and_runs_nothing(isolated_root, capsys):
    assert main(["--profile", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for i, st in enumerate(stages(), 1):
        assert f"{i:2d}. {st.name}\n" in out
    assert out.count("    command: ") == out.count("    devices: ") == len(stages())
    assert "6_report/6.0_write_report.py --profile tiny" in out and "every required id and path is set" in out
    assert not (isolated_root / "logs").exists() and not (isolated_root / "results").exists()
    assert stages()[-1].name == "6.0_write_report" and len({s.name for s in stages()}) == len(stages())


def test_store_estimate_is_tokens_times_sites_times_bytes(tmp_path):
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[plan]\nlayers = 3\n'
                                  '[extract]\nmax_tokens = 1000\ndtype = "float32"\n')
    [(what, size)] = pipeline._store_estimate(prof, mlp=False)
    assert size == 1000 * (3 * 7) * 4 == store_bytes(1000, 21, "float32")
    assert "1000 tokens x 3 layers x 7 sites x 4 B float32" in what
    prof = profile_file(tmp_path, 'model = "random-qwen2"\ndataset = "synthetic"\n[plan]\nlayers = 2\n'
                                  'corpus_tokens = 10000\n[extract]\nmax_docs = 10\nblock_size = 50\n'
                                  'neurons_per_layer = 5\ndtype = "bfloat16"\n', "b.toml")
    assert pipeline._store_estimate(prof, mlp=True)[0][1] == (10 * 50) * (2 * 5) * 2
    assert planned_tokens({"max_tokens": 0, "max_docs": 0}, {"corpus_tokens": 77}) == 77
    assert planned_tokens({}, {}) is None


def test_paper_profile_sizes():
    paper = load_profile("paper")
    [(_, size)] = pipeline._store_estimate(paper, mlp=False)
    assert size == 10_000_000 * 448 * 2  # s1K-1.1's 10M tokens x 64 layers x 7 sites x bf16
    assert pipeline._sae_estimate(paper)[0][0].startswith("SAE weights (448 -> 3584 latents")
    assert 32.0e9 < pipeline.model_params(pipeline.plan_values(paper)) < 33.5e9  # Qwen2.5-32B


def test_unset_ids_are_named_and_fail_the_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GPQA_PATH", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "cluster.toml"
    path.write_text('model = ""\ndataset = "/nowhere/s1K-1.1.parquet"\n[eval]\nbenchmarks = "aime24,gpqa"\n'
                    '[autointerp]\nexplainer = "llm"\nllm_model = "m"\n[plan]\nlayers = 4\n')
    problems, _ = check_profile(load_profile(str(path)))
    assert any(p.startswith("model is unset") for p in problems)
    assert any("'/nowhere/s1K-1.1.parquet': no such file" in p for p in problems)
    assert any("GPQA_PATH is unset" in p for p in problems)
    assert any("llm_base_url is unset" in p for p in problems)
    assert main(["--profile", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "problem(s) with profile cluster" in err and "model is unset" in err
    monkeypatch.setenv("GPQA_PATH", str(path))  # any existing file will do for the check
    assert not any("GPQA" in p for p in check_profile(load_profile(str(path)))[0])


def test_paper_profile_needs_only_gpqa_here(monkeypatch):
    monkeypatch.delenv("GPQA_PATH", raising=False)
    problems, notes = check_profile(load_profile("paper"))
    assert len(problems) == 1 and "GPQA_PATH" in problems[0]
    assert any("hub id" in n for n in notes)


def test_gpqa_path_reaches_the_evaluation():
    ev = next(s for s in stages() if s.name == "eval_benchmarks")
    assert command(ev, "paper", "py", env={})[-2:] == ["--profile", "paper"]
    assert command(ev, "paper", "py", env={"GPQA_PATH": "/g.csv"})[-2:] == ["--gpqa_path", "/g.csv"]


def test_a_failing_stage_names_itself_and_its_rerun_command(isolated_root, capsys):
    stage_list = [Stage("ok", ("{py}", "-c", "pass"), "CPU"),
              Stage("broken", ("{py}", "-c", "import sys; sys.exit(3)", "--profile", "{profile}"), "CPU"),
              Stage("never", ("{py}", "-c", "raise SystemExit(9)"), "CPU")]
    assert pipeline.run_stages("test", sys.executable, stage_list=stage_list) == 1
    err = capsys.readouterr().err
    assert "error: stage 'broken' failed (exit 3); rerun it with: " in err and "--profile test" in err
    lines = (isolated_root / "logs" / "run_all-test-times.tsv").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[1:] == ["ok", lines[0].split("\t")[2]]


@pytest.mark.parametrize("name", ["tiny", "test", "paper"])
def test_every_profile_has_a_plan(name):
    assert pipeline.plan_values(load_profile(name))["layers"] > 0


def test_the_stage_table_of_run_all_sh_is_the_stage_list(tmp_path):
    from rank1.config import REPO_ROOT

    text = (REPO_ROOT / "run_all.sh").read_text()
    assert all(f"\n{st.name} " in text for st in stages())
    table = tmp_path / "run_all.sh"
    table.write_text(": <<'STAGES'\n# comment\nfirst | py | model | store | a/b.py --kind mlp\n"
                     "second | bash | artifacts | - | c.sh\nSTAGES\n")
    first, second = pipeline.read_stage_table(table)
    assert first.argv == ("{py}", "{repo}/a/b.py", "--profile", "{profile}", "--kind", "mlp")
    assert first.devices == pipeline.MODEL and first.disk is not None
    assert second.argv[:2] == ("bash", "{repo}/c.sh") and second.devices == pipeline.ARTIFACTS and second.disk is None
    table.write_text(": <<'STAGES'\nfirst | python | model | - | a.py\nSTAGES\n")
    with pytest.raises(ValueError, match=r"run_all.sh:2: expected 'name \| py\|bash \| devices \| disk \| script"):
        pipeline.read_stage_table(table)
    table.write_text(": <<'STAGES'\nfirst | py | gpu | - | a.py\nSTAGES\n")
    with pytest.raises(ValueError, match=r"run_all.sh:2: unknown devices 'gpu' for stage 'first'; known: "):
        pipeline.read_stage_table(table)


def test_reading_the_pipeline_module_reads_no_stage_table():
    import subprocess

    code = ("import pathlib; real = pathlib.Path.read_text\n"
            "def spy(self, *a, **k):\n"
            "    assert self.name != 'run_all.sh', 'read at import'\n"
            "    return real(self, *a, **k)\n"
            "pathlib.Path.read_text = spy\nimport rank1.pipeline, rank1.report\n")
    subprocess.run([sys.executable, "-c", code], check=True)
