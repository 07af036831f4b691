"""Learning curves of the self-supervised trunks: image and pixel AUROC of PatchCore on the trunk
after E epochs of `cutpaste` / `cutswap` fine-tuning (E = 0 is the untuned trunk, i.e. the
`patchcore` method), per recipe, at several coreset ratios, over seeds.

    python -m raybench.bench.learning_curve --data-root ../shared/data/kolektorsdd --category kolektorsdd \\
        --backbone tf_efficientnet_lite0 --weights imagenet --saliency-net tf_efficientnet_lite0 \\
        --image-size 96 --train-limit 96 --test-limit 120 --epochs 0 2 4 8 --seeds 0 1 2 \\
        --methods cutpaste cutswap --recipes preserve paper --coreset-ratios 0.01 0.001 \\
        --json lc.json --figure lc.png

Each E > 0 is its own run scheduled for E epochs (cosine to zero at E, as a trial with `epochs=E`
trains), not a snapshot of a longer run. The epoch is never chosen here (`keep_best_epoch` off):
the whole test split is scored, and choosing on it would leak. One trunk is scored at every
coreset ratio (the training images are embedded once, a coreset drawn per ratio).

Printed per run: image / pixel AUROC per ratio, the trunk's feature drift (1 - mean cosine
similarity between the untuned and the fine-tuned trunk's PatchCore patch features on the training
images), final training accuracy and seconds. With `--bn-diagnostic`, the `paper` recipe's trunk is
scored a second time with the pretrained BatchNorm running statistics put back (nothing else
changed): if that recovers the AUROC, the statistics re-estimated on synthetic batches are the
cause. The summary gives mean ± std over seeds and, for image AUROC, a bootstrap 95 % interval
over test images of the seed mean (`--bootstrap`, resamples of the test images, stratified).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raybench.bench.patchcore import subset
from raybench.config import field_types, from_dict
from raybench.data import load_dataset
from raybench.data.tensors import iterate_batches, load_images, load_masks
from raybench.methods import get_method
from raybench.metrics import image_auroc, pixel_auroc
from raybench.models.backbones import FeatureExtractor
from raybench.models.common import pick_device, set_seed
from raybench.models.common import gaussian_blur, upsample_maps
from raybench.models.patchcore import PatchCore, greedy_coreset, nearest_distances
from raybench.models.weights import describe as describe_weights


def make_config(method: str, values: dict):
    spec = get_method(method)
    fields = field_types(spec.config_cls)
    return from_dict(spec.config_cls, {k: v for k, v in values.items() if k in fields}, method=method)


@torch.no_grad()
def embed_all(model: PatchCore, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(b) for b in iterate_batches(images, batch_size, device)])  # (N, h, w, D)


@torch.no_grad()
def score_ratios(extractor, config, train, test, labels, masks, ratios, device) -> tuple[dict, torch.Tensor]:
    """{ratio: {image_auroc, pixel_auroc, scores}} for one trunk; also the train embeddings.
    Train and test are embedded once; each ratio draws its coreset and scores as PatchCore.forward
    does (nearest bank distance per patch, image score = max, maps upsampled and smoothed)."""
    model = PatchCore(extractor, config.image_size, config.patch_size, config.sigma).to(device)
    train_emb = embed_all(model, train, config.batch_size, device)
    test_emb = embed_all(model, test, config.batch_size, device)
    flat = train_emb.flatten(0, 2)
    n, h, w, d = test_emb.shape
    out = {}
    for ratio in ratios:
        picks = greedy_coreset(flat, max(1, int(round(ratio * flat.shape[0]))), config.projection_dim, config.seed)
        patch = nearest_distances(test_emb.reshape(-1, d), flat[picks].contiguous()).view(n, h, w)
        scores = patch.flatten(1).max(dim=1).values.cpu().numpy()
        maps = gaussian_blur(upsample_maps(patch, config.image_size), config.sigma).cpu().numpy()
        out[ratio] = {"image_auroc": image_auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
                      "scores": scores.tolist()}
    return out, train_emb


def drift(reference: torch.Tensor, tuned: torch.Tensor) -> float:
    """1 - mean cosine similarity of matching patch features (same image, same position)."""
    return float(1 - F.cosine_similarity(reference.flatten(0, 2), tuned.flatten(0, 2), dim=1).mean())


def restore_bn_stats(extractor: FeatureExtractor, pretrained: FeatureExtractor) -> int:
    """Put the pretrained BatchNorm running statistics back into a fine-tuned extractor."""
    src = dict(pretrained.model.named_modules())
    n = 0
    for name, module in extractor.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(src[name].running_mean)
            module.running_var.copy_(src[name].running_var)
            n += 1
    return n


def bootstrap_interval(labels: np.ndarray, score_sets: list[np.ndarray], n: int, seed: int = 0):
    """95 % interval of the seed-mean image AUROC over stratified resamples of the test images."""
    if n <= 0:
        return None
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    values = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(good, len(good)), rng.choice(bad, len(bad))])
        values.append(np.mean([roc_auc_score(labels[idx], s[idx]) for s in score_sets]))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


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
            ax.set_title(f"{title}, coreset {ratio:g}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_recipe(text: str) -> tuple[str, dict]:
    """'paper' or 'paper,bn_stats=frozen,warmup_epochs=1': a recipe and fields on top of it."""
    from raybench.cli import parse_set
    name, *pairs = text.split(",")
    return name, parse_set(pairs)


def fit_and_score(method, config, category, wanted, train, test, labels, masks, ratios, device, reference,
                  pretrained=None) -> list[dict]:
    """Fit once; score the trunk after each epoch in `wanted` (snapshots through the epoch hook)."""
    spec = get_method(method)
    snapshots: dict[int, object] = {}

    def on_epoch(epoch, scorer, *_):
        if epoch + 1 in wanted and epoch + 1 != config.epochs:
            snapshots[epoch + 1] = scorer.extractor

    start = time.perf_counter()
    fit = spec.fit(config, category, device, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    snapshots[config.epochs] = fit.scorer.extractor
    history = {h["epoch"] + 1: h for h in fit.info["history"]}
    rows = []
    for epochs, extractor in sorted(snapshots.items()):
        results, tuned = score_ratios(extractor, config, train, test, labels, masks, ratios, device)
        row = {"method": method, "epochs": epochs, "schedule_epochs": config.epochs,
               "results": {str(r): v for r, v in results.items()}, "drift": drift(reference, tuned),
               "fit_seconds": seconds, "train_accuracy": history[epochs]["accuracy"]}
        if pretrained is not None:
            restore_bn_stats(extractor, pretrained)
            restored, _ = score_ratios(extractor, config, train, test, labels, masks, ratios, device)
            row["bn_restored"] = {str(r): v for r, v in restored.items()}
        rows.append(row)
    return rows


def describe_row(row: dict) -> str:
    text = (f"epochs={row['epochs']}/{row['schedule_epochs']} drift={row['drift']:.3f} "
            f"acc={row['train_accuracy']:.2f} fit={row['fit_seconds']:.0f}s " + "  ".join(
                f"[{r}] img={v['image_auroc']:.3f} pix={v['pixel_auroc']:.3f}" for r, v in row["results"].items()))
    if "bn_restored" in row:
        text += "  BN restored: " + "  ".join(
            f"[{r}] img={v['image_auroc']:.3f} pix={v['pixel_auroc']:.3f}" for r, v in row["bn_restored"].items())
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root")
    p.add_argument("--dataset", default="folder")
    p.add_argument("--category")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--saliency-net", default="vgg16")
    p.add_argument("--saliency-weights", default="imagenet")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--epochs", type=int, nargs="+", default=[0, 2, 4, 8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["cutpaste", "cutswap"])
    p.add_argument("--recipes", nargs="+", default=["preserve", "paper"])
    p.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.001])
    p.add_argument("--batch-images", type=int, default=32)
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="a config field of the trained methods, e.g. trunk_lr_scale=0.3 (repeatable)")
    p.add_argument("--snapshots", action="store_true",
                   help="one run of max(--epochs) per seed, scored after each listed epoch (cosine to the last), "
                        "instead of one run per epoch count (each scheduled to its own end)")
    p.add_argument("--bn-diagnostic", action="store_true",
                   help="also score the paper recipe's trunks with the pretrained BatchNorm statistics put back")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the image AUROC interval (0: none)")
    p.add_argument("--val-share", type=float, default=0.5,
                   help="also report the epoch keep_best_epoch would choose: on this share of the test images, "
                        "scored on the rest (0: off)")
    p.add_argument("--from-json", default=None, help="re-summarise this run's JSON (no fitting)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    from raybench.cli import parse_set
    if args.from_json:
        return main_from_json(args.from_json, args)
    if not args.data_root or not args.category:
        p.error("--data-root and --category are required (unless --from-json)")

    device = pick_device(args.device)
    (full,) = load_dataset(args.dataset, args.data_root, [args.category])
    category = subset(full, args.train_limit, args.test_limit)
    print(f"# {category.summary()} | image_size={args.image_size} device={device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print(f"# weights: {describe_weights(args.backbone, args.weights)}")
    if "cutswap" in args.methods:
        print(f"# saliency: {describe_weights(args.saliency_net, args.saliency_weights)}")
    train = load_images(category.train, args.image_size)
    test = load_images(category.test, args.image_size)
    masks = load_masks(category.test, args.image_size)
    labels = np.array([s.label for s in category.test])
    base = {"image_size": args.image_size, "weights": args.weights, "backbone": args.backbone,
            "layers": ["layer2", "layer3"], "saliency_net": args.saliency_net,
            "saliency_weights": args.saliency_weights, "batch_images": args.batch_images,
            "coreset_ratio": args.coreset_ratios[0], "keep_best_epoch": False, **parse_set(args.overrides)}
    ratios = list(args.coreset_ratios)
    epoch_list = sorted(e for e in set(args.epochs) if e > 0)
    rows, started = [], time.perf_counter()
    for seed in args.seeds:
        set_seed(seed)
        pc_config = make_config("patchcore", {**base, "seed": seed})
        pretrained = FeatureExtractor(args.backbone, pc_config.layers, args.weights).to(device)
        results, reference = score_ratios(pretrained, pc_config, train, test, labels, masks, ratios, device)
        rows.append({"method": "patchcore", "recipe": "-", "epochs": 0, "seed": seed,
                     "results": {str(r): v for r, v in results.items()}, "drift": 0.0})
        print(f"seed={seed} patchcore epochs=0 " + "  ".join(
            f"[{r:g}] img={v['image_auroc']:.3f} pix={v['pixel_auroc']:.3f}" for r, v in results.items()), flush=True)
        for method in args.methods:
            for recipe in args.recipes:
                name, extra = parse_recipe(recipe)
                values = {**base, "seed": seed, "recipe": name, **extra}
                runs = [max(epoch_list)] if args.snapshots else epoch_list
                for epochs in runs:
                    wanted = set(epoch_list) if args.snapshots else {epochs}
                    for row in fit_and_score(method, make_config(method, {**values, "epochs": epochs}), category,
                                             wanted, train, test, labels, masks, ratios, device, reference,
                                             pretrained if args.bn_diagnostic and name == "paper" else None):
                        row.update(recipe=recipe, seed=seed)
                        rows.append(row)
                        print(f"seed={seed} {method} {recipe} " + describe_row(row), flush=True)
                    if args.json:  # so far (a long run cut short keeps its finished rows)
                        with open(args.json, "w") as fh:
                            json.dump({"args": vars(args), "category": category.summary(), "rows": rows}, fh)
    report(rows, labels, ratios, args, category.summary(), time.perf_counter() - started)
    return 0


def report(rows, labels, ratios, args, described: str, seconds: float | None = None) -> None:
    """Tables (mean ± std over seeds, bootstrap interval), the JSON and the figures."""
    summary = summarise(rows, labels, ratios, args.bootstrap)
    if seconds is not None:
        print(f"# {len(rows)} runs in {seconds:.0f} s")
    print(format_summary(summary))
    chosen_summary = []
    if args.val_share > 0:
        chosen, held = validation_chosen(rows, labels, ratios, args.val_share)
        chosen_summary = summarise(chosen, labels[held], ratios, args.bootstrap)
        print(f"# epoch chosen on a validation part ({args.val_share:g} of the test images, stratified) among "
              f"0..E, as keep_best_epoch does; image AUROC on the other {int(held.sum())} images")
        print(format_summary(chosen_summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "category": described, "rows": rows, "summary": summary,
                       "validation_chosen": chosen_summary}, fh)
    if args.figure:
        plot(summary, ratios, args.category, args.figure)
        print(f"# figure: {args.figure}")
        if chosen_summary:
            stem = args.figure.rsplit(".", 1)
            path = f"{stem[0]}_chosen.{stem[1] if len(stem) > 1 else 'png'}"
            plot(chosen_summary, ratios, f"{args.category} (epoch chosen on validation)", path, ("image_auroc",))
            print(f"# figure: {path}")


def main_from_json(path: str, args) -> int:
    """Re-summarise a finished (or cut-short) run's JSON without fitting anything again."""
    with open(path) as fh:
        doc = json.load(fh)
    rows = doc["rows"]
    saved = doc["args"]
    ratios = saved["coreset_ratios"]
    (full,) = load_dataset(saved["dataset"], saved["data_root"], [saved["category"]])
    category = subset(full, saved["train_limit"], saved["test_limit"])
    labels = np.array([s.label for s in category.test])
    args.category, args.coreset_ratios = saved["category"], ratios
    report(rows, labels, ratios, args, category.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
