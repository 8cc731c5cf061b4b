"""The library's layout rules, checked over the import graph (every import in a file, function bodies too):
one package per stage, a stage reads another stage only through the names that stage exports in ``__all__``,
core never imports a stage (the pipeline may read stage configs), nothing imports in a circle, scripts define
no classes."""

import ast
from pathlib import Path

import pytest

from rank1.config import REPO_ROOT

LIB = REPO_ROOT / "rank1"
STAGES = ("training", "ablation", "activations", "sae", "interventions", "sae_lora", "report")
SCRIPT_DIRS = ("s1_peft", "1_lora_adapter_ablations", "2_lora_activation_interp", "3_lora_sae",
               "4_lora_interventions", "5_sae_latent_lora", "6_report")
MAX_TOP_LEVEL_MODULES = 25
# Imported inside a function where only some stages or profiles need them (slow to import, or absent on a
# machine that never runs that path); everything else is imported at the top of the module.
LAZY_IMPORTS = {"accelerate", "datasets", "deepspeed", "gguf", "math_verify", "matplotlib", "openai", "peft",
                "playwright", "sae_lens", "scipy", "sklearn", "tokenizers", "transformers", "vllm"}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules(lib: Path = LIB) -> dict[str, Path]:
    return {module_name(f, lib.parent): f for f in sorted(lib.rglob("*.py"))}


def imports_of(path: Path, mods: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every ``rank1`` import in the file, resolved to the deepest module
    that exists (``from rank1.sae import x`` -> ``rank1.sae`` with names ``[x]``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = [a.name for a in node.names if f"{node.module}.{a.name}" in mods]
            targets = [(f"{node.module}.{s}", []) for s in submodules]
            names = [a.name for a in node.names if a.name not in submodules]
            if names or not submodules:
                targets.append((node.module, names))
        else:
            continue
        for target, names in targets:
            if target.split(".")[0] != "rank1":
                continue
            while target not in mods and "." in target:
                target = target.rpartition(".")[0]
            out.append((target, names, node.lineno))
    return out


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def exported(stage: str, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(mods[f"rank1.{stage}"].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def layout_problems(mods: dict[str, Path]) -> list[str]:
    """Every import that breaks a layout rule, as ``file:line: what``."""
    problems = []
    for name, path in mods.items():
        mine = stage_of(name)
        for target, names, line in imports_of(path, mods):
            theirs = stage_of(target)
            where = f"{path.relative_to(path.parents[len(name.split('.')) - (path.name == '__init__.py')])}:{line}"
            if theirs is None or theirs == mine:
                continue
            if mine is None and not (name.startswith("rank1.pipeline") and target == f"rank1.{theirs}.config"):
                problems.append(f"{where}: core module {name} imports stage {target} (core never imports a stage; "
                                f"the pipeline may import a stage's config)")
            elif mine is not None and target != f"rank1.{theirs}":
                problems.append(f"{where}: stage {mine} imports {target}, a private module of stage {theirs}: "
                                f"import it from rank1.{theirs} (its __all__)")
            elif mine is not None:
                missing = sorted(set(names) - exported(theirs, mods))
                if missing:
                    problems.append(f"{where}: stage {mine} imports {missing} from rank1.{theirs}, which does not "
                                    f"list them in __all__")
    return problems


def import_cycles(mods: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module (an import of one's own package is not counted)."""
    graph = {m: {t for t, _, _ in imports_of(p, mods) if t != m and not m.startswith(t + ".")}
             for m, p in mods.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle():
    assert import_cycles(library_modules()) == []


def test_stages_import_core_and_only_the_exports_of_other_stages():
    assert layout_problems(library_modules()) == []


def test_every_stage_is_a_package_with_a_config_and_a_stage_module():
    for stage in STAGES:
        assert (LIB / stage / "__init__.py").is_file(), stage
        assert (LIB / stage / "config.py").is_file(), f"rank1/{stage}/config.py is missing"
        assert (LIB / stage / "stage.py").is_file(), f"rank1/{stage}/stage.py is missing"


def test_the_top_level_stays_small():
    top = sorted(p.name for p in LIB.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def function_level_imports(path: Path) -> list[tuple[str, int]]:
    """(top-level package, line) of every import inside a function body."""
    out = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out += [(a.name.split(".")[0], node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    out.append((node.module.split(".")[0], node.lineno))
    return out


def test_imports_inside_functions_are_only_for_optional_heavy_dependencies():
    found = [f"{path.relative_to(REPO_ROOT)}:{line} imports {top}" for path in library_modules().values()
             for top, line in function_level_imports(path) if top not in LAZY_IMPORTS]
    assert found == []


def test_scripts_define_no_classes():
    scripts = [f for d in SCRIPT_DIRS for f in sorted((REPO_ROOT / d).rglob("*.py"))]
    assert len(scripts) > 30
    classes = [f"{f.relative_to(REPO_ROOT)}:{n.lineno} {n.name}" for f in scripts
               for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ClassDef)]
    assert classes == []


def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / "rank1" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return library_modules(root / "rank1")


@pytest.mark.parametrize(("files", "expected"), [
    ({"sae/__init__.py": "__all__ = ['f']\nfrom rank1.sae.train import f\n", "sae/train.py": "def f(): pass\n",
      "sae_lora/__init__.py": "", "sae_lora/stage.py": "from rank1.sae.train import f\n"},
     "stage sae_lora imports rank1.sae.train, a private module of stage sae"),
    ({"sae/__init__.py": "__all__ = ['f']\nfrom rank1.sae.train import f, g\n",
      "sae/train.py": "def f(): pass\ndef g(): pass\n",
      "sae_lora/__init__.py": "", "sae_lora/stage.py": "def run():\n    from rank1.sae import g\n"},
     "stage sae_lora imports ['g'] from rank1.sae, which does not list them in __all__"),
    ({"store.py": "import rank1.sae\n", "sae/__init__.py": "__all__ = []\n"},
     "core module rank1.store imports stage rank1.sae"),
])
def test_the_layout_rule_catches_each_kind_of_breach(tmp_path, files, expected):
    problems = layout_problems(write_package(tmp_path, files))
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_layout_rule_allows_exports_and_the_pipeline_reading_configs(tmp_path):
    mods = write_package(tmp_path, {
        "sae/__init__.py": "__all__ = ['f']\nfrom rank1.sae.train import f\n", "sae/train.py": "def f(): pass\n",
        "sae/config.py": "X = 1\n", "pipeline.py": "from rank1.sae.config import X\n",
        "sae_lora/__init__.py": "", "sae_lora/stage.py": "from rank1.sae import f\nfrom rank1 import store\n",
        "store.py": ""})
    assert layout_problems(mods) == []


def test_a_cycle_is_found_in_a_function_body_too(tmp_path):
    mods = write_package(tmp_path, {"a.py": "def f():\n    import rank1.b\n", "b.py": "from rank1.a import f\n",
                                    "c.py": "import rank1.a\n"})
    assert import_cycles(mods) == [["rank1.a", "rank1.b"]]
