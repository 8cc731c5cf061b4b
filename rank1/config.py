"""Profiles, typed configs and the paths every stage derives from them.

A profile is a TOML file in ``configs/profiles/`` (or any path). Its top-level keys (``model``,
``dataset``) apply to every stage; each table (``[train]``, ``[data]``, ``[eval]``) gives the defaults
of one stage's config dataclass. Command-line flags override the profile, the profile overrides the
dataclass defaults. Select a profile with ``--profile NAME`` or ``RANK1_PROFILE``; move every output
with ``RANK1_ROOT``.
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


def load_profile(name_or_path: str | None = None) -> Profile:
    """Load a profile by name (``tiny``, ``paper``, ``test``) or by path to a TOML file."""
    spec = name_or_path or os.environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    path = Path(spec) if spec.endswith(".toml") else PROFILES_DIR / f"{spec}.toml"
    if not path.is_file():
        raise ValueError(
            f"unknown profile {spec!r}: no file {path}. "
            f"Use one of {available_profiles()} or pass a path to a profile .toml file."
        )
    with path.open("rb") as f:
        try:
            values = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"profile {path} is not valid TOML: {e}") from e
    unknown = [k for k, v in values.items() if not isinstance(v, dict) and k not in COMMON_KEYS]
    if unknown:
        raise ValueError(f"profile {path}: unknown top-level keys {unknown}; allowed: {COMMON_KEYS}")
    return Profile(name=path.stem, path=path.resolve(), values=values)


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
