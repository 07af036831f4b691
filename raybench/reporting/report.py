"""`raybench report DATASET --out report.html`: one self-contained HTML page of a dataset's results
(leaderboard ranked on validation with each chosen run's test figures, the categories x methods
chart, the best runs' overlays, curves and histograms) that
opens from a file with no server: every image is inlined as base64, nothing links outside."""
from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
import time
from pathlib import Path

from raybench.reporting import figures
from raybench.reporting.results import results_table, true_winners
from raybench import tracking

RUN_FIGURES = (figures.OVERLAYS, figures.CURVES, figures.HISTOGRAM)

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.winner{background:#eaf6ea;font-weight:600}
tr.mean td{border-top:2px solid #444;font-style:italic}td.hp{font-size:12px;max-width:280px}
img{max-width:100%;border:1px solid #eee}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs img{max-width:560px}h2{margin-top:2em;border-bottom:2px solid #444}.muted{color:#777}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_data_uri(png)}">'


def _fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    figures._plt().close(fig)
    return buf.getvalue()


def _fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def run_figures(uri: str, run_id: str, folder: Path) -> dict[str, bytes]:
    """The run's logged figures (name -> PNG bytes); a run swept with --no-figures has none."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file would bury the output
    c = tracking.client(uri)
    names = {Path(a.path).name for a in c.list_artifacts(run_id, figures.FIGURES_DIR)}
    out = {}
    for name in RUN_FIGURES:
        if name in names:
            local = c.download_artifacts(run_id, f"{figures.FIGURES_DIR}/{name}", str(folder))
            out[name] = Path(local).read_bytes()
    return out


def _test_section(uri: str, row, label: str, data_root) -> str:
    """The chosen run's TEST overlays, curves and histogram (reporting.test_pictures), or why not."""
    from raybench.reporting.test_pictures import test_pictures
    try:
        pngs = test_pictures(uri, tracking.client(uri).get_run(row.run_id), data_root)
    except Exception as err:  # noqa: BLE001 - the page still shows everything else, and says why
        return (f"<h3>test</h3><p class='muted'>no test pictures: {html.escape(type(err).__name__)}: "
                f"{html.escape(str(err))} (pass --data-root for a dataset that is not built in)</p>")
    return ("<h3>test (drawn after the choice)</h3><div class='figs test'>" +
            "".join(_img(png, f"{label} test {name}") for name, png in pngs.items()) + "</div>")


def build_report(uri: str, dataset: str, data_root=None) -> str:
    """The page as a string. Refuses a dataset with no finished run (nothing to show)."""
    uri = tracking.tracking_uri(uri)
    rows = tracking.leaderboard(uri, dataset)
    if not rows:
        raise LookupError(f"no finished runs of dataset {dataset!r} in {uri} (run `raybench sweep {dataset}` first)")
    best = true_winners(rows)
    title = f"raybench: {dataset}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='muted'>MLflow store {html.escape(uri)}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             "Each row is the run chosen on <b>validation</b> (VAL: what ranked it, and what chose each "
             "category's winner); TEST is that run scored once on its category's untouched test split, "
             "never used to choose. The highlighted row is each category's winner, the run "
             "<code>best_model</code> loads (MLflow tag <code>winner=yes</code>).</p>",
             "<h2>Leaderboard</h2>", results_table(uri, rows),
             "<p class='muted'>A highlighted row wins its category over another method on VAL image AUROC "
             "(a tie or a lone method is not highlighted). Split sizes are images (anomalous in brackets); "
             "chosen hyperparameters are those that differ from the method's defaults.</p>"]
    chart = figures.leaderboard_figure(dataset, rows)
    parts.append(f"<h2>Categories x methods</h2><p class='muted'>TEST image AUROC of the configuration chosen "
                 f"on validation: where final seeds ran, bar and error bar are their mean ± std; else the "
                 f"chosen run's value and its 95% bootstrap interval over test images.</p>"
                 f"{_img(_fig_png(chart), 'leaderboard chart')}")
    with tempfile.TemporaryDirectory(prefix="raybench-report-") as tmp:
        for i, r in enumerate(rows):
            parts.append(f"<h2>{html.escape(r.category)} · {html.escape(tracking.method_label(r))}"
                         f"{' (winner)' if r.run_id in best else ''}</h2>"
                         f"<p class='muted'>run {html.escape(r.run_name or '')} ({r.run_id}); VAL image AUROC "
                         f"{_fmt(r.val_image_auroc)}, pixel AUROC {_fmt(r.val_pixel_auroc)}; TEST image AUROC "
                         f"{_fmt(r.image_auroc)}, pixel AUROC {_fmt(r.pixel_auroc)}</p>")
            pngs = run_figures(uri, r.run_id, Path(tmp) / str(i))
            label = f"{r.category} {tracking.method_label(r)}"
            if pngs:
                parts.append("<h3>validation (what chose this run)</h3><div class='figs validation'>" +
                             "".join(_img(png, f"{label} validation {name}") for name, png in pngs.items()) + "</div>")
            else:
                parts.append("<p class='muted'>no validation figures logged for this run (swept with --no-figures, "
                             "or before raybench logged them)</p>")
            parts.append(_test_section(uri, r, label, data_root))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(uri: str | None, dataset: str, out: str | Path, data_root=None) -> Path:
    out = Path(out)
    page = build_report(uri, dataset, data_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
