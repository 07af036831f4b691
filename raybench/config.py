"""Method configs are dataclasses: every hyperparameter a search space may name is a field, with
the paper's value as its default. This module turns dicts into configs and back, strictly."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from raybench.errors import ConfigError, did_you_mean, unknown_name


def ranged(default=dataclasses.MISSING, low=None, high=None, *, low_open: bool = False,
           high_open: bool = False, factory=dataclasses.MISSING):
    """A config field with the values it accepts, declared once beside its default: numbers in
    [low, high] (`low_open`/`high_open` exclude an end; None leaves it unbounded); for a list
    field every element. `from_dict` and the search-space loader check it."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"range": (low, high, low_open, high_open)})


def field_ranges(config_cls) -> dict[str, tuple]:
    return {f.name: f.metadata["range"] for f in dataclasses.fields(config_cls) if "range" in f.metadata}


def describe_range(bounds: tuple) -> str:
    low, high, low_open, high_open = bounds
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_range(name: str, value, bounds: tuple | None):
    """ConfigError naming the field unless `value` (or each element of a list) lies in bounds."""
    if bounds is None or value is None:
        return value
    low, high, low_open, high_open = bounds
    for v in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        too_low = low is not None and (v <= low if low_open else v < low)
        too_high = high is not None and (v >= high if high_open else v > high)
        if too_low or too_high or v != v:  # v != v: NaN
            raise ConfigError(f"{name}: {value!r} is out of range (must be {describe_range(bounds)})")
    return value


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


def type_name(tp) -> str:
    """A field type in plain words: float, int, str, list, 'one of a, b', 'str or None'."""
    choices = literal_choices(tp)
    if choices is not None:
        return "one of " + ", ".join(map(str, choices))
    names = []
    for t in _base_types(tp):
        name = "None" if t is type(None) else ("list" if t in (list, tuple) else getattr(t, "__name__", str(t)))
        if name not in names:
            names.append(name)
    return " or ".join(names)


def literal_choices(tp) -> tuple | None:
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def coerce(name: str, value, tp):
    """Check (and gently convert) one value against a field type; ConfigError names the field."""
    choices = literal_choices(tp)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}"
                          f"{did_you_mean(value, choices)}")
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
        raise ConfigError(f"{name}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if int in allowed and isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    return value


def from_dict(config_cls, values: dict, *, method: str = ""):
    """Build a config; an unknown or mistyped key is a ConfigError (never silently ignored)."""
    types_ = field_types(config_cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError("; ".join(f"{method or config_cls.__name__}: " + unknown_name("parameter", k, sorted(types_))
                                    for k in unknown))
    config = config_cls(**{k: coerce(k, v, types_[k]) for k, v in values.items()})
    for name, bounds in field_ranges(config_cls).items():  # given values and defaults alike
        check_range(name, getattr(config, name), bounds)
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def replace(config, **changes):
    return from_dict(type(config), {**to_dict(config), **changes})
