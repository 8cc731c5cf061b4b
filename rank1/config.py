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
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rank1.constants import ENV_CACHE, ENV_PROFILE, ENV_ROOT, TRAIN_JSONL

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
DEFAULT_PROFILE = "tiny"
COMMON_KEYS = ("description", "model", "dataset")
EXTENDS_KEY = "extends"
PATH_PLACEHOLDERS = ("{root}", "{cache}")

C = TypeVar("C")


def option(help: str, default: Any = None) -> Any:
    """A config field: its default and the one-line help that ``--help`` shows."""
    return dataclasses.field(default=default, metadata={"help": help})


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


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    values: dict[str, Any]

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


def _merged(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The values of the profile at ``path`` with its ``extends`` chain applied (child over parent)."""
    values = _read_toml(path)
    parent = values.pop(EXTENDS_KEY, None)
    unknown = [k for k, v in values.items() if not isinstance(v, dict) and k not in COMMON_KEYS]
    if unknown:
        raise ValueError(f"profile {path}: unknown top-level keys {unknown}; "
                         f"allowed: {(*COMMON_KEYS, EXTENDS_KEY)}")
    if parent is None:
        return values
    if not isinstance(parent, str):
        raise ValueError(f"profile {path}: {EXTENDS_KEY} must be a profile name or .toml path, got {parent!r}")
    parent_path = _profile_path(parent, path.parent).resolve()
    if parent_path in (*seen, path.resolve()):
        raise ValueError(f"profile {path}: {EXTENDS_KEY} = {parent!r} makes a cycle "
                         f"({' -> '.join(p.stem for p in (*seen, path, parent_path))})")
    if not parent_path.is_file():
        raise ValueError(f"profile {path}: {EXTENDS_KEY} = {parent!r} names no file ({parent_path}); "
                         f"use one of {available_profiles()} or a .toml path")
    merged = _merged(parent_path, (*seen, path.resolve()))
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


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
    """Load a profile by name (``tiny``, ``paper``, ``test``) or by path to a TOML file, with its
    ``extends`` chain merged and its ``{root}`` / ``{cache}`` placeholders expanded."""
    spec = name_or_path or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    path = _profile_path(spec, Path.cwd())
    if not path.is_file():
        raise ValueError(
            f"unknown profile {spec!r}: no file {path}. "
            f"Use one of {available_profiles()} or pass a path to a profile .toml file."
        )
    return Profile(name=path.stem, path=path.resolve(), values=expand_paths(_merged(path)))


def _field_type(tp: Any) -> type:
    """The type a flag parses to: ``X`` for ``X`` and for ``X | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        (base,) = [a for a in args if a is not type(None)]
        return base
    return tp


def profile_defaults(cls: type[C], profile: Profile, section: str | tuple[str, ...]) -> dict[str, Any]:
    """Values the profile gives for ``cls``: common keys it has as fields, then its own table (several
    tables: each overrides the ones before, e.g. ``("autointerp", "sae_autointerp")``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in profile.values.items() if k in COMMON_KEYS and k in names}
    for sec in (section,) if isinstance(section, str) else section:
        table = profile.section(sec)
        unknown = sorted(set(table) - names)
        if unknown:
            raise ValueError(f"profile {profile.path}: [{sec}] has unknown keys {unknown}; "
                             f"known: {sorted(names)}")
        values.update(table)
    return values


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser(cls: type[C], description: str, defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--profile", default=None,
                        help=f"profile name {available_profiles()} or path to a .toml "
                             f"(env {ENV_PROFILE}, default {DEFAULT_PROFILE})")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "profile":
            continue
        base = _field_type(hints[f.name])
        default = defaults.get(f.name, f.default)
        kwargs: dict[str, Any] = {"default": default, "help": f.metadata.get("help", "")}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
            kwargs["metavar"] = base.__name__.upper()
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def parse_config(cls: type[C], section: str | tuple[str, ...], description: str,
                 argv: list[str] | None = None) -> C:
    """Build ``cls`` from dataclass defaults < profile < command line. ``--help`` lists every field."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", default=None)
    known, _ = pre.parse_known_args(argv)
    try:
        profile = load_profile(known.profile)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    parser = build_parser(cls, description, profile_defaults(cls, profile, section))
    args = vars(parser.parse_args(argv))
    args["profile"] = profile.name  # a profile file my_cluster.toml is called my_cluster
    try:
        return cls(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def config_from_profile(cls: type[C], section: str | tuple[str, ...], profile: str | None = None,
                        **overrides) -> C:
    """Programmatic twin of :func:`parse_config`, for tests and notebooks."""
    prof = load_profile(profile)
    values = profile_defaults(cls, prof, section)
    values.update(overrides)
    return cls(profile=prof.name, **values)
