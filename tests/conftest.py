"""Test set-up: 8 emulated CPU devices, so every test run exercises sharding."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
