"""The self-supervised classifier of CutPaste / CutSwap: a timm CNN trunk (`backbone`: ResNet18 by
default, or e.g. tf_efficientnet_lite0; global-pooled features, 512-d for ResNet18, 1280-d for
lite0) + an MLP head for 3-way classification (normal / patch / scar).

After training, the trunk is what matters: `transfer_trunk` copies its weights into a PatchCore
`FeatureExtractor` (built with weights='random', then overwritten), so the fine-tuned backbone is
the one that embeds patches for the memory bank.
"""
from __future__ import annotations

import torch
from torch import nn

from raybench.models.backbones import FeatureExtractor, Normalise, create_timm_model, input_normalisation


class PatchClassifier(nn.Module):
    def __init__(self, backbone: str = "resnet18", weights: str = "imagenet", head_dims=(512, 128),
                 n_classes: int = 3):
        super().__init__()
        self.trunk = create_timm_model(backbone, weights, num_classes=0)  # pooled features, no fc
        layers, width = [], self.trunk.num_features
        for dim in head_dims:
            layers += [nn.Linear(width, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            width = dim
        layers.append(nn.Linear(width, n_classes))
        self.head = nn.Sequential(*layers)
        self.normalise = Normalise(*input_normalisation(self.trunk))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) in [0, 1] -> logits (N, n_classes)."""
        return self.head(self.features(images))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, S, S) in [0, 1] -> the trunk's pooled features (N, num_features)."""
        return self.trunk(self.normalise(images))

    def set_training(self, trunk: str = "train", bn_stats: str = "train") -> None:
        """Train mode for the head; the trunk per phase.

        trunk: "train" (fine-tuned) or "frozen" (eval mode: a head-only warm-up).
        bn_stats: "train" re-estimates the trunk's BatchNorm running statistics on the training
        batches (normal and synthetic negatives together), as a plain `model.train()` does;
        "frozen" keeps the pretrained statistics (the trunk's BatchNorm layers stay in eval mode:
        they normalise with the ImageNet statistics and never update them; their affine weights
        still train). PatchCore later embeds in eval mode, i.e. with whatever statistics are left.
        """
        if trunk not in ("train", "frozen") or bn_stats not in ("train", "frozen"):
            raise ValueError(f"trunk={trunk!r}, bn_stats={bn_stats!r}: each must be 'train' or 'frozen'")
        self.train()
        if trunk == "frozen":
            self.trunk.eval()
        elif bn_stats == "frozen":
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


def transfer_trunk(trunk: nn.Module, extractor: FeatureExtractor) -> None:
    """Load the trunk's weights into a features_only extractor of the same architecture.

    Every extractor tensor must come from the trunk with the same shape (the extractor stops
    after its last layer, so the trunk's later stages are simply not needed); anything else is
    an error, never a partial load.
    """
    source = trunk.state_dict()
    target = extractor.model.state_dict()
    missing = [k for k in target if k not in source]
    wrong = [k for k in target if k in source and source[k].shape != target[k].shape]
    if missing or wrong:
        raise ValueError(f"trunk does not fit the extractor: missing {missing[:5]}, shape mismatch {wrong[:5]}")
    extractor.model.load_state_dict({k: source[k].detach().clone() for k in target}, strict=True)
