"""Projection head g and the encoder f + g used by the contrastive losses."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cvtcl_jax.models.pooling import DEFAULT_POOL_GRAD
from cvtcl_jax.models.s3d import DEFAULT_BN_EPSILON, S3D


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """x / max(||x||, eps) along `axis`, like torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


class ProjectionHead(nn.Module):
    """g: (B, F) -> (B, out_dim) unit vectors; Dense(hidden) -> ReLU -> Dense(out_dim), no BN.

    Computed in (at least) float32: the head is tiny and its output sets the contrastive logits.
    """

    hidden_dim: int = 1024
    out_dim: int = 128
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dtype = jnp.promote_types(jnp.float32, x.dtype)
        x = nn.Dense(self.hidden_dim, dtype=dtype, param_dtype=self.param_dtype, name="fc1")(x.astype(dtype))
        x = nn.Dense(self.out_dim, dtype=dtype, param_dtype=self.param_dtype, name="fc2")(nn.relu(x))
        return l2_normalize(x)


class ContrastiveEncoder(nn.Module):
    """f + g: clips (B, T, H, W, 3) -> (features (B, F), embeddings (B, out_dim) unit vectors).

    uint8 clips (the input pipeline's output) are normalised by the backbone (`normalize_frames`);
    float clips are taken as normalised already.

    Variables are `{'params': {'backbone', 'head'}, 'batch_stats': {'backbone'}}`, so the backbone
    part alone is what `S3D` takes (export, evaluation, torchvision conversion).
    """

    width_multiplier: float = 1.0
    num_mixed_3: int = 2  # S3D.num_mixed_*: the Mixed blocks kept in each stage (small variants)
    num_mixed_4: int = 5
    num_mixed_5: int = 2
    bn_group_size: int | None = None
    bn_epsilon: float = DEFAULT_BN_EPSILON  # S3D.bn_epsilon: belongs to the weights
    reverse_input_channels: bool = False  # S3D.reverse_input_channels: CoCLR's flow networks
    centre_motion: bool = False  # S3D.centre_motion: flow input relative to each frame's median
    head_hidden_dim: int = 1024
    embed_dim: int = 128
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False  # S3D.remat: recompute activations in the backward pass to save memory
    pool_grad: str = DEFAULT_POOL_GRAD  # S3D.pool_grad: how max pooling is computed and differentiated
    conv_lowering: str = "fold"  # S3D.conv_lowering: 2D convs and matmuls, or 3D convs

    def setup(self):
        self.backbone = S3D(
            width_multiplier=self.width_multiplier,
            num_mixed_3=self.num_mixed_3,
            num_mixed_4=self.num_mixed_4,
            num_mixed_5=self.num_mixed_5,
            bn_group_size=self.bn_group_size,
            bn_epsilon=self.bn_epsilon,
            reverse_input_channels=self.reverse_input_channels,
            centre_motion=self.centre_motion,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
            pool_grad=self.pool_grad,
            conv_lowering=self.conv_lowering,
        )
        self.head = ProjectionHead(self.head_hidden_dim, self.embed_dim, self.param_dtype)

    def __call__(self, x, train: bool = False):
        feats = self.backbone(x, train=train)
        return feats, self.head(feats)
