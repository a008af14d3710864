"""Which frames to read: temporal sampling as pure TensorFlow functions of a stateless seed.

Indices are chosen before anything is decoded, so only the frames a clip uses are ever decoded.
A video shorter than what is asked for is looped (frame i of the request reads frame i mod n):
the sample keeps its shape and the caller counts it as padded (docs/method.md §5).
"""

from __future__ import annotations

import tensorflow as tf


def clip_indices(num_available, length: int, seed):
    """(length,) int32 consecutive frame indices starting at a uniform random position.

    num_available: scalar int, frames that can be read (n). seed: (2,) int stateless seed.
    Start is uniform over [0, n - length]; for n < length the indices loop over the video.
    """
    n = tf.maximum(tf.cast(num_available, tf.int32), 1)
    max_start = tf.maximum(n - length, 0)
    start = tf.random.stateless_uniform([], seed, minval=0, maxval=max_start + 1, dtype=tf.int32)
    return (start + tf.range(length, dtype=tf.int32)) % n


def segment_indices(num_available, num_segments: int, segment_len: int, seed):
    """(S, L) int32: S non-overlapping segments of L frames tiling one window at a random position."""
    return tf.reshape(
        clip_indices(num_available, num_segments * segment_len, seed), (num_segments, segment_len)
    )


def dense_clip_starts(num_available, length: int, stride: int):
    """(C,) int32 starts of the evaluation clips: every `stride` frames, plus one clip ending on the
    last frame if the stride does not land there, so the clips cover the whole video."""
    n = tf.maximum(tf.cast(num_available, tf.int32), 1)
    last = tf.maximum(n - length, 0)
    starts = tf.range(0, last + 1, stride, dtype=tf.int32)
    return tf.cond(starts[-1] < last, lambda: tf.concat([starts, [last]], 0), lambda: starts)


def window_indices(start, length: int, num_available):
    """(length,) int32 indices start, start + 1, ... (looping for short videos)."""
    n = tf.maximum(tf.cast(num_available, tf.int32), 1)
    return (start + tf.range(length, dtype=tf.int32)) % n
