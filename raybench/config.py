"""Method configs are dataclasses: every hyperparameter a search space may name is a field, with
the paper's value as its default. This module turns dicts into configs and back, strictly."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from raybench.errors import ConfigError


def field_types(config_cls) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _base_types(tp) -> tuple:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(tp) for t in _base_types(arg))
    if origin is typing.Literal:
        return tuple({type(a) for a in typing.get_args(tp)})
    if origin in (list, tuple):
        return (list, tuple)
    return (tp,)


def literal_choices(tp) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def coerce(name: str, value, tp):
    """Check (and gently convert) one value against a field type; ConfigError names the field."""
    choices = literal_choices(tp)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
        return value
    allowed = _base_types(tp)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if bool in allowed and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if isinstance(value, tuple) and list in allowed:
        return list(value)
    if not isinstance(value, tuple(t for t in allowed if isinstance(t, type))):
        raise ConfigError(f"{name}: expected {tp}, got {type(value).__name__} {value!r}")
    if int in allowed and isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    return value


def from_dict(config_cls, values: dict, *, method: str = ""):
    """Build a config; an unknown or mistyped key is a ConfigError (never silently ignored)."""
    types_ = field_types(config_cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{method or config_cls.__name__}: unknown parameter(s) {unknown}; "
                          f"known: {sorted(types_)}")
    return config_cls(**{k: coerce(k, v, types_[k]) for k, v in values.items()})


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def replace(config, **changes):
    return from_dict(type(config), {**to_dict(config), **changes})
