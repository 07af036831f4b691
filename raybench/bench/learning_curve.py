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

from raybench.bench.curve_summary import (format_pairs, format_summary, paired_rows, plot, summarise,
                                          validation_chosen)
from raybench.bench.patchcore import load_bench_data, print_weights, subset
from raybench.config import field_types, from_dict
from raybench.data import load_dataset
from raybench.data.tensors import iterate_batches
from raybench.methods import get_method
from raybench.evaluation.metrics import image_auroc, pixel_auroc
from raybench.models.backbones import FeatureExtractor
from raybench.models.common import pick_device, set_seed
from raybench.models.common import gaussian_blur, upsample_maps
from raybench.models.patchcore import PatchCore, greedy_coreset, nearest_distances


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


def parse_recipe(text: str) -> tuple[str, dict]:
    """'paper' or 'paper,bn_stats=frozen,warmup_epochs=1': a recipe and fields on top of it."""
    from raybench.sweep.plan import parse_set
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
    from raybench.sweep.plan import parse_set
    if args.from_json:
        return main_from_json(args.from_json, args)
    if not args.data_root or not args.category:
        p.error("--data-root and --category are required (unless --from-json)")

    device = pick_device(args.device)
    category, train, test, masks, labels = load_bench_data(args)
    print(f"# {category.summary()} | image_size={args.image_size} device={device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}")
    print_weights(args)
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
    pairs = paired_rows(rows, labels, ratios, args.bootstrap)
    print("# paired differences of the seed-mean image AUROC, 95 % interval over the same test images (≈: holds 0)")
    print(format_pairs(pairs))
    chosen_summary, chosen_pairs = [], []
    if args.val_share > 0:
        chosen, held = validation_chosen(rows, labels, ratios, args.val_share)
        chosen_summary = summarise(chosen, labels[held], ratios, args.bootstrap)
        print(f"# epoch chosen on a validation part ({args.val_share:g} of the test images, stratified) among "
              f"0..E, as keep_best_epoch does; image AUROC on the other {int(held.sum())} images")
        print(format_summary(chosen_summary))
        chosen_pairs = paired_rows(chosen, labels[held], ratios, args.bootstrap)
        print("# paired differences, epoch chosen on validation (held-out images)")
        print(format_pairs(chosen_pairs))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "category": described, "rows": rows, "summary": summary,
                       "paired": pairs, "validation_chosen": chosen_summary, "validation_chosen_paired": chosen_pairs}, fh)
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
