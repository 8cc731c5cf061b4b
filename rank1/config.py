"""Profiles, typed configs and the paths every stage derives from them.

A profile is a TOML file in ``configs/profiles/`` (or any path). Its top-level keys (``model``,
``dataset``) apply to every stage; each table (``[train]``, ``[data]``, ``[eval]``) gives the defaults
of one stage's config dataclass. Command-line flags override the profile, the profile overrides the
dataclass defaults. Select a profile with ``--profile NAME`` or ``RANK1_PROFILE``; move every output
with ``RANK1_ROOT``.

``extends = "paper"`` makes a profile start from another one (a name or a path relative to the profile's
folder): its top-level keys replace the parent's, and each of its tables replaces the parent's values key by
key. In string values ``{root}`` and ``{cache}`` stand for :func:`project_root` and :func:`cache_dir`, so a
profile can name files that a run writes (``model = "{cache}/models/my-model"``).

A profile is checked where it is read: a table that no stage reads (:data:`KNOWN_TABLES`), a key that the stage's
config has no field for, or a value of the wrong type is an error naming the file, the table, the key and the
nearest valid name. A stage given ``--profile path/to/my.toml`` is called ``my`` (its output folders), and its
config's ``profile`` is a :class:`ProfileName`: the name that remembers the file, so that any code reading the
profile again (:func:`load_profile` of ``cfg.profile``) reads that file, not ``configs/profiles/my.toml``.

Field types are ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``list[X]`` of ``int``, ``float``, ``str``
or ``Literal[...]``, and ``T | None`` of any of them. A list field is parsed once, where the value enters: on the
command line it is one comma-separated word (``--layers 0,3,5``; ``--layers ''`` is the empty list; a word that
starts with a minus sign takes ``=``: ``--scalar_magnitudes=-3,1``), in a profile a TOML array of its element type
(or, as older profiles have it, one comma-separated string, read as the command line reads it). Stages see, and
``config.json`` saves, lists. The conversion is written here rather than left to argparse's ``nargs``, whose
space-separated lists cannot be emptied once a profile gave a value and whose errors cannot name a profile's file
and key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from rank1.constants import ENV_CACHE, ENV_PROFILE, ENV_ROOT, TRAIN_JSONL

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
DEFAULT_PROFILE = "tiny"
COMMON_KEYS = ("description", "model", "dataset")
EXTENDS_KEY = "extends"
PATH_PLACEHOLDERS = ("{root}", "{cache}")
# The tables a profile may have: those the stage configs read (parse_config / config_from_profile sections), the
# dry run's [plan] and the rehearsal's [rehearsal]. tests/test_config.py checks this list against the code.
KNOWN_TABLES = (
    "ablation", "attribution", "autointerp", "dashboard", "data", "eval", "extract", "feature_pages",
    "interpretability", "lora_vs_mlp", "plan", "probes", "rehearsal", "report", "rollouts", "sae", "sae_autointerp",
    "sae_dashboard", "sae_densities", "sae_donut", "sae_features", "sae_lora", "steering", "topk", "train",
    "weight_geometry",
)

C = TypeVar("C")


def option(help: str, default: Any = None) -> Any:
    """A config field: its default and the one-line help that ``--help`` shows. A list (or tuple) default, the
    default of a ``list[...]`` field, becomes a factory of fresh lists (dataclasses refuse a shared list)."""
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default_factory=functools.partial(list, tuple(default)), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_default(f: dataclasses.Field) -> Any:
    """The default of a config field (a new list for a list field); ``dataclasses.MISSING`` when it has none."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def project_root() -> Path:
    """Directory under which all outputs and caches live (``RANK1_ROOT``, else the repository)."""
    return Path(os.environ.get(ENV_ROOT) or REPO_ROOT).resolve()


def cache_dir() -> Path:
    """Converted models and other reusable downloads (``RANK1_CACHE``, else ``<root>/cache``)."""
    return Path(os.environ.get(ENV_CACHE) or project_root() / "cache").resolve()


def data_dir(profile: str) -> Path:
    return project_root() / "data" / profile


def dataset_file(dataset: str, profile: str) -> str:
    """The records a stage reads: ``synthetic`` is the profile's generated ``train.jsonl`` (what its
    runs trained on); anything else (a file, a dataset folder, a hub id) is returned as given."""
    if dataset != "synthetic":
        return dataset

    path = data_dir(profile) / TRAIN_JSONL
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: generate it first with "
                                f"`python s1_peft/prepare_data.py --profile {profile}`")
    return str(path)


def runs_dir(full: bool = False) -> Path:
    """Where training runs live: ``s1_peft/ckpts_lora`` (or ``ckpts_full`` for --full)."""
    return project_root() / "s1_peft" / ("ckpts_full" if full else "ckpts_lora")


def run_dir(run_name: str, full: bool = False) -> Path:
    return runs_dir(full) / run_name


def results_dir(profile: str, stage: str, name: str | None = None) -> Path:
    """Where a stage writes its artifacts: ``<root>/results/<profile>/<stage>[/<name>]`` (``name`` is
    usually the run the stage read, so two runs never share a folder)."""
    folder = project_root() / "results" / profile / stage
    return folder / name if name else folder


class ProfileName(str):
    """A profile's name (``my`` for ``my.toml``: what its output folders are called) that remembers the file it
    was read from. Stage configs hold it as ``profile``, so it travels with every copy of a config (also into
    the configs a stage builds from it, and across pickling) and :func:`load_profile` of it reads that file
    again: a profile given by path is never looked up by its name. It prints, compares and serialises to JSON
    as the plain name."""

    path: Path

    def __new__(cls, name: str, path: Path) -> ProfileName:
        obj = super().__new__(cls, name)
        obj.path = Path(path)
        return obj

    def __reduce__(self):
        return ProfileName, (str(self), self.path)


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    values: dict[str, Any]
    sources: dict[str, Path] = dataclasses.field(default_factory=dict)  # "table.key" or "key" -> the file setting it

    @property
    def spec(self) -> str:
        """What ``--profile`` names this profile by from any folder: the name of a shipped profile, else the
        absolute path of its file."""
        return self.name if self.path == PROFILES_DIR / f"{self.name}.toml" else str(self.path)

    def source(self, table: str | None, key: str) -> Path:
        """The file of the ``extends`` chain that set ``key`` (of ``[table]``; None: a top-level key)."""
        return self.sources.get(f"{table}.{key}" if table else key, self.path)

    def common(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def section(self, name: str) -> dict[str, Any]:
        table = self.values.get(name, {})
        if not isinstance(table, dict):
            raise ValueError(f"profile {self.path}: [{name}] must be a table, got {table!r}")
        return table


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def _profile_path(spec: str, relative_to: Path) -> Path:
    """A profile name is a file in ``configs/profiles/``; a ``.toml`` path is read relative to ``relative_to``."""
    if not spec.endswith(".toml"):
        return PROFILES_DIR / f"{spec}.toml"
    path = Path(spec)
    return path if path.is_absolute() else relative_to / path


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"profile {path} is not valid TOML: {e}") from e


def nearest(name: str, valid: typing.Iterable[str], what: str) -> str:
    """``"did you mean 'x'?"`` for the valid name closest to ``name``, else the list of valid ``what``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid {what}: {', '.join(valid)}"


def _check_names(path: Path, values: dict[str, Any]) -> None:
    """Every top-level key of one profile file is a common key or ``extends``, every table a known one."""
    for key, value in values.items():
        if isinstance(value, dict) and key not in KNOWN_TABLES:
            raise ValueError(f"profile {path}: unknown table [{key}] ({nearest(key, KNOWN_TABLES, 'tables')})")
    allowed = (*COMMON_KEYS, EXTENDS_KEY)
    unknown = [k for k, v in values.items() if not isinstance(v, dict) and k not in allowed]
    if unknown:
        raise ValueError(f"profile {path}: unknown top-level keys {unknown} "
                         f"({nearest(unknown[0], allowed, 'top-level keys')})")


def _merged(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """The values of the profile at ``path`` with its ``extends`` chain applied (child over parent), and the
    file each value came from (``"table.key"`` or ``"key"`` -> path)."""
    values = _read_toml(path)
    _check_names(path, values)
    parent = values.pop(EXTENDS_KEY, None)
    own: dict[str, Path] = {}
    for key, value in values.items():
        own.update({f"{key}.{k}": path for k in value} if isinstance(value, dict) else {key: path})
    if parent is None:
        return values, own
    if not isinstance(parent, str):
        raise ValueError(f"profile {path}: {EXTENDS_KEY} must be a profile name or .toml path, got {parent!r}")
    parent_path = _profile_path(parent, path.parent).resolve()
    if parent_path in (*seen, path.resolve()):
        raise ValueError(f"profile {path}: {EXTENDS_KEY} = {parent!r} makes a cycle "
                         f"({' -> '.join(p.stem for p in (*seen, path, parent_path))})")
    if not parent_path.is_file():
        raise ValueError(f"profile {path}: {EXTENDS_KEY} = {parent!r} names no file ({parent_path}); "
                         f"use one of {available_profiles()} or a .toml path")
    merged, sources = _merged(parent_path, (*seen, path.resolve()))
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged, {**sources, **own}


def expand_paths(value: Any) -> Any:
    """``value`` with ``{root}`` / ``{cache}`` in its strings replaced (lists and tables too)."""
    if isinstance(value, str):
        if "{root}" in value:
            value = value.replace("{root}", str(project_root()))
        return value.replace("{cache}", str(cache_dir())) if "{cache}" in value else value
    if isinstance(value, dict):
        return {k: expand_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_paths(v) for v in value]
    return value


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name (``tiny``, ``paper``, ``test``), by path to a TOML file (relative to the working
    directory) or by a config's :class:`ProfileName` (the file it was read from), with its ``extends`` chain
    merged and its ``{root}`` / ``{cache}`` placeholders expanded."""
    spec = name_or_path or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    path = spec.path if isinstance(spec, ProfileName) else _profile_path(spec, Path.cwd())
    if not path.is_file():
        raise ValueError(
            f"unknown profile {spec!r}: no file {path}. "
            f"Use one of {available_profiles()} or pass a path to a profile .toml file."
        )
    values, sources = _merged(path)
    return Profile(name=path.stem, path=path.resolve(), values=expand_paths(values), sources=sources)


def _field_type(tp: Any) -> Any:
    """The type a flag parses to: ``X`` for ``X`` and for ``X | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base
    return tp


def _element_type(tp: Any) -> Any | None:
    """``X`` of a ``list[X]`` field type (or of ``list[X] | None``); None for any other type."""
    base = _field_type(tp)
    return typing.get_args(base)[0] if typing.get_origin(base) is list else None


def _allowed(tp: Any) -> tuple | None:
    """The values of a ``Literal[...]`` type; None for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TOML_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "a table"}


def _fits(value: Any, expected: type) -> bool:
    """Whether a TOML value can be a field of type ``expected`` (an integer can be a float)."""
    if expected is bool or isinstance(value, bool):
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _toml_name(value: Any) -> str:
    return next((n for t, n in _TOML_NAMES.items() if isinstance(value, t)), type(value).__name__)


def _one_of(allowed: tuple) -> str:
    return f"one of {', '.join(map(str, allowed))}"


def _literal(value: Any, tp: Any) -> bool:
    """Whether ``tp`` is a ``Literal``; then ``value`` must be one of its values (else a ``ValueError``)."""
    allowed = _allowed(tp)
    if allowed is not None and value not in allowed:
        raise ValueError(f"{value!r} is not {_one_of(allowed)}")
    return allowed is not None


def _word(word: str, tp: Any) -> Any:
    """One value of type ``tp`` (``int``, ``float``, ``str`` or a ``Literal`` of strings) written as text."""
    if _literal(word, tp):
        return word
    try:
        return tp(word)
    except ValueError:
        raise ValueError(f"{word!r} is not {_TYPE_NAMES[tp]}") from None


def _element(value: Any, tp: Any) -> Any:
    """One element of type ``tp`` given as a TOML (or Python) value; ``int`` where ``float`` is asked is widened."""
    if _literal(value, tp):
        return value
    if not _fits(value, tp):
        raise ValueError(f"{value!r} is not {_TYPE_NAMES[tp]}")
    return float(value) if tp is float else value


def parse_list(text: str, element: Any) -> list:
    """The elements of type ``element`` of a comma-separated ``text`` (spaces around an element are dropped;
    ``""`` is the empty list). An empty or malformed element is a ``ValueError`` naming it."""
    words = [w.strip() for w in text.split(",")]
    if words == [""]:
        return []
    if "" in words:
        raise ValueError(f"{text!r} has an empty element")
    return [_word(w, element) for w in words]


def _list_value(value: Any, element: Any) -> list:
    """A list field's value from a profile or a program: an array (list or tuple) of ``element`` values, or one
    comma-separated string read as the command line reads it."""
    if isinstance(value, str):
        return parse_list(value, element)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be an array, got {_toml_name(value)}")
    return [_element(v, element) for v in value]


def _plural(element: Any) -> str:
    """What a list of ``element`` holds: ``integers``, ``numbers``, ``strings``, or ``them`` (a ``Literal``'s
    values, named just before)."""
    return "them" if _allowed(element) else f"{_TYPE_NAMES[element].split()[-1]}s"


def _typed_value(value: Any, hint: Any) -> Any:
    """``value`` as a field of type ``hint`` holds it: a list field's array or comma string as a checked list, a
    ``Literal`` field's value checked; other values as given. A bad one is a ``ValueError`` saying why."""
    element = _element_type(hint)
    if value is None:
        return value
    if element is not None:
        try:
            return _list_value(value, element)
        except ValueError as e:
            raise ValueError(f"{e}; give an array of {_plural(element)} (or one comma-separated string)") from None
    allowed = _allowed(_field_type(hint))
    if allowed is not None and value not in allowed:
        raise ValueError(f"must be {_one_of(allowed)}")
    return value


def _profile_value(profile: Profile, table: str | None, key: str, value: Any, hint: Any) -> Any:
    """``value`` of ``key`` (of ``[table]``; None: a top-level key) checked and typed as the field of type ``hint``
    holds it; a bad one is a ``ValueError`` naming the profile file, the table and the key."""
    where = f"profile {profile.source(table, key)}: {f'[{table}] {key}' if table else key} = {value!r}"
    expected = _field_type(hint)
    if expected in _TYPE_NAMES and not _fits(value, expected):
        raise ValueError(f"{where} must be {_TYPE_NAMES[expected]}, got {_toml_name(value)}")
    try:
        return _typed_value(value, hint)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def profile_defaults(cls: type[C], profile: Profile, section: str | tuple[str, ...]) -> dict[str, Any]:
    """Values the profile gives for ``cls``: common keys it has as fields, then its own table (several
    tables: each overrides the ones before, e.g. ``("autointerp", "sae_autointerp")``). A key ``cls`` has no
    field for, or a value of another type than the field's, is a ``ValueError`` naming the profile file. List
    fields come back as lists."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"profile"}
    values = {k: _profile_value(profile, None, k, v, hints[k])
              for k, v in profile.values.items() if k in COMMON_KEYS and k in names}
    for sec in (section,) if isinstance(section, str) else section:
        for key, value in profile.section(sec).items():
            if key not in names:
                raise ValueError(f"profile {profile.source(sec, key)}: [{sec}] has unknown key {key!r} "
                                 f"({nearest(key, names, 'keys')})")
            values[key] = _profile_value(profile, sec, key, value, hints[key])
    return values


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _flag_type(name: str, hint: Any) -> Any:
    """argparse's ``type`` of ``--name`` for a list or ``Literal`` field: its one word parsed once into the list
    (or checked against the allowed values); a bad element is an error naming the flag, the element and what is
    allowed. Any other field: its type."""
    element, base = _element_type(hint), _field_type(hint)
    if element is None and _allowed(base) is None:
        return base

    def parse(text: str) -> Any:
        try:
            return parse_list(text, element) if element is not None else _word(text, base)
        except ValueError as e:
            how = "" if element is None else f"; give a comma-separated list of {_plural(element)} ('' for none)"
            raise argparse.ArgumentTypeError(f"{text!r}: {e}{how}") from None

    parse.__name__ = name
    return parse


def _metavar(hint: Any) -> str:
    """``INT``, ``INT,...`` for a list, ``{a,b}`` or ``{a,b},...`` for ``Literal`` values."""
    element, base = _element_type(hint), _field_type(hint)
    one = element if element is not None else base
    allowed = _allowed(one)
    name = "{" + ",".join(map(str, allowed)) + "}" if allowed else one.__name__.upper()
    return f"{name},..." if element is not None else name


def _shown(value: Any, hint: Any) -> Any:
    """A default as the flag is written: a list as its comma-separated word (argparse parses it like a given
    value, so ``--help`` shows it as a comma list)."""
    if _element_type(hint) is not None and isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def build_parser(cls: type[C], description: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--profile", default=None,
                        help=f"profile name {available_profiles()} or path to a .toml "
                             f"(env {ENV_PROFILE}, default {DEFAULT_PROFILE})")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "profile":
            continue
        hint = hints[f.name]
        default = defaults[f.name] if f.name in defaults else field_default(f)
        kwargs: dict[str, Any] = {"default": _shown(default, hint), "help": f.metadata.get("help", "")}
        if _field_type(hint) is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _flag_type(f.name, hint)
            kwargs["metavar"] = _metavar(hint)
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def _profile_error(e: ValueError) -> NoReturn:
    """A profile that cannot be read or does not fit the stage: one ``error:`` line and exit status 2, as
    :func:`rank1.logs.run_main` ends bad input (``RANK1_DEBUG=1`` keeps the traceback)."""
    if os.environ.get("RANK1_DEBUG"):
        raise e
    sys.stderr.write(f"error: {e}\n")
    raise SystemExit(2)


def parse_config(cls: type[C], section: str | tuple[str, ...], description: str,
                 argv: list[str] | None = None) -> C:
    """Build ``cls`` from dataclass defaults < profile < command line. ``--help`` lists every field."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", default=None)
    known, _ = pre.parse_known_args(argv)
    try:
        profile = load_profile(known.profile)
        defaults = profile_defaults(cls, profile, section)
    except ValueError as e:
        _profile_error(e)
    parser = build_parser(cls, description, defaults)
    args = vars(parser.parse_args(argv))
    args["profile"] = ProfileName(profile.name, profile.path)  # a profile file my_cluster.toml is called my_cluster
    try:
        return cls(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def config_from_profile(cls: type[C], section: str | tuple[str, ...], profile: str | None = None,
                        **overrides) -> C:
    """Programmatic twin of :func:`parse_config`, for tests and notebooks (``profile``: a name, a path or a
    config's :class:`ProfileName`). An override of a list field may be a list or a comma-separated string, as in a
    profile; a bad one is a ``ValueError`` naming it."""
    prof = load_profile(profile)
    values = profile_defaults(cls, prof, section)
    hints = typing.get_type_hints(cls)
    for key, value in overrides.items():
        try:
            values[key] = _typed_value(value, hints[key]) if key in hints else value
        except ValueError as e:
            raise ValueError(f"{key}={value!r}: {e}") from None
    return cls(profile=ProfileName(prof.name, prof.path), **values)


def saved_as_today(cfg: C, saved: dict[str, Any]) -> dict[str, Any]:
    """A config that an earlier run of ``cfg``'s stage saved (its ``config.json``) as ``cfg``'s class makes it
    today, to compare with ``dataclasses.asdict(cfg)``: fields it lacks take their defaults, list fields saved as
    comma-separated strings (before they were lists) are parsed, and the class's normalisation
    (``__post_init__``) runs on the result."""
    hints = typing.get_type_hints(type(cfg))
    values = {}
    for f in dataclasses.fields(cfg):
        value = saved[f.name] if f.name in saved else field_default(f)
        element = _element_type(hints[f.name])
        values[f.name] = parse_list(value, element) if element is not None and isinstance(value, str) else value
    return dataclasses.asdict(dataclasses.replace(cfg, **values))
