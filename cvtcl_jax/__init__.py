"""cvtcl-jax: cross-view temporal contrastive learning of video representations in JAX.

The layers, each importing only those before it (README, Layout): sharding, data, flow; models;
the method (losses, queue, state, steps, optim) with checkpoints and export; training; eval;
modes. The learning core (`models`, `losses`, `queue`, `state`, `steps`, `sharding`) imports
neither TensorFlow, clu nor ml_collections, so it runs on accelerator hosts that lack them.
"""

__version__ = "0.1.0"
