import ast
import contextlib
import copy
import dataclasses
import importlib
import json
import pickle
import shutil
import subprocess
from typing import Literal

import pytest

from helpers import run_script
from rank1.ablation.config import AblationConfig
from rank1.activations.config import TopKConfig
from rank1.artifacts import write_run_metadata
from rank1.config import (
    KNOWN_TABLES,
    REPO_ROOT,
    ProfileName,
    available_profiles,
    config_from_profile,
    field_default,
    load_profile,
    option,
    parse_config,
    profile_defaults,
    project_root,
    saved_as_today,
)
from rank1.interventions.config import ProbeConfig, SteeringConfig
from rank1.sae_lora.config import SaeLoraConfig
from rank1.training.config import EvalConfig, TrainConfig


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'nope'.*'paper'.*'test'.*'tiny'"):
        load_profile("nope")


def test_precedence_dataclass_profile_cli():
    cfg = parse_config(TrainConfig, "train", "", ["--profile", "paper"])
    assert (cfg.lr, cfg.block_size, cfg.model_id) == (1e-3, 20000, "Qwen/Qwen2.5-32B-Instruct")
    cfg = parse_config(TrainConfig, "train", "", ["--profile", "paper", "--lr", "3e-4", "--model_size", "7B"])
    assert (cfg.lr, cfg.model_id, cfg.gradient_checkpointing) == (3e-4, "Qwen/Qwen2.5-7B-Instruct", True)
    assert parse_config(TrainConfig, "train", "", ["--profile", "test", "--full"]).full


def test_profile_from_env_and_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK1_PROFILE", "test")
    assert parse_config(TrainConfig, "train", "", []).model == "random-qwen2"
    monkeypatch.setenv("RANK1_ROOT", str(tmp_path / "elsewhere"))
    assert project_root() == (tmp_path / "elsewhere").resolve()


def test_profile_with_unknown_key_fails(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('model = "random-qwen2"\n[train]\nlrr = 1\n')
    with pytest.raises(ValueError) as error:
        config_from_profile(TrainConfig, "train", str(path))
    assert str(error.value) == f"profile {path}: [train] has unknown key 'lrr' (did you mean 'lr'?)"
    path.write_text('model = "random-qwen2"\n[train]\nzzzz = 1\n')
    with pytest.raises(ValueError, match=r"unknown key 'zzzz' \(valid keys: .*\blr, "):
        config_from_profile(TrainConfig, "train", str(path))


def test_invalid_values_fail_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "test", "--rank", "0"])
    assert "--rank must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "tiny", "--model_size", "7B"])
    assert "no {size} placeholder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, "train", "", ["--profile", "nope"])


@pytest.mark.parametrize("script", ["s1_peft/train.py", "s1_peft/prepare_data.py", "s1_peft/eval_benchmarks.py"])
def test_help(script):
    out = run_script([script, "--help"]).stdout
    assert "usage:" in out and "--profile" in out


def test_launcher_help():
    out = subprocess.run(["bash", "0_train_lora.sh", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and "--layer_stride" in out.stdout


def test_profile_file_of_your_own(tmp_path):
    path = tmp_path / "my_cluster.toml"
    path.write_text('model = "random-qwen2"\n[train]\nlr = 0.5\n')
    cfg = parse_config(TrainConfig, "train", "", ["--profile", str(path)])
    assert (cfg.profile, cfg.lr, cfg.model, cfg.rank) == ("my_cluster", 0.5, "random-qwen2", 1)


def test_results_dir_follows_root(isolated_root):
    from rank1.config import results_dir
    assert results_dir("tiny", "eval") == isolated_root / "results" / "tiny" / "eval"
    assert results_dir("tiny", "ablations", "tiny-r1-all") == isolated_root / "results/tiny/ablations/tiny-r1-all"


# ---------------------------------------------------------------- profile validation


def test_unknown_table_names_the_file_and_the_nearest_table(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('model = "random-qwen2"\n[topkk]\nk = 5\n')
    with pytest.raises(ValueError) as error:
        load_profile(str(path))
    assert str(error.value) == f"profile {path}: unknown table [topkk] (did you mean 'topk'?)"
    path.write_text("[qqqqqq]\nk = 5\n")
    with pytest.raises(ValueError, match=r"unknown table \[qqqqqq\] \(valid tables: ablation, .*, weight_geometry\)"):
        load_profile(str(path))
    path.write_text('modle = "x"\n')
    with pytest.raises(ValueError, match=r"unknown top-level keys \['modle'\] \(did you mean 'model'\?\)"):
        load_profile(str(path))


def test_an_error_names_the_file_of_the_extends_chain_that_has_it(tmp_path):
    parent, child = tmp_path / "parent.toml", tmp_path / "child.toml"
    parent.write_text('extends = "test"\n[train]\nrnak = 2\n[topk]\nk = "five"\n')
    child.write_text('extends = "parent.toml"\n[train]\nlr = 0.5\n')
    with pytest.raises(ValueError) as error:
        config_from_profile(TrainConfig, "train", str(child))
    assert str(error.value) == f"profile {parent}: [train] has unknown key 'rnak' (did you mean 'rank'?)"
    with pytest.raises(ValueError) as error:
        config_from_profile(TopKConfig, "topk", str(child))
    assert str(error.value) == f"profile {parent}: [topk] k = 'five' must be an integer, got a string"
    (tmp_path / "grand.toml").write_text('extends = "child.toml"\n[topkk]\nk = 5\n')
    with pytest.raises(ValueError, match=r"grand.toml: unknown table \[topkk\]"):
        load_profile(str(tmp_path / "grand.toml"))


@pytest.mark.parametrize("line, message", [
    ('rank = "1"', "[train] rank = '1' must be an integer, got a string"),
    ("lr = true", "[train] lr = True must be a number, got a boolean"),
    ("full = 1", "[train] full = 1 must be true or false, got an integer"),
    ("run_name = 3", "[train] run_name = 3 must be a string, got an integer"),
    ("rank = [1]", "[train] rank = [1] must be an integer, got an array"),
])
def test_a_value_of_the_wrong_type_says_it_came_from_the_profile(tmp_path, capsys, monkeypatch, line, message):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)
    path = tmp_path / "mine.toml"
    path.write_text(f'model = "random-qwen2"\n[train]\n{line}\n')
    with pytest.raises(SystemExit) as exit_:
        parse_config(TrainConfig, "train", "", ["--profile", str(path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: profile {path}: {message}"]


def test_an_integer_is_a_float_and_a_string_model_is_checked(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('model = "random-qwen2"\n[train]\nlr = 1\n')
    assert config_from_profile(TrainConfig, "train", str(path)).lr == 1
    path.write_text("model = 7\n")
    with pytest.raises(ValueError) as error:
        config_from_profile(TrainConfig, "train", str(path))
    assert str(error.value) == f"profile {path}: model = 7 must be a string, got an integer"


def test_a_bad_profile_ends_a_script_in_one_error_line_and_exit_2():
    proc = run_script(["6_report/6.1_write_report.py", "--profile", "nope"], check=False,
                      env={"RANK1_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: unknown profile 'nope': no file {REPO_ROOT / 'configs/profiles/nope.toml'}. Use one of "
        f"{available_profiles()} or pass a path to a profile .toml file."]


STAGE_SCRIPTS = [*REPO_ROOT.glob("[0-6]_*/**/*.py"), *REPO_ROOT.glob("s1_peft/*.py")]


def _section_arguments() -> dict[str, set[str]]:
    """The profile tables the code reads, from its source: the section argument of every call of parse_config,
    config_from_profile, profile_defaults, stage_values and Profile.section, and every ``X.values.get(TABLE)``
    (a string, a tuple of strings, or a module-level constant holding one) -> where it is read."""
    arg = {"parse_config": 1, "config_from_profile": 1, "profile_defaults": 2, "stage_values": 2, "section": 0}
    files = [*STAGE_SCRIPTS, *REPO_ROOT.glob("rank1/**/*.py"), *REPO_ROOT.glob("bench/*.py")]
    trees = {p: ast.parse(p.read_text()) for p in files}
    constants: dict[str, object] = {}
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                with contextlib.suppress(ValueError, SyntaxError):
                    constants[node.targets[0].id] = ast.literal_eval(node.value)
    found: dict[str, set[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == "get" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) \
                    and func.value.attr == "values":
                index = 0
            elif name in arg and len(node.args) > arg[name]:
                index = arg[name]
            else:
                continue
            value = node.args[index]
            if isinstance(value, ast.Name):  # a parameter passed on is checked where its value is given
                value = constants.get(value.id)
            else:
                with contextlib.suppress(ValueError):
                    value = ast.literal_eval(value)
            for table in (value,) if isinstance(value, str) else value if isinstance(value, tuple) else ():
                found.setdefault(table, set()).add(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_known_tables_are_the_tables_the_code_reads():
    found = _section_arguments()
    assert {"train", "data", "autointerp", "sae_autointerp", "plan", "rehearsal", "topk"} <= set(found)
    assert set(KNOWN_TABLES) == set(found), {t: sorted(found.get(t, ())) for t in set(KNOWN_TABLES) ^ set(found)}
    assert len(KNOWN_TABLES) == len(set(KNOWN_TABLES))


def _stage_configs() -> set[tuple[type, object]]:
    """(config class, section) of every stage script's parse_config call, imported as the script imports them."""
    pairs = set()
    for path in STAGE_SCRIPTS:
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name: n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    for a in n.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config":
                cls, section = node.args[:2]
                cls = getattr(importlib.import_module(imported[cls.id]), cls.id)
                section = (getattr(importlib.import_module(imported[section.id]), section.id)
                           if isinstance(section, ast.Name) else ast.literal_eval(section))
                pairs.add((cls, section))
    return pairs


def test_every_shipped_profile_fits_every_stage_config():
    pairs = _stage_configs()
    assert len(pairs) >= 20
    for name in available_profiles():
        profile = load_profile(name)
        for cls, section in pairs:
            profile_defaults(cls, profile, section)  # raises on an unknown key or a wrong type


# ---------------------------------------------------------------- a profile given by path


@pytest.fixture
def my_profile(tmp_path, monkeypatch):
    """A copy of the test profile as tmp_path/my.toml, the working directory elsewhere."""
    path = tmp_path / "my.toml"
    shutil.copy(REPO_ROOT / "configs" / "profiles" / "test.toml", path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return path


def test_a_config_remembers_the_file_of_its_profile(my_profile, monkeypatch):
    monkeypatch.chdir(my_profile.parent)
    cfg = parse_config(TrainConfig, "train", "", ["--profile", "my.toml"])  # relative to the working directory
    monkeypatch.chdir(my_profile.parent / "elsewhere")
    assert cfg.profile == "my" and isinstance(cfg.profile, ProfileName) and cfg.profile.path == my_profile
    assert json.loads(json.dumps(dataclasses.asdict(cfg)))["profile"] == "my"
    for copy_ in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg)), dataclasses.replace(cfg, lr=0.5)):
        assert copy_.profile.path == my_profile
    with pytest.raises(ValueError, match="unknown profile 'my'"):
        load_profile("my")  # by its name it is not found: every reader goes through the remembered file
    assert load_profile(cfg.profile).path == my_profile
    again = config_from_profile(TrainConfig, "train", cfg.profile)
    assert (again.profile, again.profile.path, again.model) == ("my", my_profile, "random-qwen2")


def test_run_options_find_the_model_of_a_path_profile(my_profile, isolated_root):
    from helpers import make_run
    from rank1.runs import RunOptions

    folder = make_run()
    opts = RunOptions(profile=config_from_profile(TrainConfig, "train", str(my_profile)).profile,
                      adapter=str(folder / "adapter"))
    assert opts.resolve_run().model_id == "random-qwen2"


def test_a_path_profile_reaches_the_configs_a_stage_builds(tmp_path, monkeypatch):
    """Stage 5's config reads [train] model_size and builds a TrainConfig from its own profile, by path."""
    from rank1.sae_lora.config import SaeLoraConfig

    (tmp_path / "cluster.toml").write_text('extends = "paper"\n[train]\nmodel_size = "7B"\n')
    monkeypatch.chdir(tmp_path)
    cfg = config_from_profile(SaeLoraConfig, "sae_lora", "cluster.toml")
    monkeypatch.chdir(REPO_ROOT)
    assert (cfg.profile, cfg.model_size) == ("cluster", "7B")
    train = config_from_profile(TrainConfig, "train", cfg.profile)
    assert (train.profile, train.model_id) == ("cluster", "Qwen/Qwen2.5-7B-Instruct")


# ---------------------------------------------------------------- list fields


@dataclasses.dataclass
class Lists:
    """A config with every kind of list field and a Literal scalar (read from a table no profile has)."""

    profile: str = option("profile", "test")
    ints: list[int] = option("integers", [1, 2])
    floats: list[float] = option("numbers", [0.5])
    names: list[str] = option("strings", [])
    picks: list[Literal["a", "b"]] = option("values of a literal", ["a"])
    maybe: list[int] | None = option("integers or not given")
    mode: Literal["x", "y"] = option("one value of a literal", "x")


def lists(*argv: str) -> Lists:
    return parse_config(Lists, "lists", "", ["--profile", "test", *argv])


def test_a_list_flag_is_one_comma_separated_word_parsed_once():
    cfg = lists("--ints", "0, 3,5", "--floats", "1,2.5e-3", "--names", "a b,c", "--picks", "b,a", "--maybe", "7")
    assert (cfg.ints, cfg.floats, cfg.names, cfg.picks, cfg.maybe) == ([0, 3, 5], [1.0, 0.0025], ["a b", "c"],
                                                                       ["b", "a"], [7])
    assert all(type(x) is float for x in cfg.floats)
    empty = lists("--ints", "", "--picks", "")
    assert (empty.ints, empty.picks, empty.maybe) == ([], [], None)
    assert (lists().ints, lists("--mode", "y").mode) == ([1, 2], "y")


def test_list_defaults_are_fresh_lists():
    a, b = Lists(), Lists()
    a.ints.append(3)
    assert (a.ints, b.ints, Lists().ints) == ([1, 2, 3], [1, 2], [1, 2])
    assert field_default(next(f for f in dataclasses.fields(Lists) if f.name == "floats")) == [0.5]


@pytest.mark.parametrize("argv, message", [
    (["--ints", "0,x"], "argument --ints: '0,x': 'x' is not an integer; give a comma-separated list of integers "
                        "('' for none)"),
    (["--ints", "1.5"], "argument --ints: '1.5': '1.5' is not an integer"),
    (["--ints", "0,,3"], "argument --ints: '0,,3': '0,,3' has an empty element"),
    (["--floats", "1,one"], "argument --floats: '1,one': 'one' is not a number"),
    (["--picks", "a,c"], "argument --picks: 'a,c': 'c' is not one of a, b; give a comma-separated list of them"),
    (["--mode", "z"], "argument --mode: 'z': 'z' is not one of x, y"),
])
def test_a_bad_element_on_the_command_line_names_the_flag_and_what_is_allowed(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        lists(*argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_help_shows_a_list_default_as_a_comma_list(capsys):
    with pytest.raises(SystemExit):
        parse_config(ProbeConfig, "probes", "", ["--profile", "test", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--cs FLOAT,... inverse L2 strengths C the inner folds choose from (default: 0.01,0.1,1.0,10.0)" in out


def profile_with(tmp_path, table: str, body: str):
    path = tmp_path / "mine.toml"
    path.write_text(f'extends = "test"\n[{table}]\n{body}\n')
    return str(path)


def test_a_profile_gives_a_list_as_an_array_or_as_a_comma_string(tmp_path):
    path = profile_with(tmp_path, "steering", 'layers = [1, 0]\nscalar_magnitudes = [1, 2.5]\n'
                                              'vector_magnitudes = "0.5, 2"\nvector_projections = []')
    cfg = config_from_profile(SteeringConfig, "steering", path)
    assert (cfg.layers, cfg.scalar_magnitudes, cfg.vector_magnitudes, cfg.vector_projections) == (
        [1, 0], [1.0, 2.5], [0.5, 2.0], [])
    assert parse_config(SteeringConfig, "steering", "", ["--profile", path, "--layers", "2"]).layers == [2]


@pytest.mark.parametrize("table, line, message", [
    ("steering", 'layers = [0, "x"]',
     "[steering] layers = [0, 'x']: 'x' is not an integer; give an array of integers (or one comma-separated string)"),
    ("steering", "layers = [0.5]", "[steering] layers = [0.5]: 0.5 is not an integer"),
    ("steering", "layers = 3", "[steering] layers = 3: must be an array, got an integer"),
    ("steering", 'scalar_magnitudes = "1,x"', "[steering] scalar_magnitudes = '1,x': 'x' is not a number"),
    ("ablation", 'families = ["layer", "types"]',
     "[ablation] families = ['layer', 'types']: 'types' is not one of layer, adapter, type; give an array of them"),
])
def test_a_bad_element_in_a_profile_names_the_file_the_key_and_the_element(tmp_path, capsys, monkeypatch, table,
                                                                           line, message):
    monkeypatch.delenv("RANK1_DEBUG", raising=False)
    path = profile_with(tmp_path, table, line)
    cls = {"steering": SteeringConfig, "ablation": AblationConfig}[table]
    with pytest.raises(SystemExit) as exit_:
        parse_config(cls, table, "", ["--profile", path])
    assert exit_.value.code == 2
    (err,) = capsys.readouterr().err.splitlines()
    assert err.startswith(f"error: profile {path}: {message}")


def test_a_list_round_trips_through_config_json(tmp_path):
    cfg = parse_config(SteeringConfig, "steering", "", ["--profile", "test", "--layers", "1,0",
                                                        "--scalar_magnitudes=-3,0.5", "--scalar_projections", "mlp"])
    write_run_metadata(tmp_path, cfg)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["layers"], saved["scalar_magnitudes"], saved["scalar_projections"]) == (
        [1, 0], [-3.0, 0.5], ["gate_proj", "up_proj", "down_proj"])
    keys = ("layers", "scalar_magnitudes", "scalar_projections", "vector_projections", "vector_magnitudes")
    again = config_from_profile(SteeringConfig, "steering", "test", **{k: saved[k] for k in keys})
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    argv = [f"--{k}={','.join(map(str, saved[k]))}" for k in keys]  # "=": a word may start with a minus sign
    assert dataclasses.asdict(parse_config(SteeringConfig, "steering", "", ["--profile", "test", *argv])) == \
        dataclasses.asdict(cfg)


def test_an_override_of_a_list_field_is_checked():
    with pytest.raises(ValueError, match=r"^layers='0,x': 'x' is not an integer"):
        config_from_profile(SteeringConfig, "steering", "test", layers="0,x")
    assert config_from_profile(SteeringConfig, "steering", "test", layers="2, 1").layers == [2, 1]


def test_special_lists_are_saved_normalised_and_keep_their_run_names():
    train = parse_config(TrainConfig, "train", "", ["--profile", "test", "--projections", "mlp"])
    assert train.projections == ["gate_proj", "up_proj", "down_proj"] and train.default_run_name(2) == "test-r1-all-mlp"
    assert parse_config(TrainConfig, "train", "", ["--profile", "test"]).default_run_name(2) == "test-r1-all"
    picked = parse_config(TrainConfig, "train", "", ["--profile", "test", "--layer_indices", "1",
                                                     "--projections", "v,q"])
    assert (picked.projections, picked.default_run_name(4)) == (["q_proj", "v_proj"], "test-r1-L1-qv")
    assert parse_config(TrainConfig, "train", "", ["--profile", "test", "--layer_indices", ""]).layer_indices is None
    ev = parse_config(EvalConfig, "eval", "", ["--profile", "test", "--benchmarks", "math500:030,heldout"])
    assert ev.benchmarks == ["math500:30", "heldout"]
    assert [(s.name, s.limit) for s in ev.benchmark_specs] == [("math500", 30), ("heldout", 0)]
    sweep = parse_config(SaeLoraConfig, "sae_lora", "", ["--profile", "test", "--sweep_l1", "0.01,0,0.01"])
    assert sweep.sweep_l1 == [0.0, 0.01] and sweep.runs() == [("raw", 0.0), ("raw", 0.01), ("normalized", 0.01)]


def test_a_config_saved_with_comma_strings_reads_as_todays_lists():
    cfg = config_from_profile(TrainConfig, "train", "test", projections=["mlp"], layer_indices=[1, 0])
    saved = {**json.loads(json.dumps(dataclasses.asdict(cfg))), "projections": "mlp", "layer_indices": "1,0"}
    assert saved_as_today(cfg, saved) == dataclasses.asdict(cfg)
    del saved["seed"]  # a field newer than the run: its default
    assert saved_as_today(cfg, saved)["seed"] == TrainConfig.seed
    assert saved_as_today(cfg, {**saved, "projections": "attn"})["projections"] == ["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj"]
