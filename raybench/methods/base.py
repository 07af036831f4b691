"""What a method is: a config dataclass, a `fit` that returns a scorer, and a `build` that makes an
untrained scorer of the same shape (so a checkpoint of weights alone can be loaded into it).

Methods know nothing of Ray or MLflow: `fit(config, category, device)` runs in plain Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import nn


BUDGETS = ("smoke", "default", "paper")
BOUNDING_BUDGETS = ("smoke", "paper")  # their keys are taken out of the search space (raybench.sweep.driver)

# on_epoch(epoch, scorer[, excluded_test]) is called after each training epoch; the sweep uses it
# to report intermediate validation metrics (ASHA) and may stop the trial there. A method that
# trains on images of `category.test` (which the sweep fills with the validation pool, never the
# test split: raybench.evaluation.splits) passes them as excluded_test so they are never scored.
EpochHook = Callable[..., None]


class Scorer(Protocol):
    """An nn.Module: forward(images (N, 3, S, S) in [0, 1]) -> (scores (N,), maps (N, S, S))."""

    image_size: int

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def no_variant(config) -> str:
    return ""


def no_real_anomalies(config, distributions: dict) -> int:
    return 0


@dataclass
class FitResult:
    scorer: nn.Module
    # images of category.test used in training (few-shot real anomalies): never scored; paths
    # relative to the category folder so a checkpoint evaluates the same split on another machine
    excluded_test: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    fit: Callable[..., FitResult]
    build: Callable[[object], nn.Module]
    budgets: dict[str, dict]  # budget name -> config overrides
    description: str = ""
    trained: bool = False  # has epochs (ASHA applies)
    # preflight(config) -> extra lines to print: builds whatever a trial will need besides the scorer
    # (e.g. cutswap's saliency net), so a missing hub or bad file fails before any trial
    preflight: Optional[Callable[[object], list[str]]] = None
    # a config -> the leaderboard row it belongs to beside the method ("" for one row), e.g. the
    # Siamese U-Net's real vs synthetic anomalies, reported apart as the paper's Ours(r) / Ours(s)
    variant: Callable[[object], str] = no_variant
    # (config, the search's distributions) -> the most real anomalous images any trial may draw from
    # `category.test` (few-shot training); the sweep checks the validation pool holds more
    max_real_anomalies: Callable[[object, dict], int] = no_real_anomalies
    # keys of budgets["paper"] for which a paper states more than one value (e.g. PatchCore at coreset
    # 0.01 and 0.001, the Siamese U-Net's real and synthetic anomalies): any of them is the paper's setting
    paper_alternatives: dict = field(default_factory=dict)

    def check(self, config) -> list[str]:
        """Build the scorer (and the preflight's extras) once: weights are fetched or read here."""
        if self.preflight is not None:
            return list(self.preflight(config))
        self.build(config)
        return []


def paper_deviations(spec: MethodSpec, config) -> dict:
    """{field: value} where a run's config departs from what the papers state (budgets["paper"],
    or one of `paper_alternatives`); empty = the run is the papers' setting."""
    out = {}
    for name, value in spec.budgets.get("paper", {}).items():
        actual = getattr(config, name)
        allowed = spec.paper_alternatives.get(name, (value,))
        if not any(_same(actual, a) for a in allowed):
            out[name] = actual
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def provenance(config, scorer: nn.Module) -> dict:
    """What a run's features stand on, as logged params and kept in the Detector's meta: where
    the backbone's weights came from and the input normalisation the scorer applies."""
    from raybench.models.backbones import Normalise
    from raybench.models.weights import describe, weights_sha256
    out = {"weights_source": describe(config.backbone, config.weights),
           "weights_sha256": weights_sha256(config.backbone, config.weights)}
    if getattr(config, "saliency_net", None):
        out["saliency_weights_source"] = describe(config.saliency_net, config.saliency_weights)
        out["saliency_weights_sha256"] = weights_sha256(config.saliency_net, config.saliency_weights)
    norm = next((m for m in scorer.modules() if isinstance(m, Normalise)), None)
    if norm is not None:
        values = norm.values()
        out.update(input_mean=values["mean"], input_std=values["std"])
    return out


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


class Parallel:
    """Data-parallel helpers for a training loop, in plain torch.distributed terms.

    A method's fit calls `wrap(model)` and trains on `shard(n)` of its samples; with no process
    group (one process) both are identities. Ray Train's TorchTrainer (see raybench.sweep.driver) only
    starts the process group: the methods stay free of Ray.
    """

    @staticmethod
    def active() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @classmethod
    def rank(cls) -> int:
        return torch.distributed.get_rank() if cls.active() else 0

    @classmethod
    def world_size(cls) -> int:
        return torch.distributed.get_world_size() if cls.active() else 1

    @classmethod
    def is_main(cls) -> bool:
        return cls.rank() == 0

    @classmethod
    def wrap(cls, model: nn.Module, device: torch.device) -> nn.Module:
        if not cls.active() or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @classmethod
    def shard(cls, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a (shuffled, identical on every rank) index permutation."""
        return indices[cls.rank()::cls.world_size()]
