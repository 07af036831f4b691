"""Benchmark: plain reverse distillation (`rd`) vs the Siamese U-Net (real / synthetic anomalies),
and anomalib's ReverseDistillation when `import anomalib` works, with the same backbone, image
size, batch size and total epochs, on the same device. Prints training and inference images/s
and image / pixel AUROC (pixel AUROC at --image-size) per seed, then mean ± std per variant.

    python -m raybench.bench.siamese_unet --data-root ../shared/data/kolektorsdd --category kolektorsdd \\
        --backbone resnet18 --image-size 64 --epochs1 1 --epochs2 1 --weights random --seeds 0 1 2

`rd` and anomalib train for epochs1 + epochs2 epochs, the Siamese U-Net for epochs1 (stage 1) +
epochs2 (stage 2): the same number of passes over the normal training images.
Every variant of a seed is scored on the same test images: those the real-anomaly draw of that
seed leaves (the `real` variant trains on the drawn ones), so the AUROCs are comparable.
Training images/s counts images through the network (a stage-1 triplet is 3, a stage-2 pair 2);
`normal/s` counts training images consumed.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
from torch import nn

from raybench.sweep.plan import parse_set
from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.evaluation.scoring import evaluate_scorer, relative_path
from raybench.methods import get_method
from raybench.methods.siamese_unet import draw_real_anomalies
from raybench.models.backbones import FeatureExtractor
from raybench.models.weights import describe as describe_weights
from raybench.models.common import pick_device, set_seed, synchronize

# ablations of the real-anomaly variant: which part helps or hurts at image level
ABLATIONS = {"siamese-real-no-stage2": {"stage2": False}, "siamese-real-no-stage1": {"stage1": False},
             "siamese-real-no-cpam": {"cpam": False}, "siamese-real-mean-s": {"deviation_scalar": "mean"}}
VARIANTS = ("rd", "siamese-real", "siamese-synthetic", "anomalib-rd", *ABLATIONS)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="folder")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--category", required=True)
    ap.add_argument("--backbone", default="wide_resnet50_2")
    ap.add_argument("--weights", default="imagenet", help="imagenet | random | path")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs1", type=int, default=10)
    ap.add_argument("--epochs2", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch")
    ap.add_argument("--max-train", type=int, default=None, help="train on a seeded subset of this many images")
    ap.add_argument("--n-anomalies", type=int, default=10)
    ap.add_argument("--small-model", action="store_true", help="1 bottleneck block, 1 block per decoder stage")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=["rd", "siamese-real", "siamese-synthetic", "anomalib-rd"],
                    choices=VARIANTS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config field for every raybench variant, e.g. lambda_con=0.1 (repeatable)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    args.overrides = parse_set(args.overrides)
    return args


def method_config(variant: str, args, seed: int):
    method = "rd" if variant == "rd" else "siamese-unet"
    spec = get_method(method)
    values = dict(seed=seed, image_size=args.image_size, weights=args.weights, backbone=args.backbone,
                  batch_size=args.batch_size, max_steps_per_epoch=args.max_steps, n_anomalies=args.n_anomalies)
    if args.small_model:
        values.update(bottleneck_blocks=1, decoder_blocks=1)
    values.update(args.overrides)  # strings: from_dict coerces and validates them
    if method == "rd":
        values.update(epochs1=args.epochs1 + args.epochs2, epochs2=0)
    else:
        values.update(epochs1=args.epochs1, epochs2=args.epochs2,
                      anomaly_source="synthetic" if variant == "siamese-synthetic" else "real",
                      **ABLATIONS.get(variant, {}))
    return spec, from_dict(spec.config_cls, values, method=method)


def common_exclusion(args, seed, category) -> list[str]:
    """The test images the `real` variant trains on for this seed: left out for every variant."""
    return [relative_path(s, category) for s in draw_real_anomalies(category, args.n_anomalies, seed)]


def run_method(variant, args, seed, category, device) -> dict:
    spec, config = method_config(variant, args, seed)
    result = spec.fit(config, category, device)
    excluded = common_exclusion(args, seed, category)
    assert set(result.excluded_test) <= set(excluded)
    metrics = evaluate_scorer(result.scorer, category, device, excluded, full=False)
    return {"train_img_s": result.info["train_images_per_second"],
            "normal_img_s": result.info["train_normal_images_per_second"],
            "train_s": result.info["train_seconds"], **metrics}


class _AnomalibScorer(nn.Module):
    """anomalib's ReverseDistillationModel behind raybench's scorer interface."""

    def __init__(self, model: nn.Module, image_size: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model, self.image_size = model, image_size
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, images):
        out = self.model((images - self.mean) / self.std)
        maps = getattr(out, "anomaly_map", out)  # a tensor (anomalib 1.x) or an InferenceBatch (2.x)
        maps = maps.reshape(len(images), *maps.shape[-2:]).float()
        return maps.flatten(1).amax(1), maps


def run_anomalib(args, seed, category, device) -> dict | None:
    try:
        from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    except ImportError as err:
        print(f"anomalib-rd: skipped (anomalib not importable: {err})")
        return None
    from raybench.data.tensors import load_images
    set_seed(seed)
    # the teacher exactly as raybench's variants get it (package, hub, file or random) and its
    # normalisation; anomalib alone only knows the hub, which would fail offline or differ
    teacher = FeatureExtractor(args.backbone, ["layer1", "layer2", "layer3"], args.weights)
    layers = list(teacher.model.feature_info.module_name())  # anomalib names stages by module
    try:
        model = ReverseDistillationModel(backbone=args.backbone, input_size=(args.image_size,) * 2,
                                         layers=layers, anomaly_map_mode="add", pre_trained=False).to(device)
    except Exception as err:  # anomalib's RD decoders exist for ResNets only
        print(f"anomalib-rd: skipped ({args.backbone}: {type(err).__name__}: {str(err)[:200]})")
        return None
    model.encoder.feature_extractor.load_state_dict(teacher.model.state_dict(), strict=True)
    scorer = _AnomalibScorer(model, args.image_size, teacher.normalise.mean, teacher.normalise.std).to(device)
    loss_fn = ReverseDistillationLoss()
    params = list(model.decoder.parameters()) + list(model.bottleneck.parameters())
    # as anomalib 2.x ReverseDistillation.configure_optimizers: betas (0.5, 0.99), not RD4AD's 0.999
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))
    train = load_images(category.train, args.image_size).to(device)
    generator = torch.Generator().manual_seed(seed)
    seen, seconds = 0, 0.0
    for _ in range(args.epochs1 + args.epochs2):
        model.train()
        perm = torch.randperm(len(train), generator=generator)
        steps = max(1, len(perm) // args.batch_size)
        if args.max_steps:
            steps = min(steps, args.max_steps)
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            batch = train[perm[step * args.batch_size:(step + 1) * args.batch_size].to(device)].float()
            encoder, decoder = model((batch - scorer.mean) / scorer.std)
            loss = loss_fn(encoder, decoder)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(batch)
        synchronize(device)
        seconds += time.perf_counter() - start
    metrics = evaluate_scorer(scorer.eval(), category, device, common_exclusion(args, seed, category),
                              full=False)
    return {"train_img_s": seen / seconds, "normal_img_s": seen / seconds, "train_s": seconds, **metrics}


def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    (category,) = load_dataset(args.dataset, args.data_root, [args.category])
    if args.max_train and args.max_train < len(category.train):
        keep = sorted(np.random.default_rng(0).choice(len(category.train), args.max_train, replace=False))
        category = dataclasses.replace(category, train=[category.train[i] for i in keep])
    print(f"{category.summary()} | device {device} | {args.backbone} ({args.weights}) {args.image_size} px "
          f"(pixel AUROC at {args.image_size} px), batch {args.batch_size}, epochs {args.epochs1}+{args.epochs2}, "
          f"max steps/epoch {args.max_steps}, torch threads {torch.get_num_threads()}"
          + (f", set {args.overrides}" if args.overrides else ""))
    print(f"weights: {describe_weights(args.backbone, args.weights)}")
    header = f"{'variant':<18}{'seed':>5}{'train img/s':>13}{'normal/s':>10}{'infer img/s':>13}{'img AUROC':>11}{'pix AUROC':>11}{'train s':>9}"
    print(header)
    rows: dict[str, list[dict]] = {}
    skipped = set()
    for seed in args.seeds:  # variants interleaved per seed: load drifts hit every variant alike
        for variant in args.variants:
            if variant in skipped:
                continue
            if variant == "anomalib-rd":
                row = run_anomalib(args, seed, category, device)
                if row is None:
                    skipped.add(variant)
                    continue
            else:
                row = run_method(variant, args, seed, category, device)
            rows.setdefault(variant, []).append(row)
            print(f"{variant:<18}{seed:>5}{row['train_img_s']:>13.1f}{row['normal_img_s']:>10.1f}"
                  f"{row['inference_images_per_second']:>13.1f}{row['image_auroc']:>11.3f}"
                  f"{row['pixel_auroc']:>11.3f}{row['train_s']:>9.1f}", flush=True)
    print("summary (mean ± std over seeds)")
    for variant, rs in rows.items():
        def stat(key):
            values = [r[key] for r in rs]
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"
        print(f"{variant:<18} image AUROC {stat('image_auroc')}  pixel AUROC {stat('pixel_auroc')}  "
              f"train img/s {statistics.mean(r['train_img_s'] for r in rs):.1f}  "
              f"infer img/s {statistics.mean(r['inference_images_per_second'] for r in rs):.1f}")


if __name__ == "__main__":
    main()
