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
        return self.head(self.trunk(self.normalise(images)))


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
