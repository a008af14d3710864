"""The JAX TV-L1 against OpenCV's CPU DualTVL1OpticalFlow, computed here on the same frames."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvtcl_jax.flow import tvl1
from cvtcl_jax.flow.batching import FlowBatcher, bucket_shape
from cvtcl_jax.flow.params import TVL1Params
from cvtcl_jax.flow.tvl1 import tvl1_flow
from data_prep.video import quantize_flow
from tests import flow_scenes

# Three pairs per size: several independent motions with occlusion, camera shake and noise; a
# static shot; an object moving 24 px, beyond the stored 20-px clip.
SIZES = [(240, 320), (143, 201)]  # UCF101's frame, and an odd size


def agreement(ours, ref):
    """Mean and 99th-percentile end-point error, and the share of stored levels at most 1 apart."""
    epe = np.linalg.norm(ours - ref, axis=-1)
    levels = np.abs(quantize_flow(ours).astype(int) - quantize_flow(ref))
    return epe.mean(), np.percentile(epe, 99), (levels <= 1).mean()


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
def scene_flows(request):
    """{name: (frame0, frame1, true flow, OpenCV's flow, ours)} for one frame size, one batch."""
    scenes = flow_scenes.scenes(*request.param)
    frames0 = np.stack([s[0] for s in scenes.values()])
    frames1 = np.stack([s[1] for s in scenes.values()])
    ours = np.asarray(tvl1_flow(frames0, frames1))
    return {
        name: (a, b, truth, flow_scenes.opencv_flow(a, b), ours[k])
        for k, (name, (a, b, truth)) in enumerate(scenes.items())
    }


@pytest.mark.slow
def test_flow_is_opencvs(scene_flows):
    for name, (_, _, _, ref, ours) in scene_flows.items():
        mean, p99, near = agreement(ours, ref)
        assert mean <= 0.1 and p99 <= 1.0, (name, mean, p99)
        assert near >= 0.95, (name, near)


@pytest.mark.slow
def test_known_motion_is_recovered_as_well_as_by_opencv(scene_flows):
    for name, (_, _, truth, ref, ours) in scene_flows.items():
        ours_error = np.linalg.norm(ours - truth, axis=-1).mean()
        opencv_error = np.linalg.norm(ref - truth, axis=-1).mean()
        assert ours_error <= opencv_error + 0.05, (name, ours_error, opencv_error)
    # The scenes are solvable: OpenCV finds the shake and the slow motions to a tenth of a pixel.
    _, _, truth, ref, _ = scene_flows["occlusion_and_shake"]
    assert np.linalg.norm(ref - truth, axis=-1).mean() < 0.15


@pytest.mark.slow
def test_a_pair_gets_the_same_flow_alone_and_among_other_pairs(scene_flows):
    """Same batch shape: pair k alone among empty pairs, and at another position among others."""
    names = list(scene_flows)
    frames0 = np.stack([scene_flows[n][0] for n in names])
    frames1 = np.stack([scene_flows[n][1] for n in names])
    in_batch = {n: scene_flows[n][4] for n in names}
    for k, name in enumerate(names):
        alone0, alone1 = np.zeros_like(frames0), np.zeros_like(frames1)
        alone0[(k + 1) % 3], alone1[(k + 1) % 3] = frames0[k], frames1[k]
        alone = np.asarray(tvl1_flow(alone0, alone1))
        np.testing.assert_array_equal(alone[(k + 1) % 3], in_batch[name])
        assert not alone[(k + 2) % 3].any()  # an empty pair has no motion


@pytest.mark.slow
def test_pairs_of_mixed_sizes_share_bucketed_programs():
    """Four sizes, three buckets: each pair's flow is OpenCV's at its own size, padding unseen."""
    rng = np.random.default_rng(3)
    # Buckets (128, 160), (96, 128), (96, 128) and (64, 32); the last pair has two pyramid levels,
    # its bucket four.
    sizes = [(97, 131), (90, 120), (70, 100), (48, 20)]
    pairs = []
    for h, w in sizes:
        a, b, _ = flow_scenes.scenes(h, w, seed=int(rng.integers(100)))["occlusion_and_shake"]
        pairs.append((a, b))
    batcher = FlowBatcher(batch_size=2, multiple=32)
    for k, (a, b) in enumerate(pairs):
        batcher.add(k, a, b)
    batcher.flush()
    flows = dict(batcher.results(wait=True))
    assert batcher.shapes == {(2, 128, 160), (2, 96, 128), (2, 64, 32)} and batcher.pending == 0
    for k, (a, b) in enumerate(pairs):
        assert flows[k].shape == (*a.shape, 2)
        mean, p99, near = agreement(flows[k], flow_scenes.opencv_flow(a, b))
        assert mean <= 0.1 and p99 <= 1.0 and near >= 0.95, (sizes[k], mean, p99, near)
        # Pairs 1 and 2 shared a batch: each got the flow it gets alone in that program.
        h, w = bucket_shape(*a.shape)
        alone = np.zeros((2, 2, h, w), np.uint8)
        alone[0, 0, : a.shape[0], : a.shape[1]], alone[1, 0, : a.shape[0], : a.shape[1]] = a, b
        flow = np.asarray(tvl1_flow(alone[0], alone[1], sizes=[a.shape, (h, w)]))
        np.testing.assert_array_equal(flow[0, : a.shape[0], : a.shape[1]], flows[k])
    assert bucket_shape(97, 131) == (128, 160) and bucket_shape(96, 128) == (96, 128)


@pytest.mark.slow
def test_a_pair_in_a_padded_buffer_ignores_what_lies_around_it():
    a, b, _ = flow_scenes.scenes(70, 100, seed=7)["occlusion_and_shake"]
    rng = np.random.default_rng(0)
    buffers = rng.integers(0, 256, (2, 2, 96, 128), dtype=np.uint8)  # (frame, pair, H, W)
    buffers[0, :, :70, :100], buffers[1, :, :70, :100] = a, b
    flow = np.asarray(tvl1_flow(buffers[0], buffers[1], sizes=[(70, 100), (70, 100)]))
    np.testing.assert_array_equal(flow[0], flow[1])  # the surroundings differ, the flow does not
    assert not flow[:, 70:].any() and not flow[:, :, 100:].any()
    mean, p99, near = agreement(flow[0, :70, :100], flow_scenes.opencv_flow(a, b))
    assert mean <= 0.1 and p99 <= 1.0 and near >= 0.95


def test_pyramid_sizes_are_opencvs():
    assert tvl1.pyramid_sizes(240, 320) == [(240, 320), (192, 256), (154, 205), (123, 164), (98, 131)]
    assert tvl1.pyramid_sizes(30, 40) == [(30, 40), (24, 32), (19, 26)]  # 15x21 is below 16 rows
    assert tvl1.pyramid_sizes(12, 12) == [(12, 12)]


@pytest.mark.parametrize("size", [(37, 53), (16, 16)])
def test_resize_and_remap_and_median_are_opencvs(size):
    h, w = size
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.uniform(0, 255, size).astype(np.float32), (0, 0), 1.5)
    one = np.ones(1, np.int32)
    # Jitted, as inside TV-L1's program (and one compile each, not one per eager operation).
    resize = jax.jit(tvl1.resize_linear, static_argnums=3)
    down = cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    scale = np.full(1, 1.25, np.float32)
    ours = resize(image[None], one * h, one * w, down.shape, scale, scale)
    np.testing.assert_allclose(ours[0], down, atol=1e-3)
    up = cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)
    sy, sx = (np.full(1, 1 / (n / m), np.float32) for n, m in ((h, down.shape[0]), (w, down.shape[1])))
    ours = resize(down[None], one * down.shape[0], one * down.shape[1], (h, w), sy, sx)
    np.testing.assert_allclose(ours[0], up, atol=1e-3)
    # Displacements up to 40 px: taps inside, across and far beyond the border.
    u1 = rng.normal(scale=6, size=size).astype(np.float32)
    u2 = rng.normal(scale=6, size=size).astype(np.float32)
    u1[: h // 3] += 40
    map_x = (np.arange(w)[None] + u1).astype(np.float32)
    map_y = (np.arange(h)[:, None] + u2).astype(np.float32)
    ref = cv2.remap(image, map_x, map_y, cv2.INTER_CUBIC)
    ours = jax.jit(tvl1.remap_cubic)(image[None, None], u1[None], u2[None], one * h, one * w)
    np.testing.assert_allclose(ours[0, 0], ref, atol=1e-2)
    np.testing.assert_array_equal(
        jax.jit(tvl1._median5x5)(image[None], one * h, one * w)[0], cv2.medianBlur(image, 5)
    )


def test_stencils_are_opencvs():
    """The gradient and divergence stencils against the loops of tvl1flow.cpp, written out here."""
    rng = np.random.default_rng(2)
    h, w = 6, 7
    src, v1, v2 = rng.normal(size=(3, h, w)).astype(np.float32)
    cx, cy, fx, fy, div = (np.zeros((h, w), np.float32) for _ in range(5))
    for y in range(h):
        for x in range(w):
            cx[y, x] = 0.5 * (src[y, min(x + 1, w - 1)] - src[y, max(x - 1, 0)])
            cy[y, x] = 0.5 * (src[min(y + 1, h - 1), x] - src[max(y - 1, 0), x])
            fx[y, x] = src[y, x + 1] - src[y, x] if x < w - 1 else 0.0
            fy[y, x] = src[y + 1, x] - src[y, x] if y < h - 1 else 0.0
            div[y, x] = (v1[y, x] - (v1[y, x - 1] if x > 0 else 0)) + (
                v2[y, x] - (v2[y - 1, x] if y > 0 else 0)
            )
    # In a larger buffer, with the valid size given: what lies outside must not matter.
    pad = lambda a: jnp.pad(jnp.asarray(a), ((0, 3), (0, 2)), constant_values=9.0)[None]  # noqa: E731
    hh, ww = jnp.array([h]), jnp.array([w])
    for ours, ref in zip(tvl1.centered_gradient(pad(src), hh, ww), (cx, cy), strict=True):
        np.testing.assert_allclose(ours[0, :h, :w], ref, rtol=1e-6)
    for ours, ref in zip(tvl1.forward_gradient(pad(src), hh, ww), (fx, fy), strict=True):
        np.testing.assert_allclose(ours[0, :h, :w], ref, rtol=1e-6)
    np.testing.assert_allclose(tvl1.divergence(pad(v1), pad(v2))[0, :h, :w], div, rtol=1e-6)


def test_median_network_takes_the_median_of_25():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 4000)).astype(np.float32)
    x[:, :1000] = np.round(x[:, :1000])  # ties
    np.testing.assert_array_equal(tvl1.median_of_25(list(x)), np.median(x, axis=0))
    assert len(tvl1._MEDIAN25[0]) < 25 * 24 // 2  # fewer comparisons than a full sort's pairs


@pytest.mark.parametrize(
    "frame0,frame1,message",
    [
        (np.zeros((1, 20, 30), np.uint8), np.zeros((1, 20, 31), np.uint8), "differ in shape"),
        (np.zeros((1, 20, 30, 3), np.uint8), np.zeros((1, 20, 30, 3), np.uint8), "grayscale"),
        (np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8), "grayscale"),
        (np.zeros((1, 20, 30), np.float32), np.zeros((1, 20, 30), np.float32), "uint8"),
        (np.zeros((0, 20, 30), np.uint8), np.zeros((0, 20, 30), np.uint8), "at least one pair"),
        (np.zeros((1, 2, 30), np.uint8), np.zeros((1, 2, 30), np.uint8), "at least 3x3"),
    ],
)
def test_bad_input_is_named(frame0, frame1, message):
    with pytest.raises(ValueError, match=message):
        tvl1_flow(frame0, frame1)


def test_bad_parameters_and_sizes_are_named():
    with pytest.raises(ValueError, match="gamma"):
        TVL1Params(gamma=0.1)
    with pytest.raises(ValueError, match="median_filtering"):
        TVL1Params(median_filtering=3)
    with pytest.raises(ValueError, match="sizes must lie"):
        tvl1_flow(np.zeros((1, 20, 30), np.uint8), np.zeros((1, 20, 30), np.uint8), sizes=[(21, 30)])
    with pytest.raises(ValueError, match="grayscale"):
        FlowBatcher().add(0, np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.uint8))
