"""Summaries of a learning-curve run (raybench.bench.learning_curve): mean ± std over seeds, bootstrap
intervals over test images, the epoch `keep_best_epoch` would choose on a validation part, the
Markdown table and the figure."""
from __future__ import annotations

import numpy as np

from raybench.evaluation.metrics import image_auroc


def auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of `scores` (B, n) against the rows of `labels` (B, n): the Mann-Whitney
    statistic with average ranks for ties (what sklearn's roc_auc_score gives), vectorised."""
    from scipy.stats import rankdata
    ranks = rankdata(scores, axis=1)
    pos = labels.sum(axis=1)
    neg = labels.shape[1] - pos
    return ((ranks * labels).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def bootstrap_interval(labels: np.ndarray, score_sets: list[np.ndarray], n: int, seed: int = 0):
    """95 % interval of the seed-mean image AUROC over stratified resamples of the test images."""
    if n <= 0:
        return None
    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    idx = np.concatenate([rng.choice(good, (n, len(good))), rng.choice(bad, (n, len(bad)))], axis=1)
    values = np.mean([auroc_rows(labels[idx], np.asarray(s)[idx]) for s in score_sets], axis=0)
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired_interval(labels: np.ndarray, sets_a: list[np.ndarray], sets_b: list[np.ndarray], n: int,
                    seed: int = 0) -> tuple[float, float | None, float | None]:
    """(difference, low, high): seed-mean image AUROC of `a` minus that of `b` on the same test images,
    with a 95 % interval from resampling the images (stratified) once for both, so what the two share
    (the same hard images) cancels. An interval holding 0 means the data cannot tell them apart."""
    labels = np.asarray(labels)
    a = np.array([auroc_rows(labels[None], np.asarray(s)[None])[0] for s in sets_a]).mean()
    b = np.array([auroc_rows(labels[None], np.asarray(s)[None])[0] for s in sets_b]).mean()
    if n <= 0:
        return float(a - b), None, None
    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    idx = np.concatenate([rng.choice(good, (n, len(good))), rng.choice(bad, (n, len(bad)))], axis=1)

    def seed_mean(sets):
        return np.mean([auroc_rows(labels[idx], np.asarray(s)[idx]) for s in sets], axis=0)

    diffs = seed_mean(sets_a) - seed_mean(sets_b)
    return float(a - b), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def mean_std(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def summarise(rows: list[dict], labels: np.ndarray, ratios, bootstrap: int) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["recipe"], row["epochs"]), []).append(row)
    out = []
    for (method, recipe, epochs), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        for ratio in ratios:
            key = str(ratio)
            img = mean_std([m["results"][key]["image_auroc"] for m in members])
            pix = mean_std([m["results"][key]["pixel_auroc"] for m in members])
            ci = bootstrap_interval(labels, [np.array(m["results"][key]["scores"]) for m in members], bootstrap)
            entry = {"method": method, "recipe": recipe, "epochs": epochs, "coreset_ratio": ratio,
                     "n_seeds": len(members), "image_auroc": img, "pixel_auroc": pix, "image_auroc_ci95": ci}
            if "bn_restored" in members[0]:
                entry["bn_restored_image_auroc"] = mean_std([m["bn_restored"][key]["image_auroc"] for m in members])
                entry["bn_restored_pixel_auroc"] = mean_std([m["bn_restored"][key]["pixel_auroc"] for m in members])
            if members[0].get("drift") is not None:
                entry["drift"] = mean_std([m["drift"] for m in members])
            if "chosen_epoch" in members[0]["results"][key]:
                entry["chosen_epochs"] = [m["results"][key]["chosen_epoch"] for m in members]
            out.append(entry)
    return out


def validation_chosen(rows: list[dict], labels: np.ndarray, ratios, val_share: float,
                      seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """What `keep_best_epoch` would have done, from the stored per-image scores: split the test images
    (stratified, seeded) into a validation part and a held-out part; for each run and epoch budget E
    pick, among the trunks after 0..E epochs, the one with the best validation image AUROC (the
    earlier on a tie) and report its held-out image AUROC, beside the untuned trunk's on the same part.
    Returns rows like `summarise`'s input with recipe '<recipe>+best' (image AUROC only)."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        val[rng.choice(idx, int(round(val_share * len(idx))), replace=False)] = True
    held = ~val
    out = []
    base = {r["seed"]: r for r in rows if r["method"] == "patchcore"}
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] != "patchcore":
            runs.setdefault((r["method"], r["recipe"], r["seed"]), []).append(r)
    for (method, recipe, seed), members in runs.items():
        members = sorted(members, key=lambda r: r["epochs"])
        for budget in [m["epochs"] for m in members]:
            results = {}
            for ratio in ratios:
                key = str(ratio)
                candidates = [(0, np.array(base[seed]["results"][key]["scores"]))] + [
                    (m["epochs"], np.array(m["results"][key]["scores"])) for m in members if m["epochs"] <= budget]
                scored = [(image_auroc(labels[val], s[val]), -e, e, s) for e, s in candidates]
                _, _, chosen, scores = max(scored, key=lambda t: (t[0], t[1]))
                results[key] = {"image_auroc": image_auroc(labels[held], scores[held]), "pixel_auroc": float("nan"),
                                "scores": scores[held].tolist(), "chosen_epoch": chosen}
            out.append({"method": method, "recipe": f"{recipe}+best", "epochs": budget, "seed": seed,
                        "results": results})
    for seed, r in base.items():
        out.append({"method": "patchcore", "recipe": "-", "epochs": 0, "seed": seed, "held_out": True,
                    "results": {str(q): {"image_auroc": image_auroc(labels[held], np.array(v["scores"])[held]),
                                         "pixel_auroc": float("nan"), "scores": np.array(v["scores"])[held].tolist()}
                                for q, v in r["results"].items()}})
    return out, held


def paired_rows(rows: list[dict], labels: np.ndarray, ratios, n: int) -> list[dict]:
    """Per coreset ratio and epoch count (and recipe): cutswap - cutpaste, and each fine-tuned trunk
    minus the untuned one (`patchcore`, epoch 0), as `paired_interval`s over the same seeds' scores."""
    def scores(method, recipe, epochs, key) -> dict[int, np.ndarray]:
        return {r["seed"]: np.array(r["results"][key]["scores"]) for r in rows
                if r["method"] == method and r["recipe"] == recipe and r["epochs"] == epochs}

    out = []
    tuned = sorted({(r["recipe"], r["epochs"]) for r in rows if r["method"] != "patchcore"})
    for ratio in ratios:
        key = str(ratio)
        base = scores("patchcore", "-", 0, key)
        for recipe, epochs in tuned:
            swap, paste = scores("cutswap", recipe, epochs, key), scores("cutpaste", recipe, epochs, key)
            entry = {"coreset_ratio": ratio, "recipe": recipe, "epochs": epochs}
            for name, a, b in (("cutswap-cutpaste", swap, paste), ("cutswap-untuned", swap, base),
                               ("cutpaste-untuned", paste, base)):
                seeds = sorted(set(a) & set(b))
                if seeds:
                    entry[name] = paired_interval(labels, [a[s] for s in seeds], [b[s] for s in seeds], n)
            out.append(entry)
    return out


def format_pairs(pairs: list[dict]) -> str:
    """Markdown: each paired difference with its interval; `≈` where the interval holds 0."""
    names = ("cutswap-cutpaste", "cutswap-untuned", "cutpaste-untuned")
    lines = ["| coreset | recipe | epochs | " + " | ".join(n.replace("-", " − ") for n in names) + " |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(value):
        if value is None:
            return ""
        diff, low, high = value
        if low is None:
            return f"{diff:+.3f}"
        return f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]{' ≈' if low <= 0 <= high else ''}"

    for e in pairs:
        lines.append(f"| {e['coreset_ratio']:g} | {e['recipe']} | {e['epochs']} | "
                     + " | ".join(cell(e.get(n)) for n in names) + " |")
    return "\n".join(lines)


def format_summary(summary: list[dict]) -> str:
    lines = ["| method | recipe | epochs | coreset | image AUROC | 95% CI | pixel AUROC | drift | BN restored (img / pix) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in summary:
        ci = e["image_auroc_ci95"]
        bn = (f"{e['bn_restored_image_auroc'][0]:.3f} / {e['bn_restored_pixel_auroc'][0]:.3f}"
              if "bn_restored_image_auroc" in e else "")
        dr = f"{e['drift'][0]:.3f}" if "drift" in e else ""
        if "chosen_epochs" in e:
            dr = "chosen " + ",".join(str(c) for c in e["chosen_epochs"])
        pix = "-" if e["pixel_auroc"][0] != e["pixel_auroc"][0] else f"{e['pixel_auroc'][0]:.3f} ± {e['pixel_auroc'][1]:.3f}"
        lines.append(f"| {e['method']} | {e['recipe']} | {e['epochs']} | {e['coreset_ratio']:g} | "
                     f"{e['image_auroc'][0]:.3f} ± {e['image_auroc'][1]:.3f} | "
                     f"{'' if ci is None else f'{ci[0]:.3f}-{ci[1]:.3f}'} | "
                     f"{pix} | {dr} | {bn} |")
    return "\n".join(lines)


def plot(summary: list[dict], ratios, title: str, path: str, metrics=("image_auroc", "pixel_auroc")) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(metrics), len(ratios), figsize=(5 * len(ratios), 3.5 * len(metrics)), squeeze=False)
    colours = {"cutpaste": "tab:orange", "cutswap": "tab:blue"}
    styles = {"preserve": "-", "paper": "--"}
    base = {r: next(e for e in summary if e["epochs"] == 0 and e["coreset_ratio"] == r) for r in ratios}
    for col, ratio in enumerate(ratios):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            b = base[ratio][metric]
            ax.axhspan(b[0] - b[1], b[0] + b[1], color="grey", alpha=0.2)
            ax.axhline(b[0], color="grey", lw=1, label="untuned trunk (patchcore) ± std")
            recipes = sorted({e["recipe"] for e in summary if e["method"] != "patchcore"})
            for method in ("cutpaste", "cutswap"):
                for recipe in recipes:
                    pts = sorted((e["epochs"], e[metric]) for e in summary
                                 if e["method"] == method and e["recipe"] == recipe and e["coreset_ratio"] == ratio)
                    if not pts:
                        continue
                    pts = [(0, b)] + [p for p in pts if p[0] > 0]
                    xs = [p[0] for p in pts]
                    ax.errorbar(xs, [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], capsize=3,
                                color=colours.get(method), ls=styles.get(recipe, ":"), marker="o", ms=3,
                                label=f"{method} ({recipe})")
            ticks = sorted({e["epochs"] for e in summary})
            ax.set_xscale("symlog", base=2, linthresh=1)
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(t) for t in ticks])
            ax.set_xlabel("fine-tuning epochs")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(f"{title}, coreset {ratio:g}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
