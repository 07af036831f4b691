"""Siamese U-Net (reverse-distillation T-S U-Net + CPAM) and its losses."""
from raybench.models.siamese_unet.cpam import CPAM
from raybench.models.siamese_unet.model import SiameseUNet

__all__ = ["CPAM", "SiameseUNet"]
