"""Teacher-student U-Net of reverse distillation (Deng & Li, CVPR 2022), with optional CPAM.

teacher (frozen timm encoder, layers 1-3) -> one-class bottleneck (multi-scale fusion of the
three layers + a ResNet-style stage) -> student decoder mirroring the teacher, restoring each
teacher layer (same channels and spatial size). Written for any timm CNN whose chosen stages halve
the grid from one to the next: channels, block type and depths come from the teacher
(wide_resnet50_2: 256/512/1024, resnet18: 64/128/256, tf_efficientnet_lite0: 24/40/112).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.backbones import FeatureExtractor
from raybench.models.siamese_unet.cpam import CPAM
from raybench.models.siamese_unet.losses import anomaly_map


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResidualBottleneck(nn.Module):
    """1x1 -> 3x3 (stride 2 down, or a 2x2 transposed conv up) -> 1x1, with a projected shortcut
    whenever the shape changes. `resample`: 'none' | 'down' | 'up'."""

    def __init__(self, cin: int, cout: int, width: int, resample: str = "none"):
        super().__init__()
        if resample == "down":
            middle = nn.Conv2d(width, width, 3, 2, 1, bias=False)
            shortcut = nn.Conv2d(cin, cout, 1, 2, bias=False)
        elif resample == "up":
            middle = nn.ConvTranspose2d(width, width, 2, 2, bias=False)
            shortcut = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        else:
            middle = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            middle, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(shortcut, nn.BatchNorm2d(cout)) if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResidualBasic(nn.Module):
    """Two 3x3 convolutions (the first strided down, or a 2x2 transposed conv up), as ResNet's
    BasicBlock and RD's decoder for ResNet18/34, with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, width: int = 0, resample: str = "none"):
        super().__init__()
        if resample == "down":
            first, shortcut = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.Conv2d(cin, cout, 1, 2, bias=False)
        elif resample == "up":
            first, shortcut = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False), nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        else:
            first = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None
        self.body = nn.Sequential(first, nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(shortcut, nn.BatchNorm2d(cout)) if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


BLOCKS = {"bottleneck": ResidualBottleneck, "basic": ResidualBasic}


def teacher_block_type(teacher: FeatureExtractor) -> str:
    """The decoder's block type per backbone family: 'bottleneck' for a teacher built from
    Bottlenecks (wide_resnet50_2, as RD), else 'basic': ResNet18/34's BasicBlocks, and two 3x3
    convolutions for EfficientNet(-Lite), whose stages are narrow (24/40/112 channels for lite0)
    so a bottleneck's 1x1 squeeze would leave the decoder 12-56 channels wide."""
    names = {type(m).__name__ for m in teacher.model.modules()}
    return "bottleneck" if "Bottleneck" in names else "basic"


def teacher_stage_depths(teacher: FeatureExtractor) -> list[int]:
    """Blocks in each chosen teacher stage (wide_resnet50_2 layer1-3: 3, 4, 6; lite0: 2, 2, 3),
    from timm's feature_info module names."""
    depths = []
    for name in teacher.model.feature_info.module_name():
        module = None
        for candidate in (name, name.replace(".", "_")):  # FeatureListNet flattens dotted names
            try:
                module = teacher.model.get_submodule(candidate)
                break
            except AttributeError:
                continue
        depths.append(len(module) if isinstance(module, nn.Sequential) else 1)
    return depths


class OneClassBottleneck(nn.Module):
    """Multi-scale feature fusion (layer1 and layer2 strided down to layer3's grid, concatenated
    with layer3) followed by a ResNet stage that halves the grid again (one-class embedding)."""

    def __init__(self, channels: list[int], blocks: int, block: str = "bottleneck"):
        super().__init__()
        Block = BLOCKS[block]
        c1, c2, c3 = channels
        self.down1 = nn.Sequential(conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c3, 2))
        self.down2 = conv_bn_relu(c2, c3, 2)
        self.out_channels = 2 * c3
        width = self.out_channels // 4
        stage = [Block(3 * c3, self.out_channels, width, "down")]
        stage += [Block(self.out_channels, self.out_channels, width) for _ in range(blocks - 1)]
        self.embed = nn.Sequential(*stage)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = features
        a, b = self.down1(f1), self.down2(f2)
        # odd teacher grids (image sizes not divisible by 32) round differently per path
        a, b = (F.interpolate(t, size=f3.shape[-2:], mode="bilinear", align_corners=False)
                if t.shape[-2:] != f3.shape[-2:] else t for t in (a, b))
        return self.embed(torch.cat([a, b, f3], dim=1))


class DecoderStage(nn.Module):
    """Optional CPAM, then an upsampling residual block and `blocks - 1` plain ones."""

    def __init__(self, cin: int, cout: int, blocks: int, cpam: bool, max_positions: int,
                 block: str = "bottleneck"):
        super().__init__()
        self.cpam = CPAM(cin, max_positions) if cpam else nn.Identity()
        width = max(1, cout // 2)  # wide-ResNet-like width, as RD's de_wide_resnet50_2
        Block = BLOCKS[block]
        layers = [Block(cin, cout, width, "up")]
        layers += [Block(cout, cout, width) for _ in range(blocks - 1)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        x = self.blocks(self.cpam(x))
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class SiameseUNet(nn.Module):
    """The scorer: forward(images in [0, 1]) -> (image scores (N,), anomaly maps (N, S, S)).

    `features(images)` gives the teacher and student feature lists used by the training losses.
    Everything in the state dict is fixed by the config (teacher included), so a checkpoint of
    weights alone loads into `SiameseUNet(...)` built from the same config.
    """

    def __init__(self, backbone: str, layers: list[str], weights: str, image_size: int,
                 sigma: float = 4.0, cpam: bool = True, bottleneck_blocks: int = 3,
                 decoder_blocks: int | None = None, pam_max_positions: int = 1024, amp: bool = False,
                 block: str = "auto"):
        super().__init__()
        if len(layers) != 3:
            raise ValueError(f"the T-S U-Net needs three teacher layers, got {layers}")
        self.image_size, self.sigma, self.amp = image_size, sigma, amp
        self.teacher = FeatureExtractor(backbone, layers, weights, frozen=True)
        channels = self.teacher.channels
        r = self.teacher.reductions
        if r[1] != 2 * r[0] or r[2] != 2 * r[1]:
            raise ValueError(f"the T-S U-Net needs teacher stages that halve the grid each time; "
                             f"{backbone} {layers} have strides {r}")
        if block == "auto":
            block = teacher_block_type(self.teacher)
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected auto|{'|'.join(BLOCKS)}")
        self.bottleneck = OneClassBottleneck(channels, bottleneck_blocks, block)
        ins = [self.bottleneck.out_channels, channels[2], channels[1]]
        outs = [channels[2], channels[1], channels[0]]
        # decoder_blocks None: RD's de_resnet depths, i.e. the teacher's stage depths in decoder order
        # (wide_resnet50_2: 3, 4, 6 blocks from the deepest decoder stage to the shallowest)
        depths = teacher_stage_depths(self.teacher) if decoder_blocks is None else [decoder_blocks] * 3
        if min(depths) < 1:
            raise ValueError(f"decoder_blocks must be >= 1, got {decoder_blocks}")
        self.decoder_depths = depths
        self.decoder = nn.ModuleList(DecoderStage(i, o, d, cpam, pam_max_positions, block)
                                     for i, o, d in zip(ins, outs, depths))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.bottleneck, self.decoder) for p in m.parameters()]

    def features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            teacher = [t.detach() for t in self.teacher(images)]
        x = self.bottleneck(teacher)
        student = []
        for stage, target in zip(self.decoder, reversed(teacher)):
            x = stage(x, target.shape[-2:])
            student.append(x)
        return teacher, student[::-1]  # shallow to deep, like the teacher

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        use_amp = self.amp and images.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            teacher, student = self.features(images)
        maps = anomaly_map(teacher, student, self.image_size, self.sigma)
        return maps.flatten(1).amax(dim=1), maps
