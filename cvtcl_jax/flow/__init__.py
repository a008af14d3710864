"""Optical flow on the accelerator: OpenCV's Dual TV-L1 in JAX, importable without TensorFlow.

  tvl1      the algorithm on a batch of pairs of one size
  batching  FlowBatcher: a stream of pairs of any sizes, batched by size
  params    OpenCV's parameters (no JAX import)

from cvtcl_jax.flow.tvl1 import tvl1_flow          # a batch of pairs of one size
from cvtcl_jax.flow.batching import FlowBatcher    # a stream of pairs of any sizes
from cvtcl_jax.flow.params import TVL1Params       # OpenCV's parameters (no JAX import)
"""
