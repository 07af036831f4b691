"""Benchmark: raybench's PatchCore vs anomalib's Patchcore (same --backbone weights, layers 2 + 3,
image size, coreset ratio, device), plus the full fit time and AUROCs of the trained methods
(`cutswap`, `cutpaste`) and the untuned `patchcore` method, per seed.

    python -m raybench.bench.patchcore --data-root /work/shared/data/magnetic_tile --category magnetic_tile \\
        --image-size 128 --coreset-ratio 0.01 --weights random --seeds 0 1 2 --train-limit 200 --test-limit 120

Printed per seed: fit seconds (embedding + coreset), coreset seconds, inference images/s, image and
pixel AUROC (pixel AUROC at --image-size). The peer runs only where `import anomalib` works (it is
not a raybench dependency: install it into a separate venv together with raybench); otherwise the
script says it skipped the peer and why.

Fairness: both PatchCores embed the same preloaded float tensors with the same backbone weights
(anomalib's extractor is loaded with raybench's backbone state dict, whatever --weights says, and fed
the same normalisation: the backbone's own pretrained config) and
are scored with raybench.evaluation.metrics. Differences that remain are the methods' own: anomalib scores an
image with the nearest-neighbour reweighting of the paper (num_neighbors=9), raybench with the plain
maximum patch distance; both smooth maps with sigma 4.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

from raybench.sweep.plan import parse_set
from raybench.config import field_types, from_dict
from raybench.data import load_dataset
from raybench.data.tensors import iterate_batches, load_images, load_masks
from raybench.evaluation.scoring import evaluate_scorer, score_images
from raybench.methods import get_method
from raybench.evaluation.metrics import evaluate_predictions
from raybench.models.weights import describe as describe_weights
from raybench.models.common import pick_device, set_seed, synchronize


def evenly_spaced(items: list, limit: int | None) -> list:
    if not limit or limit >= len(items):
        return list(items)
    return [items[int(i * len(items) / limit)] for i in range(limit)]


def subset(category, train_limit, test_limit):
    good = [s for s in category.test if s.label == 0]
    bad = [s for s in category.test if s.label == 1]
    if test_limit:
        good, bad = evenly_spaced(good, test_limit // 2), evenly_spaced(bad, test_limit - test_limit // 2)
    return dataclasses.replace(category, train=evenly_spaced(category.train, train_limit), test=good + bad)


def load_bench_data(args):
    """The benchmark's category (limited to --train-limit / --test-limit) as tensors at --image-size:
    (category, train images, test images, test masks, test labels)."""
    (full,) = load_dataset(args.dataset, args.data_root, [args.category])
    category = subset(full, args.train_limit, args.test_limit)
    return (category, load_images(category.train, args.image_size), load_images(category.test, args.image_size),
            load_masks(category.test, args.image_size), np.array([s.label for s in category.test]))


def print_weights(args) -> None:
    """Where the backbone's (and cutswap's saliency net's) weights come from, before any figure."""
    print(f"# weights: {describe_weights(args.backbone, args.weights)}")
    if "cutswap" in args.methods:
        print(f"# saliency: {describe_weights(args.saliency_net, args.saliency_weights)}")


def run_raybench_patchcore(config, train, test, labels, masks, device, batch_size):
    spec = get_method("patchcore")
    model = spec.build(config).to(device)
    synchronize(device)
    start = time.perf_counter()
    info = model.fit(iterate_batches(train, batch_size, device), config.coreset_ratio, config.projection_dim,
                     config.seed)
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    # coreset alone, re-run on the same embeddings for the split of the fit time
    with torch.no_grad():
        embeddings = torch.cat([model.embed(b).flatten(0, 2) for b in iterate_batches(train, batch_size, device)])
    from raybench.models.patchcore import greedy_coreset
    synchronize(device)
    start = time.perf_counter()
    greedy_coreset(embeddings, info["bank_size"], config.projection_dim, config.seed)
    synchronize(device)
    coreset_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores, maps = score_images(model, test, batch_size, device)
    synchronize(device)
    infer_seconds = time.perf_counter() - start
    metrics = evaluate_predictions(labels, scores, masks, maps, full=False)
    return model, {"fit_s": fit_seconds, "coreset_s": coreset_seconds, "infer_img_s": len(test) / infer_seconds,
                   "n_patches": info["n_patches"], "bank": info["bank_size"], **metrics}


def load_anomalib():
    try:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except Exception as err:  # not installed, or installed against another torch
        return None, f"{type(err).__name__}: {err}"
    return PatchcoreModel, ""


def run_anomalib_patchcore(peer_cls, raybench_model, config, train, test, labels, masks, device, batch_size):
    torch.manual_seed(config.seed)
    # anomalib names timm stages by module (ResNet: layer2; EfficientNet: blocks.2): the same stages
    layers = list(raybench_model.extractor.model.feature_info.module_name())
    peer = peer_cls(layers=layers, backbone=config.backbone, pre_trained=False).to(device)
    # same backbone weights and input normalisation as raybench's model, so only the PatchCore
    # implementations differ
    peer.feature_extractor.feature_extractor.load_state_dict(raybench_model.extractor.model.state_dict(), strict=True)
    mean, std = raybench_model.extractor.normalise.mean, raybench_model.extractor.normalise.std
    synchronize(device)
    start = time.perf_counter()
    peer.train()
    with torch.no_grad():
        for batch in iterate_batches(train, batch_size, device):
            peer((batch - mean) / std)
    embed_seconds = time.perf_counter() - start
    peer.subsample_embedding(config.coreset_ratio)
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    peer.eval()
    scores, maps = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for batch in iterate_batches(test, batch_size, device):
            out = peer((batch - mean) / std)
            scores.append(out.pred_score.float().flatten().cpu())
            maps.append(out.anomaly_map.float()[:, 0].cpu())
    synchronize(device)
    infer_seconds = time.perf_counter() - start
    metrics = evaluate_predictions(labels, torch.cat(scores).numpy(), masks, torch.cat(maps).numpy(),
                                   full=False)
    return {"fit_s": fit_seconds, "coreset_s": fit_seconds - embed_seconds,
            "infer_img_s": len(test) / infer_seconds, "bank": int(peer.memory_bank.shape[0]), **metrics}


def run_method(name, overrides, category, device):
    spec = get_method(name)
    fields = field_types(spec.config_cls)
    config = from_dict(spec.config_cls, {k: v for k, v in overrides.items() if k in fields}, method=name)
    start = time.perf_counter()
    result = spec.fit(config, category, device)
    synchronize(device)
    fit_seconds = time.perf_counter() - start
    metrics = evaluate_scorer(result.scorer, category, device, result.excluded_test, full=False)
    info = result.info
    return {"fit_s": fit_seconds, "train_s": info.get("train_seconds", 0.0),
            "saliency_s": info.get("saliency_seconds", 0.0), "bank_s": info.get("memory_bank_seconds", 0.0),
            "infer_img_s": metrics["inference_images_per_second"],
            "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"]}


def coreset_bench(n_patches: int, dim: int, ratio: float, device, peer_limit: int) -> None:
    """Greedy coreset alone on random features: raybench's vs anomalib's KCenterGreedy."""
    from raybench.models.patchcore import greedy_coreset
    features = torch.randn(n_patches, dim, generator=torch.Generator().manual_seed(0)).to(device)
    n_select = max(1, int(round(ratio * n_patches)))
    greedy_coreset(features[:1000], 10)  # warm-up (kernels, allocator)
    synchronize(device)
    start = time.perf_counter()
    picks = greedy_coreset(features, n_select)
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"coreset raybench   patches={n_patches} dim={dim} picks={n_select} seconds={seconds:.3f} "
          f"ms_per_pick={1e3 * seconds / n_select:.3f} distinct={len(set(picks.tolist())) == n_select}")
    try:
        from anomalib.models.components.sampling import KCenterGreedy
    except Exception as err:
        print(f"coreset anomalib   skipped ({type(err).__name__}: {err})")
        return
    n_peer = min(n_patches, peer_limit)
    sampler = KCenterGreedy(embedding=features[:n_peer], sampling_ratio=ratio)
    start = time.perf_counter()
    sampler.sample_coreset()
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"coreset anomalib   patches={n_peer} dim={dim} picks={sampler.coreset_size} seconds={seconds:.3f} "
          f"ms_per_pick={1e3 * seconds / sampler.coreset_size:.3f}")


def fmt(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def summarise(name: str, rows: list[dict]) -> str:
    parts = []
    for key in rows[0]:
        if isinstance(rows[0][key], float):
            vals = [r[key] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            parts.append(f"{key}={statistics.mean(vals):.4g}±{sd:.2g}")
    return f"{name:<20} mean over {len(rows)} seeds: " + "  ".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="folder")
    p.add_argument("--category", required=True)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--weights", default="imagenet", help="imagenet | random | path (same for every variant)")
    p.add_argument("--backbone", default="resnet18", help="e.g. tf_efficientnet_lite0 (ImageNet weights with no hub)")
    p.add_argument("--saliency-net", default="vgg16", help="cutswap's LayerCAM net (tf_efficientnet_lite0: no hub)")
    p.add_argument("--saliency-weights", default="imagenet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-limit", type=int, default=None, help="evenly spaced subset of the training images")
    p.add_argument("--test-limit", type=int, default=None, help="evenly spaced, half normal, half anomalous")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--methods", nargs="*", default=["cutswap"],
                   help="raybench methods to fit end to end as well (cutswap, cutpaste, patchcore)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs of cutswap / cutpaste")
    p.add_argument("--batch-images", type=int, default=32, help="images per step of cutswap / cutpaste")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="a config field of the trained methods (--methods), e.g. lr=0.003 (repeatable)")
    p.add_argument("--json", default=None, help="write every row to this file")
    p.add_argument("--coreset-patches", type=int, default=0,
                   help="also time the coreset alone on this many random 384-d patches (e.g. 250000)")
    p.add_argument("--coreset-peer-limit", type=int, default=50000,
                   help="anomalib's coreset runs on at most this many of them (it is slow on the CPU)")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    if args.coreset_patches:
        coreset_bench(args.coreset_patches, 384, args.coreset_ratio, device, args.coreset_peer_limit)
    category, train, test, masks, labels = load_bench_data(args)
    print(f"# {category.summary()} | image_size={args.image_size} coreset_ratio={args.coreset_ratio} "
          f"weights={args.weights} device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print_weights(args)
    peer_cls, why = load_anomalib()
    if peer_cls is None:
        print(f"anomalib Patchcore: skipped ({why})")
    else:
        import anomalib
        print(f"# peer: anomalib {anomalib.__version__} PatchcoreModel (torch model, no Lightning loop)")

    results: dict[str, list[dict]] = {}
    base = {"image_size": args.image_size, "coreset_ratio": args.coreset_ratio, "weights": args.weights,
            "backbone": args.backbone, "layers": ["layer2", "layer3"], "batch_size": args.batch_size,
            "saliency_net": args.saliency_net, "saliency_weights": args.saliency_weights,
            # the whole test split is scored here: choosing the epoch on it would leak
            "keep_best_epoch": False}
    for seed in args.seeds:
        set_seed(seed)
        pc_fields = field_types(get_method("patchcore").config_cls)
        config = from_dict(get_method("patchcore").config_cls, {k: v for k, v in {**base, "seed": seed}.items()
                                                                 if k in pc_fields})
        model, row = run_raybench_patchcore(config, train, test, labels, masks, device, args.batch_size)
        results.setdefault("raybench-patchcore", []).append(row)
        print(f"seed={seed} raybench-patchcore  {fmt(row)}", flush=True)
        if peer_cls is not None:
            row = run_anomalib_patchcore(peer_cls, model, config, train, test, labels, masks, device, args.batch_size)
            results.setdefault("anomalib-patchcore", []).append(row)
            print(f"seed={seed} anomalib-patchcore  {fmt(row)}", flush=True)
        for name in args.methods:
            overrides = {**base, "seed": seed, "epochs": args.epochs, "batch_images": args.batch_images,
                         **parse_set(args.overrides)}
            row = run_method(name, overrides, category, device)
            results.setdefault(name, []).append(row)
            print(f"seed={seed} {name:<18} {fmt(row)}", flush=True)
    for name, rows in results.items():
        print(summarise(name, rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
