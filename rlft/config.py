"""Typed configs: dataclasses with a documented field each, loaded from YAML and overridden on the command line.

* ``from_dict(cls, data, where)`` builds a dataclass from a (YAML) mapping strictly, with dacite: an unknown key, a
  missing required key or a value of the wrong type raises ``ConfigError`` naming the file and the dotted field path.
* ``load_yaml(cls, path)`` does that for a file; ``to_dict``/``save_yaml`` write the resolved config back (every run
  directory keeps its ``config.yaml``).
* ``parse_cli(cls, default, args)`` applies ``--a.b value`` overrides with tyro on top of a YAML-loaded default, so
  ``--help`` lists every field with its docstring and current value.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import dacite
import yaml

from rlft.errors import ConfigError
from rlft.utils import atomic_write_text

T = TypeVar("T")


def _number(tp: type) -> Any:
    """dacite type hook: YAML spells ``1e-4`` as a string and ``100000.0`` as a float; take both where the field is a
    number (a value that does not convert is left for dacite's type check to report)."""

    def hook(value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if tp is float and isinstance(value, (int, str)):
            try:
                return float(value)
            except ValueError:
                return value
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    return hook


_DACITE = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _number(float), int: _number(int)})


def _refuse_unknown(cls: type, data: Any, where: str) -> None:
    """dacite reports an unknown key without its path; check the keys first so the error names the nested field."""
    if not isinstance(data, dict):
        return
    origin = get_origin(cls) or cls  # a generic dataclass such as TrainConfig[IQL.Config]: resolve its type variables
    typevars = dict(zip(getattr(origin, "__parameters__", ()), get_args(cls)))
    fields = {f.name for f in dataclasses.fields(origin) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for {origin.__name__}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(origin)
    for name, value in data.items():
        tp = typevars.get(hints[name], hints[name])
        for sub in (tp, *get_args(tp)):  # a dataclass, Optional[dataclass] or list[dataclass] field
            if dataclasses.is_dataclass(sub) and isinstance(sub, type):
                for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
                    _refuse_unknown(sub, item, f"{where}.{name}" + ("" if i is None else f"[{i}]"))
                break


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` (possibly generic, e.g. ``TrainConfig[IQL.Config]``) from a YAML mapping with dacite:
    an unknown key, a missing required field, a value of the wrong type or a choice outside a ``Literal`` raises one
    ConfigError naming ``where`` and the dotted field path (a dataclass's own ``__post_init__`` checks raise theirs)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    _refuse_unknown(cls, data, where)
    try:
        return dacite.from_dict(cls, data, config=_DACITE)
    except dacite.WrongTypeError as e:
        choices = get_args(e.field_type) if get_origin(e.field_type) is Literal else ()
        want = f"one of {list(choices)}" if choices else f"a value of type {_type_name(e.field_type)}"
        raise ConfigError(f"{where}.{e.field_path}: expected {want}, got {e.value!r}") from None
    except dacite.MissingValueError as e:
        raise ConfigError(f"{where}.{e.field_path}: required field is missing") from None
    except dacite.DaciteError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_choices(obj: Any, prefix: str) -> None:
    """Refuse a ``Literal``-typed field of dataclass ``obj`` holding a value outside its choices, as
    ``{prefix}.{field} must be one of [...], got ...`` (YAML and the command line are checked on load; this catches
    configs built in Python)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        choices = get_args(tp) if get_origin(tp) is Literal else ()
        if choices and getattr(obj, name, choices[0]) not in choices:
            raise ConfigError(f"{prefix}.{name} must be one of {list(choices)}, got {getattr(obj, name)!r}")


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


def parse_cli(
    cls: type[T], default: T | None, args: list[str], prog: str | None = None, description: str | None = None
) -> T:
    """Apply command-line overrides (``--field.sub value``) with tyro on top of ``default`` (None: the class's own
    defaults)."""
    import tyro

    if default is None:
        return tyro.cli(cls, args=args, prog=prog, description=description)
    return tyro.cli(cls, default=default, args=args, prog=prog, description=description)
