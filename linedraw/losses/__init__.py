"""linedraw.losses: one file per loss; each receives the modules (teachers, heads) it needs."""
from linedraw.losses.cycle import cycle_loss
from linedraw.losses.distillation import distillation_loss
from linedraw.losses.gan import lsgan_discriminator_loss, lsgan_generator_loss
from linedraw.losses.geometry import GeometryLoss
from linedraw.losses.grey import grey_loss
from linedraw.losses.segmentation import SegmentationLoss, build_unet
from linedraw.losses.semantic import SemanticLoss

__all__ = [
    "cycle_loss",
    "distillation_loss",
    "lsgan_generator_loss",
    "lsgan_discriminator_loss",
    "SemanticLoss",
    "GeometryLoss",
    "grey_loss",
    "SegmentationLoss",
    "build_unet",
]
