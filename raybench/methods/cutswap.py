"""`cutswap` and `cutpaste`: self-supervised 3-way fine-tuning of the `backbone` trunk (ResNet18 by
default, as the paper; tf_efficientnet_lite0 where only packaged ImageNet weights exist), then
PatchCore on the fine-tuned layer2 + layer3 features (the CutSwap paper's "CutSwap + PC" and "CutPaste + PC").

Training follows CutPaste's recipe, which the CutSwap paper adopts: SGD (lr 0.03, momentum 0.9,
weight decay 3e-5), cosine schedule, 32 images per step -> 96 samples (weakly augmented normal,
patch negative, scar negative), cross-entropy over the three classes.

CutSwap specifics (paper: "we set (.) to (30, 5, 4, 512)", symbols lost in extraction): read as
(N, L, k, d) = 30 LayerCAM layers of VGG16 `features` (indices up to 30), L = 5 maps taken from
them (layers 4, 9, 16, 23, 30: the max-pools), k = 4 clusters, d = 512 the ResNet18 embedding.
`layer_set` numbers the saliency net's five levels 0-4 (VGG16: those max-pools; other timm CNNs:
their feature stages, see raybench.synthesis.saliency). The saliency net has its own weights
(`saliency_weights`, ImageNet by default whatever the trunk's `weights`; random only when asked).
LayerCAM runs once per training image before training (the saliency net is frozen and the weak
augmentation is photometric, so the maps stay valid), and k-means once per map.
Each image yields one CutSwap and one scar negative per selected map per step: `maps_per_image`
(default 1, i.e. 96 samples per 32 images) of its L maps are drawn without replacement each step;
`maps_per_image = 5` reads the paper's "five positive-negative pairs per image" literally.

on_epoch(epoch, scorer): `scorer` is a PatchCore on a snapshot of the trunk as it is after that
epoch, whose memory bank is built the first time it is called (so the hook costs a trunk copy
unless the sweep actually scores with it; scoring costs one memory-bank build).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from raybench.config import ranged
from raybench.data.layout import Category
from raybench.data.tensors import iterate_batches, load_images
from raybench.methods.base import FitResult, MethodSpec, Parallel, register
from raybench.methods.patchcore import PatchCoreConfig, build as build_patchcore, fit_memory_bank
from raybench.methods.selection import BestEpoch, ValidationPool
from raybench.models.backbones import FeatureExtractor
from raybench.models.classifier import PatchClassifier, transfer_trunk
from raybench.models.common import cudnn_determinism, set_seed, synchronize
from raybench.models.patchcore import PatchCore
from raybench.models.weights import describe as describe_weights
from raybench.synthesis.cutpaste import CutPasteSettings, cutpaste, cutpaste_scar
from raybench.synthesis.cutswap import SwapSettings, build_anchor_cache, cutswap, select_intervals
from raybench.synthesis.patches import weak_augment
from raybench.synthesis.saliency import SaliencyExtractor, compute_saliency

NORMAL, PATCH, SCAR = 0, 1, 2


@dataclass
class SelfSupervisedConfig(PatchCoreConfig):
    """PatchCore's fields (scoring stage) + the 3-way training recipe shared by CutPaste and CutSwap."""

    epochs: int = ranged(256, 0)
    batch_images: int = ranged(32, 1)  # images per step over all ranks; each gives 3 samples (x maps_per_image)
    lr: float = ranged(0.03, 0, low_open=True)
    momentum: float = ranged(0.9, 0, 1, high_open=True)
    weight_decay: float = ranged(3e-5, 0)
    head_dims: list[int] = ranged(factory=lambda: [512, 128], low=1)
    jitter: float = ranged(0.1, 0, 1)  # weak (photometric) augmentation of every sample
    patch_aspect_max: float = ranged(3.3, 1)
    scar_width_min: int = ranged(2, 1)  # px at 256 px, scaled to image_size
    scar_width_max: int = ranged(16, 1)
    scar_length_min: int = ranged(10, 1)
    scar_length_max: int = ranged(25, 1)
    scar_angle: float = ranged(45.0, 0, 180)  # degrees, both ways
    # fine-tuning recipe (see RECIPES and the README's method notes): `paper` = CutPaste's / CutSwap's
    # literal recipe; `preserve` keeps what the pretrained trunk knows. The three fields below are
    # None = the recipe's value; a value set there overrides the recipe for that one aspect.
    recipe: Literal["preserve", "paper"] = "preserve"
    bn_stats: Optional[str] = None  # frozen | train: the trunk's BatchNorm running statistics
    warmup_epochs: Optional[int] = ranged(None, 0)  # head-only epochs on the frozen trunk (part of `epochs`)
    trunk_lr_scale: Optional[float] = ranged(None, 0)  # trunk lr = lr x this (head: lr)
    # validation-chosen epochs: the trunk of the best-validating epoch (0 = the untuned trunk) is
    # the one PatchCore uses; needs a validation pool with good and defective images (`category.test`)
    keep_best_epoch: bool = True
    validate_every: int = ranged(1, 1)  # validate after every n-th epoch (and the last)
    amp: bool = True  # bf16 autocast + channels_last on CUDA (ignored on CPU)
    deterministic: bool = True  # deterministic cuDNN kernels during fit


# What each recipe means for the fields left at None (measured in the README: "Fine-tuning recipe").
RECIPES = {
    "paper": {"bn_stats": "train", "warmup_epochs": 0, "trunk_lr_scale": 1.0},
    "preserve": {"bn_stats": "frozen", "warmup_epochs": 1, "trunk_lr_scale": 0.1},
}
BN_STATS = ("frozen", "train")


def resolve_recipe(config: SelfSupervisedConfig) -> dict:
    """The recipe's values with the config's explicit (non-None) fields on top."""
    if config.recipe not in RECIPES:
        raise ValueError(f"recipe {config.recipe!r}: choose one of {sorted(RECIPES)}")
    out = dict(RECIPES[config.recipe])
    for name in out:
        value = getattr(config, name)
        if value is not None:
            out[name] = value
    if out["bn_stats"] not in BN_STATS:
        raise ValueError(f"bn_stats {out['bn_stats']!r}: choose one of {list(BN_STATS)}")
    return out


@dataclass
class CutPasteConfig(SelfSupervisedConfig):
    patch_area_min: float = ranged(0.02, 0, 1, low_open=True, high_open=True)
    patch_area_max: float = ranged(0.15, 0, 1, low_open=True, high_open=True)
    patch_jitter: float = ranged(0.1, 0, 1)


@dataclass
class CutSwapConfig(SelfSupervisedConfig):
    saliency_net: str = "vgg16"  # any timm CNN classifier, e.g. tf_efficientnet_lite0 (no hub needed)
    saliency_weights: str = "imagenet"  # imagenet | random | path: independent of the trunk's `weights`
    layer_set: list[int] = ranged(factory=lambda: [0, 1, 2, 3, 4], low=0, high=4)  # saliency levels; L = len(layer_set)
    maps_per_image: int = ranged(1, 1)
    k: int = ranged(4, 1)
    kmeans_iters: int = ranged(30, 1)
    cluster_select: Literal["max", "min", "random"] = "max"  # paper: max; Tab. VI ablations: min, random
    anchor_strategy: Literal["kmeans", "sorting"] = "kmeans"
    top_pixels: int = ranged(300, 1)  # 'sorting' ablation: the paper's top 300 pixels at 256 px
    patch_area_min: float = ranged(0.02, 0, 1, low_open=True, high_open=True)
    patch_area_max: float = ranged(0.11, 0, 1, low_open=True, high_open=True)  # <= 1/9: two equal patches must fit side by side
    saliency_batch_size: int = ranged(16, 1)


# `--budget paper`: every value the papers state (CutSwap's implementation details, and CutPaste's
# recipe, which CutSwap adopts; PatchCore's scoring stage), fixed and taken out of the search.
# What their text lost stays searchable (README: "Values the papers leave open").
_PATCHCORE_PAPER = {"backbone": "resnet18", "weights": "imagenet", "image_size": 256,
                    "layers": ["layer2", "layer3"], "patch_size": 3, "sigma": 4.0, "coreset_ratio": 0.01}
_CUTPASTE_RECIPE = {"epochs": 256, "lr": 0.03, "momentum": 0.9, "weight_decay": 3e-5, "batch_images": 32,
                    "scar_width_min": 2, "scar_width_max": 16, "scar_length_min": 10, "scar_length_max": 25,
                    "scar_angle": 45.0, "recipe": "paper", "bn_stats": None, "warmup_epochs": None,
                    "trunk_lr_scale": None, "keep_best_epoch": False}
CUTPASTE_PAPER = {**_PATCHCORE_PAPER, **_CUTPASTE_RECIPE,
                  "patch_area_min": 0.02, "patch_area_max": 0.15, "patch_aspect_max": 3.3}
# "(30, 5, 4, 512)": LayerCAM up to VGG16 layer 30, L = 5 maps (layers 4, 9, 16, 23, 30), k = 4,
# d = 512 (ResNet18); "five positive-negative pairs per image"; the max-saliency k-means cluster
CUTSWAP_PAPER = {**_PATCHCORE_PAPER, **_CUTPASTE_RECIPE,
                 "saliency_net": "vgg16", "saliency_weights": "imagenet", "layer_set": [0, 1, 2, 3, 4],
                 "maps_per_image": 5, "k": 4, "cluster_select": "max", "anchor_strategy": "kmeans"}
# the papers report PatchCore at two coreset ratios: either is the paper's setting
PAPER_ALTERNATIVES = {"coreset_ratio": (0.01, 0.001)}

_SMOKE = {"image_size": 64, "epochs": 2, "batch_images": 16, "coreset_ratio": 0.05}
BUDGETS = {
    "smoke": _SMOKE,
    "default": {"epochs": 32},
    "paper": CUTSWAP_PAPER,
}
CUTPASTE_BUDGETS = {**BUDGETS, "paper": CUTPASTE_PAPER}


def build(config: SelfSupervisedConfig) -> PatchCore:
    """Untrained scorer of the fitted shape: PatchCore on `backbone` layers (weights come later)."""
    return build_patchcore(config)


class EpochScorer(PatchCore):
    """PatchCore on an epoch's trunk snapshot; the memory bank is built on first use (see module doc)."""

    def __init__(self, extractor, config: SelfSupervisedConfig, category: Category, device):
        super().__init__(extractor, config.image_size, config.patch_size, config.sigma)
        self._config, self._category, self._device = config, category, device

    def prepare(self) -> dict:
        if self.memory_bank.numel() == 0:
            return fit_memory_bank(self, self._category, self._config, self._device)
        return {}

    def forward(self, images):
        self.prepare()
        return super().forward(images)


def _extractor_from(trunk, config: SelfSupervisedConfig, device) -> FeatureExtractor:
    # weights='random' only builds the architecture; every tensor is then overwritten by the trunk's.
    # fork_rng: building it must not move the global RNG, so hooks cannot change training.
    with torch.random.fork_rng(devices=[]):
        extractor = FeatureExtractor(config.backbone, config.layers, "random")
    transfer_trunk(trunk, extractor)
    return extractor.to(device)


def _scar_ranges(config: SelfSupervisedConfig) -> dict:
    return {"scar_width": (config.scar_width_min, config.scar_width_max),
            "scar_length": (config.scar_length_min, config.scar_length_max),
            "scar_angle_deg": config.scar_angle}


class CutPasteSynthesis:
    def __init__(self, config: CutPasteConfig, images, device):
        self.settings = CutPasteSettings(area=(config.patch_area_min, config.patch_area_max),
                                         aspect_max=config.patch_aspect_max, patch_jitter=config.patch_jitter,
                                         **_scar_ranges(config))
        self.settings.validate()
        self.jitter = config.jitter

    def __call__(self, images, index, gen):
        positives = weak_augment(images, self.jitter, gen)
        patch, _ = cutpaste(positives, self.settings, gen)
        scar, _ = cutpaste_scar(positives, self.settings, gen)
        return positives, patch, scar

    def summary(self) -> dict:
        return {}


def build_saliency(config: CutSwapConfig) -> SaliencyExtractor:
    return SaliencyExtractor(config.saliency_net, config.layer_set, config.saliency_weights)


def preflight_cutswap(config: CutSwapConfig) -> list[str]:
    """Before any trial: the trunk's and the saliency net's weights load (a bad file fails here)."""
    build(config)
    build_saliency(config)
    return [f"saliency: {describe_weights(config.saliency_net, config.saliency_weights)}, "
            f"levels {config.layer_set}"]


class CutSwapSynthesis:
    """Saliency once (LayerCAM + k-means per image and layer), then swaps drawn per step."""

    def __init__(self, config: CutSwapConfig, images, device):
        self.settings = SwapSettings(area=(config.patch_area_min, config.patch_area_max),
                                     aspect_max=config.patch_aspect_max, **_scar_ranges(config))
        self.settings.validate()
        if not 1 <= config.maps_per_image <= len(config.layer_set):
            raise ValueError(f"maps_per_image={config.maps_per_image} must lie in 1..L={len(config.layer_set)}")
        if config.anchor_strategy == "sorting" and config.cluster_select != "max":
            raise ValueError(f"cluster_select={config.cluster_select!r} needs anchor_strategy='kmeans'")
        self.config = config
        start = time.perf_counter()
        extractor = build_saliency(config).to(device)
        use_amp = device.type == "cuda" and config.amp
        maps = compute_saliency(extractor, images, config.saliency_batch_size, device, autocast=use_amp)
        del extractor
        self.anchors = build_anchor_cache(maps, config.image_size, config.anchor_strategy, config.k,
                                          config.top_pixels, config.kmeans_iters)
        self.saliency_seconds = time.perf_counter() - start
        self.outside = torch.zeros((), device=device, dtype=torch.long)
        self.drawn = torch.zeros((), device=device, dtype=torch.long)

    def __call__(self, images, index, gen):
        b, m, n_layers = images.shape[0], self.config.maps_per_image, self.anchors.n_layers
        layers = torch.rand((b, n_layers), generator=gen, device=images.device).argsort(dim=1)[:, :m]
        saliency = self.anchors.upsampled(index)  # (B, L, S, S)
        saliency = saliency[torch.arange(b, device=images.device)[:, None], layers].flatten(0, 1)
        image_index, layer_index = index.repeat_interleave(m), layers.flatten()
        positives = weak_augment(images.repeat_interleave(m, dim=0), self.config.jitter, gen)
        low, high = select_intervals(self.anchors, image_index, layer_index, self.config.cluster_select, gen)
        patch, _, out_patch = cutswap(positives, saliency, low, high, self.settings, gen, scar=False)
        scar, _, out_scar = cutswap(positives, saliency, low, high, self.settings, gen, scar=True)
        self.outside += out_patch.sum() + out_scar.sum()
        self.drawn += 2 * len(positives)
        return positives, patch, scar

    def summary(self) -> dict:
        return {"saliency_seconds": self.saliency_seconds,
                "flat_saliency_fraction": self.anchors.flat_fraction(),
                "second_anchor_outside_cluster_fraction": float(self.outside) / max(1, int(self.drawn))}


def _param_groups(model: PatchClassifier, config: SelfSupervisedConfig, trunk_lr_scale: float) -> list[dict]:
    return [{"params": list(model.head.parameters()), "lr": config.lr, "name": "head"},
            {"params": list(model.trunk.parameters()), "lr": config.lr * trunk_lr_scale, "name": "trunk"}]


def _validation_pool(config: SelfSupervisedConfig, category: Category) -> tuple[ValidationPool | None, str]:
    """The pool `keep_best_epoch` validates on, and how the epoch is chosen (recorded in the info).
    Without good and defective images there (`--val-mode synthetic`: a method sees no validation
    images) the last epoch is kept, and the info says why."""
    if not config.keep_best_epoch:
        return None, "last epoch (keep_best_epoch off)"
    pool = ValidationPool.from_category(category, config.image_size, config.batch_size)
    if not pool.usable:
        return None, (f"last epoch: keep_best_epoch found no validation pool with good and defective images "
                      f"({len(pool.samples)} images; --val-mode synthetic gives a method none)")
    return pool, f"best validation epoch ({len(pool.samples)} images; image AUROC, then pixel AUROC)"


def _validate(model: PatchClassifier, images, config, pool: ValidationPool, device) -> dict:
    """PatchCore on the trunk as it is now (memory bank from the in-memory training images)."""
    scorer = PatchCore(_extractor_from(model.trunk, config, device), config.image_size, config.patch_size,
                       config.sigma)
    scorer.fit(iterate_batches(images, config.batch_size, device), config.coreset_ratio, config.projection_dim,
               config.seed)
    return pool.score(scorer, device)


def _fit(config: SelfSupervisedConfig, category: Category, device: torch.device, on_epoch,
         synthesis_cls) -> FitResult:
    device = torch.device(device)
    set_seed(config.seed)
    if config.epochs < 0 or config.batch_images < 1:
        raise ValueError("epochs must be >= 0 and batch_images >= 1")
    recipe = resolve_recipe(config)
    cuda = device.type == "cuda"
    use_amp = cuda and config.amp
    pool, epoch_choice = _validation_pool(config, category)
    with cudnn_determinism(cuda and config.deterministic):
        images = load_images(category.train, config.image_size).to(device)
        synthesis = synthesis_cls(config, images, device)

        torch.manual_seed(config.seed)  # same initial head/trunk whatever ran before
        model = PatchClassifier(config.backbone, config.weights, config.head_dims).to(device)
        if use_amp:
            model = model.to(memory_format=torch.channels_last)
        world, rank = Parallel.world_size(), Parallel.rank()
        per_rank = max(1, math.ceil(config.batch_images / world))
        n = len(images)
        # every rank gets exactly n // world images per epoch (a few others wait for the next
        # epoch's shuffle), so all ranks take the same number of steps and DDP never waits forever
        per_epoch = n - n % world
        if per_epoch == 0:
            raise ValueError(f"{n} training images cannot be shared by {world} ranks")
        steps_per_epoch = math.ceil(per_epoch // world / per_rank)
        # one optimizer, two groups: the head at lr, the trunk at lr x trunk_lr_scale; during the
        # warm-up the trunk gets no gradients, so SGD leaves it (and its momentum) untouched
        optimizer = torch.optim.SGD(_param_groups(model, config, recipe["trunk_lr_scale"]), lr=config.lr,
                                    momentum=config.momentum, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
        order_gen = torch.Generator().manual_seed(config.seed)  # identical on every rank
        synth_gen = torch.Generator(device=device).manual_seed(config.seed * 1000 + 1 + rank)
        warmup = min(recipe["warmup_epochs"], config.epochs)
        head_only = Parallel.wrap(model.head, device) if warmup else None
        full = None  # wrapped when the trunk starts training (DDP registers what has gradients then)

        best = BestEpoch()
        if pool is not None:  # epoch 0: the untuned trunk is a candidate too
            best.offer(0, _validate(model, images, config, pool, device), model.trunk.state_dict())

        history, start, samples = [], time.perf_counter(), 0
        for epoch in range(config.epochs):
            warming = epoch < warmup
            model.set_training("frozen" if warming else "train", recipe["bn_stats"])
            model.trunk.requires_grad_(not warming)
            if not warming and full is None:
                full = Parallel.wrap(model, device)
            # one host-to-device copy per epoch (a pageable copy per step would sync every step)
            mine = Parallel.shard(torch.randperm(n, generator=order_gen)[:per_epoch]).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for s in range(0, len(mine), per_rank):
                index = mine[s:s + per_rank]
                with torch.no_grad():
                    parts = synthesis(images[index].float(), index, synth_gen)
                inputs = torch.cat(parts)
                labels = torch.cat([torch.full((len(p),), c, device=device, dtype=torch.long)
                                    for c, p in zip((NORMAL, PATCH, SCAR), parts)])
                if use_amp:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    if warming:
                        with torch.no_grad():
                            features = model.features(inputs)
                        logits = head_only(features)
                    else:
                        logits = full(inputs)
                    loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                # device-side accumulation: no host sync inside the epoch
                loss_sum += loss.detach() * len(labels)
                correct += (logits.detach().argmax(dim=1) == labels).sum()
                seen += len(labels)
            samples += seen
            row = {"epoch": epoch, "loss": float(loss_sum) / max(seen, 1),
                   "accuracy": float(correct) / max(seen, 1), "trunk_trained": not warming}
            done = epoch + 1
            # a warm-up epoch leaves the trunk as it was: nothing new to validate
            if pool is not None and not warming and (done % config.validate_every == 0 or done == config.epochs):
                metrics = _validate(model, images, config, pool, device)
                best.offer(done, metrics, model.trunk.state_dict())
                row.update({f"val_{k}": v for k, v in metrics.items()})
            history.append(row)
            if on_epoch is not None:
                on_epoch(epoch, EpochScorer(_extractor_from(model.trunk, config, device), config, category, device))
        model.eval()
        if Parallel.active():
            # BatchNorm running statistics drift apart per rank after the last step (DDP only syncs
            # them at the start of each forward): take rank 0's so every rank scores identically
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        synchronize(device)
        train_seconds = time.perf_counter() - start
        if pool is not None:
            model.trunk.load_state_dict(best.state)
        del images

        scorer = PatchCore(_extractor_from(model.trunk, config, device), config.image_size,
                           config.patch_size, config.sigma)
        bank_start = time.perf_counter()
        info = fit_memory_bank(scorer, category, config, device)
        info.update({
            "train_seconds": train_seconds,
            "train_samples_per_second": samples / max(train_seconds, 1e-9),
            "memory_bank_seconds": time.perf_counter() - bank_start,
            "steps": config.epochs * steps_per_epoch,
            "final_loss": history[-1]["loss"] if history else float("nan"),
            "final_train_accuracy": history[-1]["accuracy"] if history else float("nan"),
            "history": history,
            "recipe": {"name": config.recipe, **recipe},
            # the epoch whose trunk PatchCore uses: chosen on the validation pool, or the last one
            "chosen_epoch": best.epoch if pool is not None else config.epochs,
            "epoch_choice": epoch_choice,
            "validation_curve": best.curve,
            **synthesis.summary(),
        })
    return FitResult(scorer, [], info)


def fit_cutswap(config: CutSwapConfig, category: Category, device, on_epoch=None) -> FitResult:
    return _fit(config, category, device, on_epoch, CutSwapSynthesis)


def fit_cutpaste(config: CutPasteConfig, category: Category, device, on_epoch=None) -> FitResult:
    return _fit(config, category, device, on_epoch, CutPasteSynthesis)


CUTSWAP = register(MethodSpec(
    name="cutswap", config_cls=CutSwapConfig, fit=fit_cutswap, build=build, budgets=BUDGETS, trained=True,
    preflight=preflight_cutswap, paper_alternatives=PAPER_ALTERNATIVES,
    description="`backbone` (ResNet18) fine-tuned on saliency-guided patch swaps (LayerCAM + k-means), then PatchCore",
))
CUTPASTE = register(MethodSpec(
    name="cutpaste", config_cls=CutPasteConfig, fit=fit_cutpaste, build=build, budgets=CUTPASTE_BUDGETS,
    trained=True, paper_alternatives=PAPER_ALTERNATIVES,
    description="`backbone` (ResNet18) fine-tuned on CutPaste 3-way (normal / cutpaste / scar), then PatchCore",
))
