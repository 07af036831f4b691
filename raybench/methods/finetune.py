"""The 3-way self-supervised fine-tuning `cutswap` and `cutpaste` share (raybench.methods.cutswap
has the two augmentations): the `backbone` trunk + an MLP head trained on (weakly augmented normal,
patch negative, scar negative), cross-entropy over the three classes, then PatchCore on the
fine-tuned trunk.

Optimiser: CutPaste's (SGD lr 0.03, momentum 0.9, weight decay 3e-5, cosine schedule, 32 images per
step -> 96 samples). The recipe (`recipe: preserve|paper`, RECIPES) decides what the fine-tuning may
do to the pretrained trunk: its BatchNorm running statistics (`bn_stats`), a head-only warm-up on
the frozen trunk (`warmup_epochs`) and the trunk's share of the learning rate (`trunk_lr_scale`).
`paper` is the papers' literal recipe; `preserve` (the default) is the one the learning curves in
docs/benchmarks.md measured to keep what the pretrained trunk knows.

`keep_best_epoch`: PatchCore on the trunk after each validated epoch (and on the untuned trunk,
epoch 0) is scored on the method's validation pool (`category.test`, raybench.methods.selection);
the best epoch's trunk is the one returned.

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
from raybench.methods.base import FitResult, Parallel
from raybench.methods.patchcore import PatchCoreConfig, build as build_patchcore, fit_memory_bank
from raybench.methods.selection import BestEpoch, ValidationPool
from raybench.models.backbones import FeatureExtractor
from raybench.models.classifier import PatchClassifier, transfer_trunk
from raybench.models.common import cudnn_determinism, set_seed, synchronize
from raybench.models.patchcore import PatchCore

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
    # fine-tuning recipe (see RECIPES and docs/methods.md): `paper` = CutPaste's / CutSwap's
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


# What each recipe means for the fields left at None (measured in docs/benchmarks.md and docs/methods.md).
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


def fine_tune(config: SelfSupervisedConfig, category: Category, device: torch.device, on_epoch,
              synthesis_cls) -> FitResult:
    """Fine-tune the trunk on `synthesis_cls(config, images, device)`'s (normal, patch, scar) triples,
    then PatchCore on it. See the module docstring."""
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
