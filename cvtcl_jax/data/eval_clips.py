"""Evaluation clips from a prepared dataset: every clip of every video at a fixed stride, centre
or ten crops, in file order (`eval_dataset`), and a video's middle frame for the pictures
(`middle_frames`).

`eval_dataset` yields one row per (clip, crop):

  <view>       (T, S, S, 3) uint8   for each requested view ('rgb', 'flow')
  video_index, label, clip_start, crop  () int32
  mask         ()  bool             False on the rows that pad the last batch
"""

from __future__ import annotations

import tensorflow as tf

from cvtcl_jax.data import augment, record_stream, records, sampling
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetInfo, host_shards


def eval_dataset(
    info: DatasetInfo,
    *,
    subset: str,
    views: tuple[str, ...],
    local_batch: int,
    spec: ClipSpec,
    stride: int = 16,
    crops: str = "center",
    ten_crop_scale: float = 0.875,
    process_index: int = 0,
    process_count: int = 1,
    threads: int | None = None,
    max_videos: int | None = None,
) -> tf.data.Dataset:
    """One pass over this host's videos: dense clips, no random augmentation, last batch padded.

    Rows of a few videos are interleaved (decoded in parallel); average over the rows with the
    same video_index and mask True.
    Hosts may end after different numbers of batches: the evaluation loop pads the short ones.
    max_videos: only that many videos of this host, the first of each shard in turn (a quick subset).
    """
    record_stream.check_views(info, views)
    augment.check_eval_crops(crops, ten_crop_scale)
    if stride < 1:
        raise ValueError(f"eval stride must be >= 1; got {stride}")
    files, _ = host_shards(info.subset(subset), process_index, process_count)
    ds = tf.data.TFRecordDataset(files)
    if max_videos:  # round-robin over the shards: shards hold sorted videos, this spreads classes
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            tf.data.TFRecordDataset, cycle_length=len(files), block_length=1, deterministic=True
        )
        ds = ds.take(max_videos)
    ds = ds.interleave(
        lambda raw: _eval_rows(info, raw, views, spec, stride, crops, ten_crop_scale),
        cycle_length=4,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(local_batch, drop_remainder=False).map(lambda b: _pad_batch(b, local_batch))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(record_stream.stream_options(threads))


def middle_frames(info: DatasetInfo, subset: str, view: str, video_indices) -> dict:
    """{video_index: (H, W, 3) uint8} the middle frame of each requested video (for pictures).

    The shards are read in parallel and filtered on the video index before any frame is decoded.
    """
    record_stream.check_views(info, (view,))
    wanted = tf.constant(sorted({int(v) for v in video_indices}), tf.int32)

    index_of = records.parser(info.features, ("video_index",))

    def is_wanted(raw):
        return tf.reduce_any(tf.equal(index_of(raw)["video_index"], wanted))

    def middle(raw):
        context, frames, _ = record_stream.parse_example(info, raw, (view,))
        jpegs = frames[view]
        return context["video_index"], tf.io.decode_jpeg(
            jpegs[tf.shape(jpegs)[0] // 2], channels=3, dct_method=augment.JPEG_DCT
        )

    files = list(info.subset(subset).shards)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE
    )
    ds = ds.filter(is_wanted).map(middle, num_parallel_calls=tf.data.AUTOTUNE)
    return {int(index): frame for index, frame in ds.as_numpy_iterator()}


def _eval_rows(info: DatasetInfo, raw, views, spec: ClipSpec, stride: int, crops: str, ten_crop_scale: float):
    """One raw record -> a dataset of rows, one per (dense clip, crop)."""
    context, frames, n = record_stream.parse_example(info, raw, views)
    h, w = context["height"], context["width"]
    starts = sampling.dense_clip_starts(n, spec.num_frames, stride)
    windows = augment.eval_windows(h, w, crops, ten_crop_scale)
    n_win = 1 if crops == "center" else 5

    def clip_rows(start):
        """(R, ...) rows of one clip: R = 1 (centre) or 10 (five windows and their flips)."""
        idx = sampling.window_indices(start, spec.num_frames, n)
        row = {}
        for view in views:
            is_flow = view == "flow"
            jpegs = tf.gather(frames[view], idx)
            if n_win == 1:
                x = augment.resize(augment.decode_window(jpegs, windows[0]), spec.crop_size)[None]
            else:
                full = augment.decode_full(jpegs)
                x = tf.stack(
                    [
                        augment.resize(
                            full[
                                :,
                                windows[j, 0] : windows[j, 0] + windows[j, 2],
                                windows[j, 1] : windows[j, 1] + windows[j, 3],
                            ],
                            spec.crop_size,
                        )
                        for j in range(n_win)
                    ]
                )
                x = tf.concat([x, augment.flip(x, is_flow)], axis=0)
            row[view] = augment.to_uint8(x, spec.crop_size)
        num_rows = augment.EVAL_CROPS[crops]
        row["crop"] = tf.range(num_rows, dtype=tf.int32)
        for key, value in (
            ("video_index", context["video_index"]),
            ("label", context["label"]),
            ("clip_start", start),
        ):
            row[key] = tf.fill([num_rows], value)
        return row

    clips = tf.data.Dataset.from_tensor_slices(starts)
    return clips.map(clip_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _pad_batch(batch, local_batch: int):
    n = tf.shape(batch["video_index"])[0]
    out = {}
    for key, value in batch.items():
        pad = [[0, local_batch - n]] + [[0, 0]] * (len(value.shape) - 1)
        out[key] = tf.pad(value, pad)
    out["mask"] = tf.range(local_batch) < n
    return out
