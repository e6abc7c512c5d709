"""Typed configs: dataclasses with a documented field each, loaded from YAML and overridden on the command line.

* ``from_dict(cls, data, where)`` builds a dataclass from a (YAML) mapping strictly: an unknown key, a missing required
  key or a value of the wrong type raises ``ConfigError`` naming the file and the dotted field path.
* ``load_yaml(cls, path)`` does that for a file; ``to_dict``/``save_yaml`` write the resolved config back (every run
  directory keeps its ``config.yaml``).
* ``parse_cli(cls, default, args)`` applies ``--a.b value`` overrides with tyro on top of a YAML-loaded default, so
  ``--help`` lists every field with its docstring and current value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from rlft.errors import ConfigError
from rlft.utils import atomic_write_text

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: value {value!r} matches none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {_type_name(tp)}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML reads "1e-4" as a string
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` strictly (unknown/missing keys and wrong types raise ConfigError)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; valid fields: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: required field '{name}' of {cls.__name__} is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or unparsable file raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load dataclass ``cls`` from the YAML file at ``path`` (errors name the file and field)."""
    return from_dict(cls, read_yaml(path), where=str(path))


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars suitable for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config to ``path`` atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_dir_name(name: str | None, field: str) -> None:
    """A run/stage/sweep directory name must be one path component inside its ``out_dir``: not empty, no path
    separator, not ``.``/``..``, not absolute. Anything else would write outside ``out_dir`` -- refused naming
    ``field``."""
    if name is None:
        return
    bad = (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    )
    if bad:
        raise ConfigError(
            f"{field}: {name!r} is not a plain directory name (one path component, no '/', '..' or "
            f"absolute path); it names the folder created inside out_dir"
        )


def parse_cli(cls: type[T], default: T, args: list[str], prog: str | None = None, description: str | None = None) -> T:
    """Apply command-line overrides (``--field.sub value``) with tyro on top of ``default``."""
    import tyro

    return tyro.cli(cls, default=default, args=args, prog=prog, description=description)
