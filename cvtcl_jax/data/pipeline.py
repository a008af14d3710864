"""tf.data pipelines from a prepared TFDS dataset's record files to host-local NumPy batches.

Pretraining (`pretrain_dataset`): an endless, shuffled stream of samples, each with

  query, key   (T, S, S, 3) uint8   two clips at independent random positions (trained view)
  anchor       (L, S, S, 3) uint8   LTCL segment s_1 (for f_q)                    [LTCL on]
  segments     (S_n, L, S, S, 3)    [s_1 again, s_2, ..., s_n] each with its own augmentation [LTCL on]
  other_key    (T, S, S, 3) uint8   the key clip in the other view: same frames, crop and flip [co-training]
  ids          ()  int32            source id (queue entries of the same source are positives)
  padded       ()  bool             the video was shorter than a clip and was looped
  <clip>_color (12,) float32        with `aug.on_device` 'color' or 'resize': the colour parameters
                                    of each clip that gets colour operations, which device_augment
                                    applies ((S_n, 12) for segments)
  <clip>_window (6,) int32          with `aug.on_device` 'resize': [y, x, h, w, flip, flow], the
                                    crop window inside the shipped frames, which are then the
                                    whole decoded frames (.., T, H, W, 3) uint8, padded with zeros
                                    below and right to the subset's largest stored frame; 'anchor'
                                    itself is not shipped (the devices cut it from segments[:, 0])

batched to the host's share of the global batch. `device_augment.make_batch_augmenter` turns every
shipped batch into the model's input (uint8 clips of S x S). Classifier training
(`labelled_clip_dataset`): one augmented clip per video per epoch with its label (and its
`<view>_color` / `<view>_window` as above).
Evaluation (`eval_dataset`): every clip of every video at a fixed stride, centre or ten crops, in
file order, one row per (clip, crop):

  <view>       (T, S, S, 3) uint8   for each requested view ('rgb', 'flow')
  video_index, label, clip_start, crop  () int32
  mask         ()  bool             False on the rows that pad the last batch

Determinism: every random choice is a stateless function of (seed, host, sample number), and the
stream is a fixed sequence of epochs (files permuted and records shuffled with per-epoch seeds),
so a run restarted with `start_step` continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import tensorflow as tf

from cvtcl_jax.data import augment, device_augment, records, sampling
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetError, DatasetInfo, host_shards
from cvtcl_jax.data.device_augment import COLOR_SUFFIX, WINDOW_SUFFIX

# Finished training batches held ready on the host: a fixed count, so the host's memory is bounded
# by (HOST_PREFETCH + 1) batches plus the samples in flight (one per pool thread).
HOST_PREFETCH = 2
_CONTEXT = ("label", "source_id", "video_index", "num_frames", "num_flow", "height", "width")


def _parse(info: DatasetInfo, raw, views):
    """One serialized example -> (numbers, {view: (n,) JPEG bytes}, usable clip positions n).

    The shards are read as record files (not through `tfds.as_dataset`) so that file order,
    per-host sharding and the resume position stay ours; TFDS's features parse each record.
    """
    example = records.parser(info.features, (*_CONTEXT, *views))(raw)
    context = {k: example[k] for k in _CONTEXT}
    # With flow, frame i's flow (between frames i and i + 1) must exist: n - 1 usable positions.
    n = context["num_flow"] if "flow" in views else context["num_frames"]
    frames = {v: example[v] for v in views}
    return context, frames, n


def _options(threads: int | None) -> tf.data.Options:
    """Deterministic order; `threads` caps the pipeline's thread pool (None: one per core)."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    if threads:
        options.threading.private_threadpool_size = threads
    return options


def _check_views(info: DatasetInfo, views) -> None:
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


def _vectors(name, view, params, aug: AugmentConfig) -> dict:
    """A clip's `<name>_color` (clips coloured on the devices) and `<name>_window` (on_device
    'resize') entries; params is one clip's draw, or a list of draws for a (S, ...) stack."""
    is_flow = view == "flow"
    kinds = []
    if augment.colored_on_device(aug, is_flow=is_flow):
        kinds.append((COLOR_SUFFIX, augment.color_vector))
    if aug.on_device == "resize":
        kinds.append((WINDOW_SUFFIX, lambda p: augment.window_vector(p, is_flow)))
    if isinstance(params, list):
        return {name + suffix: tf.stack([fn(p) for p in params]) for suffix, fn in kinds}
    return {name + suffix: fn(params) for suffix, fn in kinds}


def _finished_clips(frames, clips, aug: AugmentConfig, size: int) -> dict:
    """on_device 'none' / 'color': each clip decoded in its crop window, resized, flipped (and
    coloured with 'none') by tf.data: {name: (..., T, size, size, 3) uint8}."""
    out = {}
    for name, view, indices, params in clips:

        def one(idx, p, view=view):
            return augment.augment_clip(tf.gather(frames[view], idx), p, aug, size, is_flow=view == "flow")

        if isinstance(params, list):
            out[name] = tf.stack([one(indices[i], p) for i, p in enumerate(params)])
        else:
            out[name] = one(indices, params)
    return out


def _whole_frames(frames, clips, pad_hw) -> dict:
    """on_device 'resize': {name: (..., T, *pad_hw, 3) uint8} the clips' whole frames, each
    distinct frame of a view decoded once (clips of a sample overlap, and short videos loop); the
    anchor is not shipped, its frames are segments[:, 0] (device_augment.SHARED_FRAMES)."""
    out = {}
    shipped = [c for c in clips if c[0] not in device_augment.SHARED_FRAMES]
    for view in dict.fromkeys(c[1] for c in shipped):
        mine = [c for c in shipped if c[1] == view]
        wanted = tf.concat([tf.reshape(c[2], [-1]) for c in mine], axis=0)
        distinct, where = tf.unique(wanted)
        decoded = augment.pad_frames(augment.decode_full(tf.gather(frames[view], distinct)), pad_hw)
        # Without repeats `distinct` is `wanted` in order: no copy of the frames to put them back.
        repeats = tf.size(distinct) < tf.size(wanted)
        decoded = tf.cond(repeats, lambda d=decoded, i=where: tf.gather(d, i), lambda d=decoded: d)
        parts = tf.split(decoded, [c[2].shape.num_elements() for c in mine])
        for (name, _, indices, _), part in zip(mine, parts, strict=True):
            out[name] = tf.reshape(part, [*indices.shape, *pad_hw, 3])
    return out


def pretrain_sample(
    info: DatasetInfo, raw, sample_seed, views, spec: ClipSpec, aug: AugmentConfig, pad_hw=None
):
    """One raw record -> one pretraining sample (see the module docstring). views[0] is trained.

    pad_hw: (H, W) the subset's largest stored frame (on_device 'resize' pads every clip to it).
    """
    context, frames, n = _parse(info, raw, views)
    train, other = views[0], (views[1] if len(views) > 1 else None)
    h, w = context["height"], context["width"]
    s = tf.random.experimental.stateless_split(sample_seed, num=8)
    t = spec.num_frames
    tf.debugging.assert_positive(n, message="a video without frames (or without flow) reached the pipeline")

    def draw(seed):
        return augment.draw_params(seed, h, w, aug)

    # (name, view, frame indices (T,) or (S, L), one draw or S draws): the same in every mode.
    k_idx, k_params = sampling.clip_indices(n, t, s[3]), draw(s[1])
    clips = [("query", train, sampling.clip_indices(n, t, s[2]), draw(s[0])), ("key", train, k_idx, k_params)]
    if other is not None:
        clips.append(("other_key", other, k_idx, k_params))
    if spec.num_segments:
        seg = sampling.segment_indices(n, spec.num_segments, spec.segment_len, s[4])
        seg_seeds = tf.random.experimental.stateless_split(s[6], num=spec.num_segments)
        clips.append(("anchor", train, seg[0], draw(s[5])))
        clips.append(("segments", train, seg, [draw(seg_seeds[i]) for i in range(spec.num_segments)]))
    out = {"ids": context["source_id"], "padded": n < spec.frames_needed}
    if aug.on_device == "resize":
        out.update(_whole_frames(frames, clips, pad_hw))
    else:
        out.update(_finished_clips(frames, clips, aug, spec.crop_size))
    for name, view, _, params in clips:
        out.update(_vectors(name, view, params, aug))
    return out


def labelled_clip_sample(
    info: DatasetInfo, raw, sample_seed, view: str, spec: ClipSpec, aug: AugmentConfig, pad_hw=None
):
    """One raw record -> one augmented clip at a random position with its label (classifiers)."""
    context, frames, n = _parse(info, raw, (view,))
    s = tf.random.experimental.stateless_split(sample_seed, num=2)
    tf.debugging.assert_positive(n, message="a video without frames (or without flow) reached the pipeline")
    params = augment.draw_params(s[0], context["height"], context["width"], aug)
    clips = [(view, view, sampling.clip_indices(n, spec.num_frames, s[1]), params)]
    if aug.on_device == "resize":
        out = _whole_frames(frames, clips, pad_hw)
    else:
        out = _finished_clips(frames, clips, aug, spec.crop_size)
    out.update(_vectors(view, view, params, aug))
    out.update(label=context["label"], padded=n < spec.num_frames)
    return out


def _sample_stream(
    info: DatasetInfo,
    subset: str,
    local_batch: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    shuffle_buffer: int,
    cycle_length: int,
    threads: int | None,
    sample_fn,
) -> tf.data.Dataset:
    """Endless batches of sample_fn(raw record, stateless seed) over shuffled epochs of this host's
    videos; `start_step` batches are skipped exactly (resume)."""
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
    return ds.prefetch(HOST_PREFETCH).with_options(_options(threads))


def _check_blur(aug: AugmentConfig, spec: ClipSpec) -> None:
    if aug.blur_prob > 0 and spec.crop_size <= aug.blur_kernel_size // 2:
        raise ValueError(
            f"blur_kernel_size {aug.blur_kernel_size} is too large for crop_size {spec.crop_size}; "
            "use a kernel below twice the crop size"
        )


def _pad_shape(info: DatasetInfo, subset: str, aug: AugmentConfig):
    """The static (H, W) every shipped frame is padded to with on_device 'resize', else None."""
    return info.subset(subset).require_max_frame_size() if aug.on_device == "resize" else None


def pretrain_dataset(
    info: DatasetInfo,
    *,
    subset: str,
    views: tuple[str, ...],
    local_batch: int,
    spec: ClipSpec,
    aug: AugmentConfig,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 256,
    cycle_length: int = 8,
    threads: int | None = None,
) -> tf.data.Dataset:
    """Endless batches of pretraining samples for this host (see the module docstring).

    views: ('rgb',), ('flow',) for initialization; (trained, other) for co-training.
    start_step: batches already consumed (resume); the stream continues exactly where it was.
    """
    _check_views(info, views)
    _check_blur(aug, spec)
    pad_hw = _pad_shape(info, subset, aug)
    if not 1 <= len(views) <= 2:
        raise DatasetError(f"pretraining takes one view or two (trained, other); got {views}")
    return _sample_stream(
        info,
        subset,
        local_batch,
        seed,
        start_step,
        process_index,
        process_count,
        shuffle_buffer,
        cycle_length,
        threads,
        lambda raw, sample_seed: pretrain_sample(info, raw, sample_seed, views, spec, aug, pad_hw),
    )


def labelled_clip_dataset(
    info: DatasetInfo,
    *,
    subset: str,
    view: str,
    local_batch: int,
    spec: ClipSpec,
    aug: AugmentConfig,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_buffer: int = 256,
    cycle_length: int = 8,
    threads: int | None = None,
) -> tf.data.Dataset:
    """Endless batches {view: (B, T, S, S, 3) uint8, 'label', 'padded'}: one augmented clip per
    video per epoch, for the linear probe and finetuning. Deterministic and resumable like
    `pretrain_dataset`."""
    _check_views(info, (view,))
    _check_blur(aug, spec)
    pad_hw = _pad_shape(info, subset, aug)
    return _sample_stream(
        info,
        subset,
        local_batch,
        seed,
        start_step,
        process_index,
        process_count,
        shuffle_buffer,
        cycle_length,
        threads,
        lambda raw, sample_seed: labelled_clip_sample(info, raw, sample_seed, view, spec, aug, pad_hw),
    )


def middle_frames(info: DatasetInfo, subset: str, view: str, video_indices) -> dict:
    """{video_index: (H, W, 3) uint8} the middle frame of each requested video (for pictures).

    The shards are read in parallel and filtered on the video index before any frame is decoded.
    """
    _check_views(info, (view,))
    wanted = tf.constant(sorted({int(v) for v in video_indices}), tf.int32)

    index_of = records.parser(info.features, ("video_index",))

    def is_wanted(raw):
        return tf.reduce_any(tf.equal(index_of(raw)["video_index"], wanted))

    def middle(raw):
        context, frames, _ = _parse(info, raw, (view,))
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
    context, frames, n = _parse(info, raw, views)
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
    _check_views(info, views)
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
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))
