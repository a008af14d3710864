"""Networks.

s3d                  the S3D backbone (torchvision's), feature_map_size
contrastive_encoder  ContrastiveEncoder f + g: S3D and the projection head
builders             the networks of a config's `model` section, the backbone's variables and
                     the variables' shapes
batchnorm            BatchNorm over groups of clips (the paper's per-GPU statistics)
conv, pooling        the 3D convolutions and max pooling, with their faster lowerings
preprocess           uint8 frames -> ImageNet-normalised floats; flow centred on its median
torchvision_weights  conversion to and from torchvision's `s3d` state dict
torch_checkpoint     PyTorch checkpoint files read without PyTorch, running none of their code
imported_weights     CoCLR's and torchvision's S3D checkpoints as our encoder's variables
"""

from cvtcl_jax.models.builders import (
    WEIGHT_SETTINGS,
    backbone_from_config,
    backbone_variables,
    centres_motion,
    encoder_from_config,
    variable_shapes,
    weight_settings,
)
from cvtcl_jax.models.contrastive_encoder import ContrastiveEncoder, ProjectionHead, l2_normalize
from cvtcl_jax.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, centre_motion, normalize_frames
from cvtcl_jax.models.s3d import S3D
from cvtcl_jax.models.torchvision_weights import load_torchvision_s3d, to_torchvision_s3d

__all__ = [
    "S3D",
    "ContrastiveEncoder",
    "ProjectionHead",
    "backbone_from_config",
    "backbone_variables",
    "centre_motion",
    "centres_motion",
    "encoder_from_config",
    "l2_normalize",
    "normalize_frames",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_torchvision_s3d",
    "to_torchvision_s3d",
    "WEIGHT_SETTINGS",
    "variable_shapes",
    "weight_settings",
]
