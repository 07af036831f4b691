"""The leaderboard for a terminal: at most 100 columns, then one line per category saying which
method wins it and by how much (validation image AUROC, what ranks). `--wide` prints every column
(raybench.tracking.leaderboard.format_leaderboard)."""
from __future__ import annotations

import math

WIDTH = 100
TIE = 5e-4  # validation AUROCs closer than this print alike (3 decimals): a tie


def _f(x: float, width: int) -> str:
    return f"{'-':>{width}}" if x is None or math.isnan(x) else f"{x:>{width}.3f}"


def _label(row) -> str:
    return f"{row.method} ({row.variant})" if row.variant else row.method


def format_compact(rows, winners: dict) -> str:
    """The leaderboard in <= 100 columns; `winners`: (dataset, category) -> the winning row."""
    if not rows:
        return "(no finished runs)"
    datasets = sorted({r.dataset for r in rows})
    head = (f"{'category':<14} {'method':<18} {'VAL img':>7} {'VAL pix':>7} | {'TEST img':>8} {'TEST pix':>8} "
            f"{'AUPRO':>6} | {'final seeds':>15} {'runs':>4}")
    lines = [f"dataset {', '.join(datasets)}: ranked by VAL (validation split); TEST = the chosen run on the "
             "untouched test split", head, "-" * len(head)]
    for r in rows:
        category = r.category if len(datasets) == 1 else f"{r.dataset}/{r.category}"
        mark = "*" if winners.get((r.dataset, r.category)) is r else " "
        final = f"{r.final_image_auroc_mean:.3f}±{r.final_image_auroc_std:.3f}" if r.final_n else "-"
        lines.append(f"{category[:13]:<13}{mark} {_label(r)[:18]:<18} {_f(r.val_image_auroc, 7)} "
                     f"{_f(r.val_pixel_auroc, 7)} | {_f(r.image_auroc, 8)} {_f(r.pixel_auroc, 8)} "
                     f"{_f(r.aupro, 6)} | {final:>15} {r.n_runs:>4}")
    settings = sorted({f"{r.budget or '?'} budget, weights {r.weights or '?'}, {r.image_size or '?'} px"
                       for r in rows})
    lines.append("* the category's winner (best VAL image AUROC); " + "; ".join(settings))
    lines.extend(winner_lines(rows, winners))
    lines.append("(`raybench leaderboard --wide` adds run names, sizes and test counts)")
    return "\n".join(line[:WIDTH] if len(line) > WIDTH else line for line in lines)


def winner_lines(rows, winners: dict) -> list[str]:
    """'disc: cutpaste wins, VAL img 0.912 vs patchcore 0.875 (+0.037)' per category."""
    out = []
    for (dataset, category), best in sorted(winners.items()):
        others = [r for r in rows if (r.dataset, r.category) == (dataset, category) and r is not best
                  and not math.isnan(r.val_image_auroc)]
        if not others:
            out.append(f"  {category}: {_label(best)} (the only method)")
            continue
        runner = max(others, key=lambda r: r.val_image_auroc)
        gap = best.val_image_auroc - runner.val_image_auroc
        test = f"TEST img {best.image_auroc:.3f} vs {runner.image_auroc:.3f}"
        if abs(gap) < TIE:  # the ranking's tie-break decided: say so, and by what
            pix = best.val_pixel_auroc - runner.val_pixel_auroc
            how = (f"ahead on VAL pix {best.val_pixel_auroc:.3f} vs {runner.val_pixel_auroc:.3f}"
                   if abs(pix) >= TIE else "a full tie")
            out.append(f"  {category}: {_label(best)} ties with {_label(runner)} on VAL img "
                       f"{best.val_image_auroc:.3f}, {how};")
            out.append(f"    {test}")
            continue
        out.append(f"  {category}: {_label(best)} wins over {_label(runner)}: VAL img {best.val_image_auroc:.3f} vs "
                   f"{runner.val_image_auroc:.3f} ({gap:+.3f}); {test}")
    return out
