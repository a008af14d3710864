"""Training batches on the devices: the training subset through the tf.data pipeline with the
config's data settings, this host's share, from a given batch on, prefetched to the mesh with the
augmentation's on-device tail applied as they are sent."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import jax
from jax.sharding import Mesh

from cvtcl_jax.data import device_augment
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import host_shards
from cvtcl_jax.data.records import naming_damaged_records
from cvtcl_jax.sharding import prefetch_to_mesh


def run_seed(seed: int, name: str) -> int:
    """The seed of one training run (a stage, a classifier of one view) from config.seed and the
    run's name: its initialization and its input stream, different for every run of a config."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def batches_per_epoch(info, global_batch: int) -> int:
    """Batches of one epoch over the training subset (the last partial batch is dropped)."""
    return info.subset("train").num_videos // global_batch


def device_batches(
    config, info, mesh: Mesh, dataset_fn: Callable, spec: ClipSpec, seed: int, start: int, **dataset_kw
) -> Iterator[dict]:
    """Global batches of the training subset from batch `start` on (an exact resume).

    dataset_fn: `training_clips.pretrain_dataset` (dataset_kw: views) or `labelled_clip_dataset`
    (view). Each batch keeps `padded` (how many of its videos repeat, per host) on the host.
    """
    d = config.data
    ds = dataset_fn(
        info,
        subset="train",
        local_batch=config.global_batch // jax.process_count(),
        spec=spec,
        aug=AugmentConfig(**d.aug),
        seed=seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        shuffle_buffer=d.shuffle_buffer,
        threads=d.threads,
        **dataset_kw,
    )
    files, _ = host_shards(info.subset("train"), jax.process_index(), jax.process_count())
    return prefetch_to_mesh(
        naming_damaged_records(ds.as_numpy_iterator(), files),
        mesh,
        d.prefetch,
        host_keys=("padded",),
        transform=device_augment.make_batch_augmenter(mesh, d.aug.blur_kernel_size, spec.crop_size),
    )
