"""The tf.data input pipeline on small pattern datasets whose pixels encode frame and video numbers."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from cvtcl_jax.data import augment, device_augment, eval_clips, sampling, training_clips
from cvtcl_jax.data.augment import AugmentConfig
from cvtcl_jax.data.clip_spec import ClipSpec
from cvtcl_jax.data.dataset_info import DatasetError, host_shards, load_dataset_info
from cvtcl_jax.data.random_batches import random_pretrain_batch
from cvtcl_jax.models import IMAGENET_MEAN, IMAGENET_STD, centre_motion, normalize_frames
from cvtcl_jax.sharding import batch_sharding, make_mesh, prefetch_to_mesh, shard_batch
from tests.pattern_records import PATTERN_NAME, frame_number, write_pattern_dataset

# Video lengths (frames). Flow has n - 1 frames, so with flow videos 1 and 5 (10, 14 frames) are
# shorter than the 16 a sample needs and get looped.
LENGTHS = [40, 10, 30, 50, 35, 14, 44, 56, 25, 33, 41, 48]
SPEC = ClipSpec(num_frames=16, crop_size=16, num_segments=4, segment_len=4)
NO_COLOR = AugmentConfig(color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    root = tmp_path_factory.mktemp("pattern")
    write_pattern_dataset(root, LENGTHS)
    return load_dataset_info(root, PATTERN_NAME)


def _train_videos():
    return [v for v in range(len(LENGTHS)) if v % 3 != 2]


def _video_number(clip):
    """(..., T, H, W, 3) -> (...) video number from channel 2 (30 + 10 v)."""
    return np.rint((clip[..., 2].astype(np.float64).mean(axis=(-3, -2, -1)) - 30) / 10).astype(int)


def _batches(ds, n):
    return list(itertools.islice(ds.as_numpy_iterator(), n))


def _pretrain(info, views=("rgb",), aug=NO_COLOR, seed=0, local_batch=4, **kw):
    return training_clips.pretrain_dataset(
        info,
        subset="train",
        views=views,
        local_batch=local_batch,
        spec=SPEC,
        aug=aug,
        seed=seed,
        **kw,
    )


# ---------------------------------------------------------------- frame indices (pure functions)


def test_clip_indices_are_consecutive_and_inside_the_video():
    starts = set()
    for i in range(200):
        idx = sampling.clip_indices(40, 16, tf.constant([3, i])).numpy()
        assert idx.shape == (16,)
        np.testing.assert_array_equal(np.diff(idx), 1)
        assert 0 <= idx[0] and idx[-1] <= 39
        starts.add(int(idx[0]))
    assert starts == set(range(25))  # every start 0..n-T is reachable


def test_short_video_is_looped():
    idx = sampling.clip_indices(5, 12, tf.constant([0, 0])).numpy()
    np.testing.assert_array_equal(idx, np.arange(12) % 5)


def test_segments_tile_one_window_without_overlap():
    for i in range(50):
        seg = sampling.segment_indices(50, 4, 8, tf.constant([1, i])).numpy()
        assert seg.shape == (4, 8)
        flat = seg.reshape(-1)
        np.testing.assert_array_equal(np.diff(flat), 1)  # consecutive, so non-overlapping and in order
        assert len(set(flat)) == 32 and flat[0] >= 0 and flat[-1] <= 49


@pytest.mark.parametrize("n", [16, 17, 40, 47, 48, 5])
def test_dense_clips_cover_the_whole_video(n):
    starts = sampling.dense_clip_starts(n, 16, 16).numpy()
    covered = {(s + j) % n for s in starts for j in range(16)}
    assert covered == set(range(n))
    assert starts[0] == 0 and (n < 16 or starts[-1] == n - 16)
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts)[:-1] == 16)


# ---------------------------------------------------------------- augmentations


def test_jpegs_decode_as_opencv_so_stored_flow_has_no_bias():
    """A flow frame stored as data_prep stores it (smooth dx, dy around 128, OpenCV's JPEG at
    quality 90) decodes as OpenCV's decoder (libjpeg's accurate IDCT) decodes it, without bias.
    TF's default fast IDCT reads such frames about one level low in dx: -0.18 px of flow."""
    import cv2

    from data_prep.video import encode_jpeg

    smooth = cv2.resize(np.random.default_rng(0).normal(128, 12, (8, 11, 2)), (171, 128))
    frame = np.dstack([smooth, np.full((128, 171), 128.0)]).clip(0, 255).round().astype(np.uint8)
    encoded = encode_jpeg(frame[..., ::-1], 90)
    reference = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    jpegs = tf.constant([encoded] * 2)
    fast = tf.io.decode_jpeg(encoded, channels=3).numpy().astype(float)
    assert np.mean(fast[..., 0] - frame[..., 0]) < -0.5  # the bias this guards against

    np.testing.assert_array_equal(augment.decode_full(jpegs).numpy(), np.stack([reference] * 2))
    window = augment.decode_window(jpegs, tf.constant([8, 20, 64, 96])).numpy().astype(int)
    assert np.abs(window - reference[8:72, 20:116]).max() <= 2  # chroma upsampling at the edges
    bias = np.mean(window - frame[8:72, 20:116], axis=(0, 1, 2))  # JPEG's own noise, ~1/10 level
    assert np.all(np.abs(bias) < 0.25), bias


def test_flow_flip_negates_dx_and_rgb_flip_only_mirrors():
    u8 = np.zeros((2, 3, 4, 3), np.uint8)
    u8[..., 0] = np.array([128, 140, 100, 255], np.uint8)  # dx: 0, +, -, max
    u8[..., 1] = 77
    x = tf.constant(u8, tf.float32) / 255.0
    flow = np.rint(augment.flip(x, is_flow=True).numpy() * 255).astype(int)
    rgb = np.rint(augment.flip(x, is_flow=False).numpy() * 255).astype(int)
    np.testing.assert_array_equal(flow[..., 0], 255 - u8[..., ::-1, 0].astype(int))
    np.testing.assert_array_equal(rgb[..., 0], u8[..., ::-1, 0])
    np.testing.assert_array_equal(flow[..., 1], 77)


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="blur_kernel_size"):
        AugmentConfig(blur_kernel_size=12)
    with pytest.raises(ValueError, match="area_range"):
        AugmentConfig(area_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="on_device='yes' must be one of"):
        AugmentConfig(on_device="yes")
    with pytest.raises(ValueError, match="True was 'color'"):
        AugmentConfig(on_device=True)


def test_crop_parameters_follow_the_configured_ranges():
    cfg = AugmentConfig()
    areas, aspects, flips = [], [], []
    for i in range(300):
        p = augment.draw_params(tf.constant([5, i], tf.int64), 96, 128, cfg)
        y, x, h, w = p["crop"].numpy()
        assert 0 <= y and y + h <= 96 and 0 <= x and x + w <= 128
        areas.append(h * w / (96 * 128))
        aspects.append(w / h)
        flips.append(bool(p["flip"]))
    assert 0.18 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.45
    assert 0.7 <= min(aspects) and max(aspects) <= 1.45
    assert 0.4 < np.mean(flips) < 0.6


def test_colour_jitter_changes_rgb_but_flow_keeps_its_values():
    frames = [tf.io.encode_jpeg(np.full((24, 32, 3), v, np.uint8), quality=100) for v in (60, 120, 180)]
    jpegs = tf.stack(frames)
    cfg = AugmentConfig(color_jitter_prob=1.0, blur_prob=0.0, grayscale_prob=0.0, flip_prob=0.0)
    params = augment.draw_params(tf.constant([0, 1], tf.int64), 24, 32, cfg)
    rgb = augment.augment_clip(jpegs, params, cfg, 16, is_flow=False).numpy()
    flow = augment.augment_clip(jpegs, params, cfg, 16, is_flow=True).numpy()
    np.testing.assert_allclose(flow[:, ..., 0].mean(axis=(1, 2)), [60, 120, 180], atol=2)
    assert np.abs(rgb.astype(int) - flow.astype(int)).max() > 5


def _cpu_and_device_colours(clips, cfg, seeds):
    """Each uint8 clip coloured with the draw of its seed by the tf.data path (augment.color_augment)
    and by the device path (device_augment.color_augment): two (N, T, H, W, 3) uint8 arrays."""
    h, w = clips.shape[2:4]
    params = [augment.draw_params(tf.constant([s, 7], tf.int64), h, w, cfg) for s in seeds]
    cpu = np.stack(
        [
            tf.image.convert_image_dtype(
                augment.color_augment(tf.constant(c, tf.float32) / 255.0, p, cfg), tf.uint8, saturate=True
            ).numpy()
            for c, p in zip(clips, params, strict=True)
        ]
    )
    vectors = np.stack([augment.color_vector(p).numpy() for p in params])
    # Jitted, as the augmenter runs it (one compile, not one per eager operation).
    colour = jax.jit(device_augment.color_augment, static_argnums=2)
    device = np.asarray(colour(clips, vectors, cfg.blur_kernel_size))
    return cpu, device, vectors


def test_device_colour_augmentation_is_the_tf_data_one():
    """Same draws, same uint8 clip in: the devices' jitter (every op order), grayscale and blur give
    the tf.data path's uint8 clip, to one level (float rounding at the final truncation)."""
    cfg = AugmentConfig(color_jitter_prob=0.8, grayscale_prob=0.3, blur_prob=0.5, blur_kernel_size=7, hue=0.3)
    rng = np.random.default_rng(0)
    # Non-square frames, so the blur's two axes cannot be swapped unnoticed; smooth + sharp content;
    # frames of one clip at different brightness, so contrast must be about each frame's means.
    base = rng.integers(0, 256, (32, 1, 6, 7, 3)).repeat(3, axis=2).repeat(3, axis=3)
    frame_shift = np.array([-40, 0, 40])[None, :, None, None, None]
    clips = base + frame_shift + rng.integers(-20, 21, (32, 3, 18, 21, 3))
    clips = np.clip(clips, 0, 255).astype(np.uint8)
    cpu, device, vectors = _cpu_and_device_colours(clips, cfg, range(32))
    flags = vectors[:, [device_augment.JITTER, device_augment.GRAY, device_augment.BLUR]]
    assert flags.min(axis=0).tolist() == [0, 0, 0] and flags.max(axis=0).tolist() == [1, 1, 1]
    assert len({tuple(o) for o in vectors[:, device_augment.ORDER][flags[:, 0] > 0]}) >= 8
    diff = np.abs(cpu.astype(int) - device.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.001, (diff.max(), diff.mean())
    assert np.abs(device.astype(int) - clips.astype(int)).mean() > 10  # the operations did act


@pytest.mark.slow
def test_on_device_batches_carry_colour_parameters_and_colour_like_the_pipeline(info):
    """With on_device 'color' the pipeline ships crop/flip-only clips and a colour vector per clip (none for
    flow); the augmenter turns the batch into the pipeline's own coloured batch, to a few levels
    (the clip is rounded to uint8 once more, before the colour operations)."""
    full = AugmentConfig(blur_kernel_size=7)
    on_device = dataclasses.replace(full, on_device="color")
    (cpu,) = _batches(_pretrain(info, views=("rgb", "flow"), aug=full, local_batch=8), 1)
    (raw,) = _batches(_pretrain(info, views=("rgb", "flow"), aug=on_device, local_batch=8), 1)
    colour_keys = {k for k in raw if k.endswith("_color")}
    assert colour_keys == {"query_color", "key_color", "anchor_color", "segments_color"}
    assert raw["query_color"].shape == (8, device_augment.COLOR_PARAMS)
    assert raw["segments_color"].shape == (8, SPEC.num_segments, device_augment.COLOR_PARAMS)
    np.testing.assert_array_equal(raw["other_key"], cpu["other_key"])  # flow: never coloured
    # The benchmarks' TF-free batches (bench/train_step.py --on_device color) have the same entries.
    fake = random_pretrain_batch(np.random.default_rng(0), 8, SPEC, cotrain=True, on_device="color")
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {k: (v.shape, v.dtype) for k, v in raw.items()}
    mesh = make_mesh()
    out = device_augment.make_batch_augmenter(mesh, full.blur_kernel_size, SPEC.crop_size)(
        shard_batch(mesh, {k: v for k, v in raw.items() if k != "padded"})
    )
    assert set(out) == set(cpu) - {"padded"}
    for key in ("query", "key", "anchor", "segments"):
        assert out[key].dtype == jnp.uint8 and out[key].sharding == batch_sharding(mesh)
        diff = np.abs(np.asarray(out[key]).astype(int) - cpu[key].astype(int))
        assert diff.max() <= 4 and diff.mean() < 0.5, (key, diff.max(), diff.mean())
        assert np.abs(raw[key].astype(int) - cpu[key].astype(int)).mean() > 3  # colour was left out
    (clip_batch,) = _batches(
        training_clips.labelled_clip_dataset(
            info, subset="train", view="rgb", local_batch=4, spec=SPEC, aug=on_device, seed=0
        ),
        1,
    )
    assert clip_batch["rgb_color"].shape == (4, device_augment.COLOR_PARAMS)
    no_colour = dataclasses.replace(NO_COLOR, on_device="color")
    assert not any(k.endswith("_color") for k in _batches(_pretrain(info, aug=no_colour), 1)[0])


def test_device_resize_is_tf_image_resize():
    """The devices' bilinear resize of a window inside padded frames equals tf.image.resize of the
    window cut out (up- and downscaling, windows touching every border, 1-pixel windows)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 30, 41, 3)).astype(np.uint8)
    windows = [(0, 0, 30, 41), (3, 5, 7, 9), (29, 40, 1, 1), (10, 0, 20, 41), (0, 20, 30, 21), (4, 2, 25, 13)]
    for size in (16, 37):
        for y, x, h, w in windows:
            expect = tf.image.resize(frames[:, y : y + h, x : x + w], (size, size), method="bilinear").numpy()
            window = jnp.asarray([y, x, h, w, 0, 0], jnp.int32)
            got = np.asarray(device_augment.resize_window(jnp.asarray(frames), window, size))
            np.testing.assert_allclose(got, expect, atol=2e-3, err_msg=str((size, y, x, h, w)))


def _finish(batch, aug, spec=SPEC):
    """A shipped host batch -> the model's batch, by the devices (make_batch_augmenter)."""
    mesh = make_mesh()
    arrays = shard_batch(mesh, {k: v for k, v in batch.items() if k != "padded"})
    out = device_augment.make_batch_augmenter(mesh, aug.blur_kernel_size, spec.crop_size)(arrays)
    return {k: np.asarray(v) for k, v in out.items()}


def _tf_finish(frames, window, color, aug, size):
    """augment.py's (TensorFlow's) resize, flip and colour of one shipped clip: the reference."""
    y, x, h, w, flip, is_flow = (int(v) for v in window)
    clip = augment.resize(frames[:, y : y + h, x : x + w], size)
    if flip:
        clip = augment.flip(clip, bool(is_flow))
    if color is not None:
        c = color
        params = {
            "jitter": c[device_augment.JITTER] > 0,
            "gray": c[device_augment.GRAY] > 0,
            "blur": c[device_augment.BLUR] > 0,
            "sigma": tf.constant(c[device_augment.SIGMA]),
            "factors": tf.constant(c[device_augment.FACTORS]),
            "order": tf.constant(c[device_augment.ORDER].astype(np.int32)),
        }
        clip = augment.color_augment(clip, params, aug)
    return augment.to_uint8(clip, size).numpy()


@pytest.fixture(scope="module")
def mixed_info(tmp_path_factory):
    """The pattern set with two train videos of other frame sizes (one smaller, one taller)."""
    root = tmp_path_factory.mktemp("mixed")
    write_pattern_dataset(root, LENGTHS, sizes={0: (20, 28), 3: (40, 24)})
    return load_dataset_info(root, PATTERN_NAME)


@pytest.mark.parametrize("colour", [True, False])
def test_resize_on_device_gives_the_tf_data_batches(mixed_info, colour):
    """on_device 'resize': the host ships whole decoded frames padded to the subset's largest frame
    with each clip's window vector; the devices' clips equal TensorFlow's crop, resize, flip and
    colour of those frames to one level, and the tf.data batch of on_device 'none' from the same
    draws to the few levels by which decode_and_crop_jpeg's window differs from the whole frame's
    decode at chroma edges."""
    base = AugmentConfig(blur_kernel_size=7) if colour else NO_COLOR
    views = ("rgb", "flow")
    (cpu,) = _batches(_pretrain(mixed_info, views=views, aug=base, local_batch=8), 1)
    resize = dataclasses.replace(base, on_device="resize")
    (raw,) = _batches(_pretrain(mixed_info, views=views, aug=resize, local_batch=8), 1)
    assert mixed_info.subset("train").max_frame_size == (40, 32)
    assert raw["query"].shape == (8, SPEC.num_frames, 40, 32, 3) and "anchor" not in raw
    assert raw["segments"].shape == (8, SPEC.num_segments, SPEC.segment_len, 40, 32, 3)
    assert raw["query_window"].shape == (8, device_augment.WINDOW_PARAMS)
    assert raw["segments_window"].shape == (8, SPEC.num_segments, device_augment.WINDOW_PARAMS)
    assert ("query_color" in raw) == colour and "other_key_color" not in raw
    np.testing.assert_array_equal(raw["other_key_window"][:, :5], raw["key_window"][:, :5])
    assert raw["other_key_window"][:, 5].all() and not raw["key_window"][:, 5].any()
    # The benchmarks' TF-free batches (bench/train_step.py --on_device resize) have the same entries.
    fake = random_pretrain_batch(np.random.default_rng(0), 8, SPEC, True, "resize", frame_hw=(40, 32))
    fake = {k: v for k, v in fake.items() if colour or not k.endswith("_color")}
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {k: (v.shape, v.dtype) for k, v in raw.items()}
    windows = np.concatenate([fake["query_window"], fake["segments_window"].reshape(-1, 6)])
    assert (windows[:, :2] >= 0).all() and (windows[:, 2:4] >= 1).all()
    assert (windows[:, 0] + windows[:, 2] <= 40).all() and (windows[:, 1] + windows[:, 3] <= 32).all()
    out = _finish(raw, resize)
    assert set(out) == set(cpu) - {"padded"}

    def shipped(name, index):
        """(frames, window, colour or None) of one clip (index (i,), or (i, j) for segment j) as
        shipped; the anchor's frames are the first segment's."""
        frames = raw["segments"][index[0], 0] if name == "anchor" else raw[name][index]
        color = raw[name + "_color"][index] if name + "_color" in raw else None
        return frames, raw[name + "_window"][index], color

    for name in ("query", "key", "other_key", "anchor", "segments"):
        assert out[name].shape == cpu[name].shape and out[name].dtype == np.uint8
        segments = range(SPEC.num_segments) if name == "segments" else [None]
        for index in [(i,) if j is None else (i, j) for i in range(8) for j in segments]:
            expect = _tf_finish(*shipped(name, index), resize, SPEC.crop_size)
            assert np.abs(out[name][index].astype(int) - expect.astype(int)).max() <= 1, (name, index)
        diff = np.abs(out[name].astype(int) - cpu[name].astype(int))
        assert diff.max() <= 4 and diff.mean() < 0.2, (name, diff.max(), diff.mean())
    (clips,) = _batches(
        training_clips.labelled_clip_dataset(
            mixed_info, subset="train", view="rgb", local_batch=8, spec=SPEC, aug=resize, seed=0
        ),
        1,
    )
    (cpu_clips,) = _batches(
        training_clips.labelled_clip_dataset(
            mixed_info, subset="train", view="rgb", local_batch=8, spec=SPEC, aug=base, seed=0
        ),
        1,
    )
    finished = _finish(clips, resize)
    diff = np.abs(finished["rgb"].astype(int) - cpu_clips["rgb"].astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.2
    np.testing.assert_array_equal(finished["label"], cpu_clips["label"])


def test_resize_on_device_needs_the_largest_frame_in_the_metadata(tmp_path):
    write_pattern_dataset(tmp_path, LENGTHS[:6], metadata=False)  # a TFDS dataset not built by data_prep
    other = load_dataset_info(tmp_path, PATTERN_NAME)
    _pretrain(other, aug=NO_COLOR)  # the other paths do not need it
    with pytest.raises(DatasetError, match="set --config.data.aug.on_device=color"):
        _pretrain(other, aug=dataclasses.replace(NO_COLOR, on_device="resize"))


# ---------------------------------------------------------------- pretraining samples


def test_pretrain_batches_have_the_step_shapes_and_right_frames(info):
    (b,) = _batches(_pretrain(info, views=("rgb", "flow"), local_batch=8), 1)
    t, s, n_seg, seg_len = SPEC.num_frames, SPEC.crop_size, SPEC.num_segments, SPEC.segment_len
    assert b["query"].shape == b["key"].shape == b["other_key"].shape == (8, t, s, s, 3)
    assert b["anchor"].shape == (8, seg_len, s, s, 3) and b["segments"].shape == (8, n_seg, seg_len, s, s, 3)
    assert b["query"].dtype == np.uint8 and b["ids"].dtype == np.int32 and b["padded"].dtype == bool
    # Same keys/dtypes/shapes as the TF-free random batches that benchmarks feed to the step.
    fake = random_pretrain_batch(np.random.default_rng(0), 8, SPEC, cotrain=True)
    assert {k: (v.shape, v.dtype) for k, v in fake.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}

    videos = _video_number(b["query"])
    assert set(videos) <= set(_train_videos())
    np.testing.assert_array_equal(b["ids"], videos // 2)  # source id of the video
    for i, v in enumerate(videos):
        n = LENGTHS[v] - 1  # flow present: n - 1 usable positions
        for clip in (b["query"][i], b["key"][i], b["other_key"][i]):
            assert _video_number(clip[None])[0] == v
            np.testing.assert_array_equal(frame_number(clip), (frame_number(clip)[0] + np.arange(t)) % n)
        window = frame_number(b["segments"][i]).reshape(-1)
        np.testing.assert_array_equal(window, (window[0] + np.arange(n_seg * seg_len)) % n)
        np.testing.assert_array_equal(frame_number(b["anchor"][i]), window[:seg_len])
        assert b["padded"][i] == (n < SPEC.frames_needed)
        if not b["padded"][i]:
            assert window.max() < n and frame_number(b["query"][i]).max() < n


@pytest.mark.parametrize("on_device", ["none", "resize"])
def test_cotraining_rgb_and_flow_share_frames_crop_and_flip(info, on_device):
    flips = []
    aug = dataclasses.replace(NO_COLOR, on_device=on_device)
    for b in _batches(_pretrain(info, views=("rgb", "flow"), aug=aug, local_batch=8), 3):
        if on_device == "resize":
            b = _finish(b, aug)
        rgb, flow = b["key"].astype(int), b["other_key"].astype(int)
        np.testing.assert_allclose(rgb[..., 1:], flow[..., 1:], atol=3)  # same frames, same crop
        ramp = np.diff(rgb[..., 0].mean(axis=(1, 2)), axis=-1).mean(axis=-1)  # x-ramp slope per sample
        for i, slope in enumerate(ramp):
            flipped = slope < 0
            flips.append(flipped)
            expect = 255 - flow[i, ..., 0] if flipped else flow[i, ..., 0]
            np.testing.assert_allclose(rgb[i, ..., 0], expect, atol=3)
    assert any(flips) and not all(flips)


def test_padded_videos_are_counted(info):
    seen, padded = {}, {}
    for b in _batches(_pretrain(info, views=("rgb", "flow"), local_batch=4), 6):
        for v, p in zip(_video_number(b["query"]), b["padded"], strict=True):
            seen[v] = True
            padded[v] = bool(p)
    assert padded == {v: LENGTHS[v] - 1 < SPEC.frames_needed for v in seen}
    assert any(padded.values())  # videos 1 and 5 are short


def test_rgb_only_samples_use_every_frame(info):
    (b,) = _batches(_pretrain(info, views=("rgb",), local_batch=8), 1)
    assert "other_key" not in b
    for clip, v in zip(b["query"], _video_number(b["query"]), strict=True):
        assert frame_number(clip).max() < LENGTHS[v]


@pytest.mark.parametrize("on_device", ["none", "resize"])
def test_same_seed_same_batches_and_resume_continues_the_stream(info, on_device):
    aug = AugmentConfig(on_device=on_device)  # colour augmentations on: they must be seeded too
    first = _batches(_pretrain(info, views=("rgb", "flow"), aug=aug, seed=3), 5)
    again = _batches(_pretrain(info, views=("rgb", "flow"), aug=aug, seed=3), 5)
    other = _batches(_pretrain(info, views=("rgb", "flow"), aug=aug, seed=2**31 - 1), 1)  # large seeds work
    resumed = _batches(_pretrain(info, views=("rgb", "flow"), aug=aug, seed=3, start_step=3), 2)
    for a, b in zip(first, again, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(first[0]["query"], other[0]["query"])
    for a, b in zip(first[3:], resumed, strict=True):  # batches 3, 4 cross the 8-video epoch boundary
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_every_video_once_per_epoch(info):
    train = _train_videos()
    (b,) = _batches(_pretrain(info, local_batch=len(train)), 1)
    assert sorted(_video_number(b["query"])) == train


def test_hosts_read_disjoint_shards(info):
    subset = info.subset("train")
    parts = [host_shards(subset, i, 2)[0] for i in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(subset.shards)
    videos = []
    for i in range(2):
        ds = _pretrain(info, local_batch=2, process_index=i, process_count=2)
        videos.append({int(v) for b in _batches(ds, 6) for v in _video_number(b["query"])})
    assert not videos[0] & videos[1] and videos[0] | videos[1] == set(_train_videos())
    with pytest.raises(DatasetError, match="--num_shards of at least the host count"):
        host_shards(subset, 0, len(subset.shards) + 1)


def test_bad_requests_name_the_problem(info, tmp_path):
    with pytest.raises(DatasetError, match=f"no dataset {PATTERN_NAME} in .* holds none"):
        load_dataset_info(tmp_path / "nowhere", PATTERN_NAME)
    with pytest.raises(
        DatasetError, match=r"no dataset cvtcl_ucf101/split1 .* holds \['pattern_videos/split1'\]"
    ):
        load_dataset_info(info.data_dir, "cvtcl_ucf101/split1")
    with pytest.raises(DatasetError, match="must be <builder>/<config>"):
        load_dataset_info(info.data_dir, "pattern_videos")
    with pytest.raises(DatasetError, match="no 'validation' split; it has \\['test', 'train'\\]"):
        info.subset("validation")
    rgb_only = load_dataset_info(info.data_dir, PATTERN_NAME)
    object.__setattr__(rgb_only, "views", ("rgb",))
    with pytest.raises(DatasetError, match="without --no_flow"):
        _pretrain(rgb_only, views=("rgb", "flow"))


# ---------------------------------------------------------------- evaluation samples


def _eval_rows(info, crops="center", views=("rgb",), local_batch=8):
    ds = eval_clips.eval_dataset(
        info, subset="test", views=views, local_batch=local_batch, spec=SPEC, stride=8, crops=crops
    )
    batches = list(ds.as_numpy_iterator())
    assert all(b["mask"].shape == (local_batch,) for b in batches)
    assert not batches[-1]["mask"].all() or sum(b["mask"].sum() for b in batches) % local_batch == 0
    return {k: np.concatenate([b[k][b["mask"]] for b in batches]) for k in batches[0]}, batches


def test_dense_eval_clips_cover_each_test_video_once(info):
    rows, batches = _eval_rows(info, views=("rgb", "flow"))
    test_videos = [v for v in range(len(LENGTHS)) if v % 3 == 2]
    assert sorted(set(rows["video_index"])) == test_videos
    for v in test_videos:
        mine = rows["video_index"] == v
        starts = sorted(rows["clip_start"][mine])
        n = LENGTHS[v] - 1
        np.testing.assert_array_equal(starts, sampling.dense_clip_starts(n, SPEC.num_frames, 8).numpy())
        frames = frame_number(rows["rgb"][mine])
        assert set(frames.reshape(-1)) == set(range(n))  # every usable frame, no frame from elsewhere
        assert set(_video_number(rows["rgb"][mine])) == {v}
        assert set(rows["label"][mine]) == {v % 3}
    np.testing.assert_allclose(rows["rgb"][..., 1:].astype(int), rows["flow"][..., 1:].astype(int), atol=3)
    # The padded rows of the last batch are masked out; padding never invents a video.
    assert batches[-1]["mask"].sum() == len(rows["video_index"]) - 8 * (len(batches) - 1)


def test_ten_crops_are_five_windows_and_their_flips(info):
    rows, _ = _eval_rows(info, crops="ten", views=("flow",), local_batch=16)
    centre, _ = _eval_rows(info, crops="center", views=("flow",))
    assert len(rows["crop"]) == 10 * len(centre["crop"])
    key = rows["video_index"] * 1000 + rows["clip_start"]
    for k in np.unique(key):
        clip = rows["flow"][key == k][np.argsort(rows["crop"][key == k])].astype(int)
        for j in range(5):
            # 1 level of rounding: the flip is done in float before the uint8 conversion.
            np.testing.assert_allclose(clip[5 + j, ..., 0], 255 - clip[j, ..., ::-1, 0], atol=1)
        xs = [c[..., 0].mean() for c in clip[:5]]  # left corners have the lower x-ramp values
        assert xs[1] < xs[0] < xs[2]


def test_eval_rejects_unknown_crops(info):
    with pytest.raises(ValueError, match="eval crops"):
        eval_clips.eval_dataset(info, subset="test", views=("rgb",), local_batch=4, spec=SPEC, crops="five")


# ---------------------------------------------------------------- to the devices


def test_prefetch_to_mesh_makes_sharded_global_arrays_in_order():
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    host = [random_pretrain_batch(rng, 8, SPEC, cotrain=False) for _ in range(4)]
    out = list(prefetch_to_mesh(iter(host), mesh, size=2, host_keys=("padded",)))
    assert len(out) == 4
    for h, d in zip(host, out, strict=True):
        assert isinstance(d["padded"], np.ndarray)
        assert d["query"].sharding == batch_sharding(mesh) and len(d["query"].addressable_shards) == 8
        np.testing.assert_array_equal(np.asarray(d["query"]), h["query"])


def test_uint8_frames_are_normalised_with_imagenet_statistics():
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
    expect = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(normalize_frames(jax.numpy.asarray(x))), expect, atol=1e-5)
    f = jax.numpy.ones((2, 3), jax.numpy.float32)
    assert normalize_frames(f) is f


def test_flow_centring_moves_each_frames_lower_median_to_128():
    """Against numpy's lower median per frame and channel; values pushed past the ends clip."""
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 5, 6, 3), dtype=np.uint8)
    median = np.percentile(x.reshape(2, 3, 30, 3), 50, axis=2, method="lower")[:, :, None, None]
    expect = np.clip(x.astype(int) - median + 128, 0, 255)
    np.testing.assert_array_equal(np.asarray(centre_motion(jax.numpy.asarray(x))), expect)
    flat = np.full((1, 4, 4, 3), 128, np.uint8)
    np.testing.assert_array_equal(np.asarray(centre_motion(jax.numpy.asarray(flat))), flat)
    f = jax.numpy.ones((1, 2, 2, 3), jax.numpy.float32)
    assert centre_motion(f) is f


def test_gaussian_blur_matches_a_reflect_padded_convolution():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 9, 11, 3)).astype(np.float32)
    sigma, size = 1.3, 7
    taps = np.arange(-3, 4)
    k = np.exp(-0.5 * (taps / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="reflect")
    rows = sum(k[i] * pad[:, :, i : i + 11] for i in range(size))
    expect = sum(k[i] * rows[:, i : i + 9] for i in range(size))
    got = augment.gaussian_blur(tf.constant(x), tf.constant(sigma), size).numpy()
    np.testing.assert_allclose(got, expect, atol=1e-5)
    flat = np.full((1, 9, 11, 3), 0.5, np.float32)  # a flat image stays flat (weights sum to 1)
    np.testing.assert_allclose(
        augment.gaussian_blur(tf.constant(flat), tf.constant(2.0), 13).numpy(), 0.5, atol=1e-6
    )
