"""Reading a prepared dataset's record files: parsed examples, and endless, resumable streams.

`sample_stream` turns this host's share of a subset into an endless sequence of epochs (files
permuted and records shuffled with per-epoch seeds), maps a sample function over it with a
stateless seed per sample number and batches it, so that a run restarted at `start_step` sees
exactly the batches it would have seen: every random choice is a function of (seed, host, sample
number). training_clips.py's datasets are such streams; eval_clips.py reads the files in order.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from cvtcl_jax.data import records
from cvtcl_jax.data.dataset_info import DatasetError, DatasetInfo, host_shards

# Finished training batches held ready on the host: a fixed count, so the host's memory is bounded
# by (HOST_PREFETCH + 1) batches plus the samples in flight (one per pool thread).
HOST_PREFETCH = 2
_CONTEXT = ("label", "source_id", "video_index", "num_frames", "num_flow", "height", "width")


class ParsedExample(NamedTuple):
    """One video's record: `context` its numbers ({label, source_id, video_index, num_frames,
    num_flow, height, width}: () int tensors), `frames` {view: (n,) JPEG bytes}, `positions` the
    frame positions a clip may use (n - 1 with flow: frame i's flow goes to frame i + 1)."""

    context: dict
    frames: dict
    positions: tf.Tensor


def parse_example(info: DatasetInfo, raw, views) -> ParsedExample:
    """One serialized example -> its ParsedExample.

    The shards are read as record files (not through `tfds.as_dataset`) so that file order,
    per-host sharding and the resume position stay ours; TFDS's features parse each record.
    """
    example = records.parser(info.features, (*_CONTEXT, *views))(raw)
    context = {k: example[k] for k in _CONTEXT}
    # With flow, frame i's flow (between frames i and i + 1) must exist: n - 1 usable positions.
    n = context["num_flow"] if "flow" in views else context["num_frames"]
    frames = {v: example[v] for v in views}
    return ParsedExample(context, frames, n)


def stream_options(threads: int | None) -> tf.data.Options:
    """Deterministic order; `threads` caps the pipeline's thread pool (None: one per core)."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if threads:
        options.threading.private_threadpool_size = threads
    return options


def check_views(info: DatasetInfo, views) -> None:
    info.check_views(views)
    if len(set(views)) != len(views):
        raise DatasetError(f"views {views} repeat a view")


def _records(files, epoch, seed: int, shuffle_buffer: int, cycle_length: int):
    """One epoch of raw records: files in a per-epoch random order, interleaved, shuffled."""
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
    order = tf.argsort(tf.random.stateless_uniform([len(files)], epoch_seed))
    ds = tf.data.Dataset.from_tensor_slices(tf.gather(tf.constant(files), order))
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    shuffle_seed = tf.constant(seed % 2**31, tf.int64) * 1_000_003 + epoch  # stays inside int64
    return ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)


def sample_stream(
    info: DatasetInfo,
    sample_fn,
    *,
    subset: str,
    local_batch: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 256,
    cycle_length: int = 8,
    threads: int | None = None,
) -> tf.data.Dataset:
    """Endless batches of `local_batch` sample_fn(raw record, stateless seed) over shuffled epochs
    of this host's videos (host `process_index` of `process_count`) of `subset`.

    start_step: batches already consumed (resume); they are skipped exactly, so the stream
    continues where it was. threads: caps tf.data's thread pool (None: one per core)."""
    files, count = host_shards(info.subset(subset), process_index, process_count)
    if count == 0:
        raise DatasetError(f"the {subset} split of {info.name} has no videos on host {process_index}")
    host_seed = seed * 65_537 + process_index
    first = start_step * local_batch
    epoch0 = first // count
    epochs = tf.data.Dataset.counter(start=epoch0)
    ds = epochs.flat_map(
        lambda e: _records(files, e, host_seed, shuffle_buffer, min(cycle_length, len(files)))
    )
    # Sample numbers are global over epochs, so sample k gets the same randomness on a resume.
    ds = ds.enumerate(start=epoch0 * count).skip(first - epoch0 * count)
    ds = ds.map(
        lambda i, raw: sample_fn(raw, tf.stack([tf.constant(host_seed, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(HOST_PREFETCH).with_options(stream_options(threads))
