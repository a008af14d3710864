"""Training samples from a prepared dataset: pretraining samples and labelled clips for the classifiers.

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
`<view>_color` / `<view>_window` as above). Both are record_stream.py's deterministic, resumable
streams. Inside a sample, each clip is first requested (`ClipRequest`: which frames, which
augmentation draw), then decoded the way `aug.on_device` asks.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from cvtcl_jax.data import augment, device_augment, record_stream, sampling
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetError, DatasetInfo
from cvtcl_jax.data.device_augment import color_key, window_key


class ClipRequest(NamedTuple):
    """One clip of a sample, before decoding: its batch key `name`, its `view`, its frame
    `indices` ((T,), or (S, L) for a stack of segments) and its augmentation draw `params` (one
    draw, or a list of S draws for a stack)."""

    name: str
    view: str
    indices: tf.Tensor
    params: dict | list[dict]


def _vectors(clip: ClipRequest, aug: AugmentConfig) -> dict:
    """A clip's colour parameters (clips coloured on the devices) and crop window (on_device
    'resize') entries, under device_augment's color_key / window_key."""
    is_flow = clip.view == "flow"
    kinds = []
    if augment.colored_on_device(aug, is_flow=is_flow):
        kinds.append((color_key, augment.color_vector))
    if aug.on_device == "resize":
        kinds.append((window_key, lambda p: augment.window_vector(p, is_flow)))
    if isinstance(clip.params, list):
        return {key(clip.name): tf.stack([fn(p) for p in clip.params]) for key, fn in kinds}
    return {key(clip.name): fn(clip.params) for key, fn in kinds}


def _finished_clips(frames, clips, aug: AugmentConfig, size: int) -> dict:
    """on_device 'none' / 'color': each clip decoded in its crop window, resized, flipped (and
    coloured with 'none') by tf.data: {name: (..., T, size, size, 3) uint8}."""
    out = {}
    for clip in clips:

        def one(idx, p, view=clip.view):
            return augment.augment_clip(tf.gather(frames[view], idx), p, aug, size, is_flow=view == "flow")

        if isinstance(clip.params, list):
            out[clip.name] = tf.stack([one(clip.indices[i], p) for i, p in enumerate(clip.params)])
        else:
            out[clip.name] = one(clip.indices, clip.params)
    return out


def _whole_frames(frames, clips, pad_hw) -> dict:
    """on_device 'resize': {name: (..., T, *pad_hw, 3) uint8} the clips' whole frames, each
    distinct frame of a view decoded once (clips of a sample overlap, and short videos loop); the
    anchor is not shipped, its frames are segments[:, 0] (device_augment.SHARED_FRAMES)."""
    out = {}
    shipped = [c for c in clips if c.name not in device_augment.SHARED_FRAMES]
    for view in dict.fromkeys(c.view for c in shipped):
        mine = [c for c in shipped if c.view == view]
        wanted = tf.concat([tf.reshape(c.indices, [-1]) for c in mine], axis=0)
        distinct, where = tf.unique(wanted)
        decoded = augment.pad_frames(augment.decode_full(tf.gather(frames[view], distinct)), pad_hw)
        # Without repeats `distinct` is `wanted` in order: no copy of the frames to put them back.
        repeats = tf.size(distinct) < tf.size(wanted)
        decoded = tf.cond(repeats, lambda d=decoded, i=where: tf.gather(d, i), lambda d=decoded: d)
        parts = tf.split(decoded, [c.indices.shape.num_elements() for c in mine])
        for clip, part in zip(mine, parts, strict=True):
            out[clip.name] = tf.reshape(part, [*clip.indices.shape, *pad_hw, 3])
    return out


def pretrain_sample(
    info: DatasetInfo, raw, sample_seed, views, spec: ClipSpec, aug: AugmentConfig, pad_hw=None
):
    """One raw record -> one pretraining sample (see the module docstring). views[0] is trained.

    pad_hw: (H, W) the subset's largest stored frame (on_device 'resize' pads every clip to it).
    """
    context, frames, n = record_stream.parse_example(info, raw, views)
    train, other = views[0], (views[1] if len(views) > 1 else None)
    h, w = context["height"], context["width"]
    s = tf.random.experimental.stateless_split(sample_seed, num=8)
    t = spec.num_frames
    tf.debugging.assert_positive(n, message="a video without frames (or without flow) reached the pipeline")

    def draw(seed):
        return augment.draw_params(seed, h, w, aug)

    # The requests are the same in every on_device mode; only their decoding differs.
    key = ClipRequest("key", train, sampling.clip_indices(n, t, s[3]), draw(s[1]))
    clips = [ClipRequest("query", train, sampling.clip_indices(n, t, s[2]), draw(s[0])), key]
    if other is not None:
        clips.append(key._replace(name="other_key", view=other))
    if spec.num_segments:
        seg = sampling.segment_indices(n, spec.num_segments, spec.segment_len, s[4])
        seg_seeds = tf.random.experimental.stateless_split(s[6], num=spec.num_segments)
        clips.append(ClipRequest("anchor", train, seg[0], draw(s[5])))
        draws = [draw(seg_seeds[i]) for i in range(spec.num_segments)]
        clips.append(ClipRequest("segments", train, seg, draws))
    out = {"ids": context["source_id"], "padded": n < spec.frames_needed}
    if aug.on_device == "resize":
        out.update(_whole_frames(frames, clips, pad_hw))
    else:
        out.update(_finished_clips(frames, clips, aug, spec.crop_size))
    for clip in clips:
        out.update(_vectors(clip, aug))
    return out


def labelled_clip_sample(
    info: DatasetInfo, raw, sample_seed, view: str, spec: ClipSpec, aug: AugmentConfig, pad_hw=None
):
    """One raw record -> one augmented clip at a random position with its label (classifiers)."""
    context, frames, n = record_stream.parse_example(info, raw, (view,))
    s = tf.random.experimental.stateless_split(sample_seed, num=2)
    tf.debugging.assert_positive(n, message="a video without frames (or without flow) reached the pipeline")
    params = augment.draw_params(s[0], context["height"], context["width"], aug)
    clips = [ClipRequest(view, view, sampling.clip_indices(n, spec.num_frames, s[1]), params)]
    if aug.on_device == "resize":
        out = _whole_frames(frames, clips, pad_hw)
    else:
        out = _finished_clips(frames, clips, aug, spec.crop_size)
    out.update(_vectors(clips[0], aug))
    out.update(label=context["label"], padded=n < spec.num_frames)
    return out


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
    info: DatasetInfo, *, subset: str, views: tuple[str, ...], spec: ClipSpec, aug: AugmentConfig, **stream
) -> tf.data.Dataset:
    """Endless batches of pretraining samples for this host (see the module docstring).

    views: ('rgb',), ('flow',) for initialization; (trained, other) for co-training.
    stream: local_batch, seed and the rest of record_stream.sample_stream's keywords (start_step:
      batches already consumed; the stream continues exactly where it was).
    """
    record_stream.check_views(info, views)
    _check_blur(aug, spec)
    pad_hw = _pad_shape(info, subset, aug)
    if not 1 <= len(views) <= 2:
        raise DatasetError(f"pretraining takes one view or two (trained, other); got {views}")
    return record_stream.sample_stream(
        info,
        lambda raw, sample_seed: pretrain_sample(info, raw, sample_seed, views, spec, aug, pad_hw),
        subset=subset,
        **stream,
    )


def labelled_clip_dataset(
    info: DatasetInfo, *, subset: str, view: str, spec: ClipSpec, aug: AugmentConfig, **stream
) -> tf.data.Dataset:
    """Endless batches {view: (B, T, S, S, 3) uint8, 'label', 'padded'}: one augmented clip per
    video per epoch, for the linear probe and finetuning. Deterministic and resumable like
    `pretrain_dataset` (stream: the same keywords)."""
    record_stream.check_views(info, (view,))
    _check_blur(aug, spec)
    pad_hw = _pad_shape(info, subset, aug)
    return record_stream.sample_stream(
        info,
        lambda raw, sample_seed: labelled_clip_sample(info, raw, sample_seed, view, spec, aug, pad_hw),
        subset=subset,
        **stream,
    )
