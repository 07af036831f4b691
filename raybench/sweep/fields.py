"""`raybench methods METHOD`: each config field with its type, default, allowed range, and whether
the shipped search space tunes it (and over what), fixes it, or leaves it at its default."""
from __future__ import annotations

import dataclasses

from raybench.config import describe_range, field_ranges, field_types, type_name
from raybench.methods import get_method
from raybench.sweep.search_space import load_search_space


def _searched(dist) -> str:
    choices = getattr(dist, "choices", None)
    if choices is not None:
        return "tuned: " + " | ".join(str(c) for c in choices)
    log = " log" if getattr(dist, "log", False) else ""
    return f"tuned: {dist.low:g}..{dist.high:g}{log}"


def describe_fields(method: str) -> list[str]:
    spec = get_method(method)
    try:
        space = load_search_space(method)
        dists, fixed = space.distributions, space.fixed
    except Exception:  # noqa: BLE001 - no shipped space: every field at its default
        dists, fixed = {}, {}
    types, ranges = field_types(spec.config_cls), field_ranges(spec.config_cls)
    rows = []
    for f in dataclasses.fields(spec.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in dists:
            search = _searched(dists[f.name])
        elif f.name in fixed:
            search = f"fixed by the search space: {fixed[f.name]}"
        else:
            search = "-"
        bounds = describe_range(ranges[f.name]) if f.name in ranges else "-"
        rows.append((f.name, type_name(types[f.name]), repr(default), bounds, search))
    head = ("field", "type", "default", "range", "search space")
    widths = [min(28, max(len(r[i]) for r in rows + [head])) for i in range(4)]
    lines = [f"{method}: {spec.description}", ""]
    for row in [head] + rows:
        cells = [row[i][:widths[i]].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join(cells + [row[4]]).rstrip())
    lines.append("")
    lines.append(f"search space: search_spaces/{method.replace('-', '_')}.yaml; `--set FIELD=VALUE` fixes a field "
                 "for every trial")
    return lines
