"""BatchNorm with PyTorch semantics and statistics over fixed groups of clips.

MoCo-style training relies on per-device BN: every GPU normalises its own slice of the batch, and
the key batch is shuffled across GPUs so that a query and its key never share statistics. Inside a
global-view `jax.jit` the "device" is not a meaningful unit any more, so we make the group explicit:
the batch is cut into consecutive groups of `group_size` clips and each group is normalised with
its own mean and variance. The result is identical on 1 or 64 devices.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class GroupedBatchNorm(nn.Module):
    """BatchNorm over the last axis with statistics per group of `group_size` batch entries.

    x: (B, ..., C) -> (B, ..., C). Running statistics follow PyTorch: exponential average with
    weight `1 - momentum` on the new value (Flax convention, so momentum 0.9 equals PyTorch's 0.1)
    and the unbiased variance for `var`, the biased one for normalising. With several groups the
    running update uses the mean over groups of each group's statistics.

    Attributes:
      group_size: clips per statistics group; None or 0 means the whole batch is one group.
      momentum: Flax-style momentum of the running averages.
      epsilon: added to the variance.
      dtype: compute dtype of the output (statistics are computed in at least float32).
    """

    group_size: int | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        pd = self.param_dtype
        scale = self.param("scale", nn.initializers.ones, (c,), pd)
        bias = self.param("bias", nn.initializers.zeros, (c,), pd)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), pd))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), pd))
        dtype = self.dtype or x.dtype

        if not train:
            mean, var = ra_mean.value, ra_var.value
            mul = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
            return (x * mul.astype(dtype) + (bias - mean * mul).astype(dtype)).astype(dtype)

        b = x.shape[0]
        g = self.group_size or b
        if b % g:
            raise ValueError(
                f"batch of {b} clips is not a multiple of bn_group_size={g}; "
                "choose a batch size divisible by the BN group size"
            )
        stat_dtype = jnp.promote_types(jnp.float32, x.dtype)
        xg = x.reshape((b // g, g * (x.size // (b * c)), c)).astype(stat_dtype)
        mean = jnp.mean(xg, axis=1)  # (groups, C)
        var = jnp.mean(jnp.square(xg - mean[:, None]), axis=1)
        if not self.is_initializing():
            n = xg.shape[1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=0)
            ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(unbiased, axis=0)
        mul = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))  # (groups, C)
        add = bias - mean * mul
        y = xg * mul[:, None] + add[:, None]
        return y.reshape(x.shape).astype(dtype)
