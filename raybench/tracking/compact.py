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


def tie_line(row) -> str:
    """A row whose best validation image AUROC several runs share: how many, and what chose among them."""
    rule = "validation pixel AUROC" if row.tie_broken_by == "val_pixel_auroc" else "the first run to start"
    return (f"tie: {row.category} {_label(row)}: {row.val_tied} runs share the best VAL img; "
            f"broken by {row.tie_broken_by} ({rule})")


def _ci(row) -> str:
    low, high = getattr(row, "test_image_auroc_ci_low", math.nan), getattr(row, "test_image_auroc_ci_high", math.nan)
    return "-" if math.isnan(low) or math.isnan(high) else f"[{low:.3f},{high:.3f}]"


def format_compact(rows, winners: dict) -> str:
    """The leaderboard in <= 100 columns; `winners`: (dataset, category) -> the winning row. Per
    row: VAL (what ranked), TEST image AUROC with its 95 % interval (≈: tied with the category's best
    TEST), DEFAULT and ORACLE (docs/protocol.md), the final seeds' mean ± std; then the ties on
    validation and the rule that broke them, and one line per category on who wins and by how much."""
    notes = [f"note: {n}" for n in getattr(rows, "notes", [])]
    if not rows:
        return "\n".join(["(no finished runs)"] + notes)
    datasets = sorted({r.dataset for r in rows})
    head = (f"{'category':<13} {'method':<15} {'VAL':>6} {'VALpix':>6} | {'TEST':>6}  {'95% CI':<13} | "
            f"{'DEFLT':>6} {'ORACLE':>6} | {'final seeds':>11}")
    lines = [f"dataset {', '.join(datasets)}: ranked by VAL (validation image AUROC); TEST = chosen run on",
             "the untouched test split; DEFLT = default config on test; ORACLE = best test of any trial",
             head, "-" * len(head)]
    ties = []
    for r in rows:
        category = r.category if len(datasets) == 1 else f"{r.dataset}/{r.category}"
        mark = "*" if winners.get((r.dataset, r.category)) is r else " "
        final = f"{r.final_image_auroc_mean:.3f}±{r.final_image_auroc_std:.3f}" if r.final_n else "-"
        tied = "≈" if getattr(r, "tied_with_best", None) else " "
        lines.append(f"{category[:12]:<12}{mark} {_label(r)[:15]:<15} {_f(r.val_image_auroc, 6)} "
                     f"{_f(r.val_pixel_auroc, 6)} | {_f(r.image_auroc, 6)}{tied} {_ci(r):<13} | "
                     f"{_f(getattr(r, 'default_test_image_auroc', math.nan), 6)} "
                     f"{_f(getattr(r, 'oracle_test_image_auroc', math.nan), 6)} | {final:>11}")
        if getattr(r, "tie_broken_by", ""):
            ties.append(tie_line(r))
    settings = sorted({f"{r.budget or '?'} budget, weights {r.weights or '?'}, {r.image_size or '?'} px, "
                       f"val {getattr(r, 'val_mode', '') or '?'}" for r in rows})
    lines.append("* the category's winner (best VAL); ≈ tied with the category's best TEST (paired bootstrap)")
    lines.append("  " + "; ".join(settings))
    if not all(getattr(r, "complete", True) for r in rows):
        notes.append("the sweep did not complete")
    lines.extend(ties)
    lines.extend(winner_lines(rows, winners))
    lines.extend(notes)
    lines.append("(`raybench leaderboard --wide` adds run names, sizes, test counts; --format json for scripts)")
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
