"""The report's results table, as a benchmark paper's: per row the split sizes, the chosen
hyperparameters (those that differ from the method's defaults), weights, image size, sweep id and
commit; a mean row per method; the winner highlighted only where it truly wins (more than one
method, and not tied with the runner-up on what ranks)."""
from __future__ import annotations

import dataclasses
import html
import json
import math

from raybench import tracking

TIE = 5e-4  # VAL image AUROCs closer than this (3 decimals alike) tie: no highlight (tracking.compact)
SKIP_PARAMS = {"seed", "weights", "image_size", "backbone", "saliency_net"}  # shown in their own columns


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def chosen_hyperparameters(method: str, params: dict) -> str:
    """`key=value` for each logged config field that differs from the method's default."""
    from raybench.methods import get_method
    try:
        cls = get_method(method).config_cls
    except Exception:  # noqa: BLE001 - a method this version does not have: show nothing rather than fail
        return ""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in SKIP_PARAMS or f.name not in params:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = params[f.name]
        shown = json.dumps(default) if isinstance(default, (list, dict)) else str(default)
        if text != shown:
            try:
                value = float(text)
                text = f"{value:.3g}" if not value.is_integer() else text
            except ValueError:
                pass
            out.append(f"{f.name}={text}")
    return ", ".join(out)


def final_seeds(row) -> str:
    """--final-seeds: test image AUROC mean ± std over the chosen configuration retrained."""
    if not row.final_n:
        return "–"
    return f"{_fmt(row.final_image_auroc_mean)} ± {_fmt(row.final_image_auroc_std)} (n={row.final_n})"


def true_winners(rows) -> set[str]:
    """Run ids of the rows to highlight: each category's winner where it beats another method."""
    best = tracking.winners(rows)
    out = set()
    for (dataset, category), row in best.items():
        others = [r.val_image_auroc for r in rows if (r.dataset, r.category) == (dataset, category) and r is not row]
        if others and all(row.val_image_auroc - v >= TIE for v in others if not math.isnan(v)):
            out.add(row.run_id)
    return out


def method_means(rows) -> list[tuple[str, dict]]:
    """(method label, {column: mean over its categories}) per method."""
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(tracking.method_label(r), []).append(r)
    out = []
    for label, group in sorted(by.items()):
        means = {}
        for key in ("val_image_auroc", "val_pixel_auroc", "image_auroc", "pixel_auroc", "aupro"):
            values = [getattr(r, key) for r in group if not math.isnan(getattr(r, key))]
            means[key] = sum(values) / len(values) if values else math.nan
        out.append((f"{label} (mean of {len(group)})", means))
    return out


HEAD = ("<tr><th colspan='2'></th><th colspan='2'>VAL (ranked)</th><th colspan='3'>TEST (chosen run)</th>"
        "<th>TEST, final seeds</th><th colspan='3'>split (images)</th><th colspan='5'></th></tr>"
        "<tr><th>category</th><th>method</th><th>VAL image AUROC</th><th>VAL pixel AUROC</th>"
        "<th>TEST image AUROC [95% CI] (≈: tied with the best TEST)</th><th>TEST pixel AUROC</th><th>TEST AUPRO</th>"
        "<th>TEST image AUROC mean ± std</th><th>train</th><th>val (anom.)</th><th>test (anom.)</th>"
        "<th>chosen hyperparameters</th><th>weights</th><th>size</th><th>sweep</th><th>commit</th></tr>")


def test_interval(row) -> str:
    """' [low, high]' of the row's bootstrap interval and ' ≈' when tied with the category's best
    TEST figure (docs/uncertainty.md); '' where the run has none."""
    low, high = row.test_image_auroc_ci_low, row.test_image_auroc_ci_high
    interval = "" if low != low or high != high else f" [{low:.3f}, {high:.3f}]"
    return html.escape(interval + (" ≈" if row.tied_with_best else ""))


def results_table(uri: str, rows) -> str:
    """The HTML table: one row per leaderboard row, then a mean row per method."""
    c = tracking.client(uri)
    highlight = true_winners(rows)
    parts = ["<table class='results'>", HEAD]
    for r in rows:
        run = c.get_run(r.run_id)
        p, tags = run.data.params, run.data.tags
        split = (f"<td class='num'>{p.get('n_train', '–')}</td>"
                 f"<td class='num'>{p.get('n_val', '–')} ({p.get('n_val_anomalous', '–')})</td>"
                 f"<td class='num'>{p.get('n_test', '–')} ({p.get('n_test_anomalous', '–')})</td>")
        cls = " class='winner'" if r.run_id in highlight else ""
        parts.append(
            f"<tr{cls}><td>{html.escape(r.category)}</td><td>{html.escape(tracking.method_label(r))}</td>"
            f"<td class='num'>{_fmt(r.val_image_auroc)}</td><td class='num'>{_fmt(r.val_pixel_auroc)}</td>"
            f"<td class='num'>{_fmt(r.image_auroc)}{test_interval(r)}</td><td class='num'>{_fmt(r.pixel_auroc)}</td>"
            f"<td class='num'>{_fmt(r.aupro)}</td><td class='num'>{html.escape(final_seeds(r))}</td>{split}"
            f"<td class='hp'>{html.escape(chosen_hyperparameters(r.method, p))}</td>"
            f"<td>{html.escape(p.get('backbone', ''))} {html.escape(r.weights or '')}</td>"
            f"<td>{html.escape(r.image_size or '')}</td><td>{html.escape(r.sweep_id or '')}</td>"
            f"<td><code>{html.escape((tags.get('git_commit') or '')[:10])}</code></td></tr>")
    for label, means in method_means(rows):
        parts.append(f"<tr class='mean'><td>mean</td><td>{html.escape(label)}</td>"
                     + "".join(f"<td class='num'>{_fmt(means[k])}</td>" for k in
                               ("val_image_auroc", "val_pixel_auroc", "image_auroc", "pixel_auroc", "aupro"))
                     + "<td colspan='9'></td></tr>")
    parts.append("</table>")
    return "\n".join(parts)
