"""Search spaces: YAML files (`search_spaces/<method>.yaml`) -> Optuna distributions, checked
against the method's config dataclass when loaded, so a typo fails before any trial runs.

Format:
    method: patchcore
    params:
      coreset_ratio: {type: float, low: 0.001, high: 0.1, log: true}
      patch_size:    {type: int, low: 1, high: 5, step: 2}
      layers:        {type: categorical, choices: [[layer2, layer3], [layer2]]}
    fixed: {projection_dim: 128}

Categorical choices may be lists (layer sets); Optuna stores them as their JSON text, and
`decode_params` turns them back.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import optuna.distributions as od
import yaml

from raybench.config import check_range, coerce, field_ranges, field_types
from raybench.errors import ConfigError
from raybench.methods import get_method


def _default_dir() -> Path:
    """RAYBENCH_SEARCH_SPACES if set; else the copy a built wheel ships (raybench/search_spaces/,
    see setup.py); else the checkout's top-level search_spaces/ (an editable install). The
    top-level folder is the one to edit; --search-space FILE always works."""
    if os.environ.get("RAYBENCH_SEARCH_SPACES"):
        return Path(os.environ["RAYBENCH_SEARCH_SPACES"])
    shipped = Path(str(resources.files("raybench").joinpath("search_spaces")))
    if shipped.is_dir():
        return shipped
    return Path(__file__).resolve().parents[2] / "search_spaces"


SEARCH_SPACE_DIR = _default_dir()
_KEYS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
         "categorical": {"choices"}}


def default_path(method: str) -> Path:
    return SEARCH_SPACE_DIR / f"{method.replace('-', '_')}.yaml"


@dataclass
class SearchSpace:
    method: str
    distributions: dict[str, od.BaseDistribution]
    fixed: dict = field(default_factory=dict)
    source: str = ""

    def without(self, names) -> "SearchSpace":
        """A copy that no longer samples `names` (they were fixed on the command line)."""
        return SearchSpace(self.method, {k: v for k, v in self.distributions.items() if k not in names},
                           {k: v for k, v in self.fixed.items() if k not in names}, self.source)


def _encode(value):
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def decode_params(params: dict) -> dict:
    """Undo the JSON encoding of list-valued categorical choices."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def _distribution(name: str, spec, types: dict, where: str, bounds: tuple | None = None) -> od.BaseDistribution:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: {name}: expected a mapping with 'type' (float | int | categorical)")
    kind = spec["type"]
    if kind not in _KEYS:
        raise ConfigError(f"{where}: {name}: unknown type {kind!r} (float | int | categorical)")
    extra = set(spec) - _KEYS[kind] - {"type"}
    if extra:
        raise ConfigError(f"{where}: {name}: unknown key(s) {sorted(extra)} for type {kind}")
    tp = types[name]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {name}: categorical needs a non-empty 'choices' list")
        for c in choices:
            check_range(f"{where}: {name}", coerce(f"{where}: {name}", c, tp), bounds)
        return od.CategoricalDistribution([_encode(c) for c in choices])
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {name}: {kind} needs 'low' and 'high'")
    low, high = coerce(f"{where}: {name}.low", spec["low"], tp), coerce(f"{where}: {name}.high", spec["high"], tp)
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: {name}: field is not an int")
    if kind == "float" and not isinstance(low, float):
        raise ConfigError(f"{where}: {name}: field is not a float (use type: int or categorical)")
    if low > high:
        raise ConfigError(f"{where}: {name}: low > high")
    check_range(f"{where}: {name}.low", low, bounds)  # every value in between is then in range too
    check_range(f"{where}: {name}.high", high, bounds)
    try:
        if kind == "int":
            return od.IntDistribution(low, high, log=bool(spec.get("log", False)), step=int(spec.get("step", 1)))
        return od.FloatDistribution(low, high, log=bool(spec.get("log", False)), step=spec.get("step"))
    except ValueError as err:
        raise ConfigError(f"{where}: {name}: {err}") from None


def load_search_space(method: str, path: str | Path | None = None) -> SearchSpace:
    spec = get_method(method)
    path = Path(path) if path else default_path(method)
    if not path.is_file():
        raise ConfigError(f"search space {path} not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping with 'method', 'params', 'fixed'")
    unknown_top = set(doc) - {"method", "params", "fixed"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}")
    if doc.get("method", method) != method:
        raise ConfigError(f"{path}: written for method {doc['method']!r}, not {method!r}")
    types = field_types(spec.config_cls)
    params, fixed = doc.get("params") or {}, doc.get("fixed") or {}
    for name in list(params) + list(fixed):
        if name not in types:
            raise ConfigError(f"{path}: {name!r} is not a parameter of {method}; known: {sorted(types)}")
    both = set(params) & set(fixed)
    if both:
        raise ConfigError(f"{path}: {sorted(both)} both sampled and fixed")
    ranges = field_ranges(spec.config_cls)
    dists = {n: _distribution(n, s, types, str(path), ranges.get(n)) for n, s in params.items()}
    fixed = {n: check_range(f"{path}: {n}", coerce(f"{path}: {n}", v, types[n]), ranges.get(n))
             for n, v in fixed.items()}
    return SearchSpace(method, dists, fixed, str(path))
