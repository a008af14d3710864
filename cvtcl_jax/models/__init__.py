"""Networks: the S3D backbone, the projection head and torchvision weight conversion."""

from cvtcl_jax.models.heads import ContrastiveEncoder, ProjectionHead, l2_normalize
from cvtcl_jax.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_frames
from cvtcl_jax.models.s3d import S3D
from cvtcl_jax.models.torchvision_weights import load_torchvision_s3d, to_torchvision_s3d

__all__ = [
    "S3D",
    "ContrastiveEncoder",
    "ProjectionHead",
    "l2_normalize",
    "normalize_frames",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_torchvision_s3d",
    "to_torchvision_s3d",
]
