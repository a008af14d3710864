"""The fidelity benchmark's parts: its generated motion set, the hand-made flow baseline and the
table over seeds (bench/fidelity.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import fidelity, flow_statistics
from generated import motion_set, synthetic
from tests import learning_runs


def test_motion_set_is_ucf101_layout_with_a_look_per_video_and_is_seeded(tmp_path):
    kw = dict(groups=3, clips_per_group=1, num_frames=4, height=48, width=64)
    a = motion_set.generate(tmp_path / "a", seed=3, **kw)
    b = motion_set.generate(tmp_path / "b", seed=3, **kw)
    classes = (a / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1::2]
    assert classes == list(motion_set.CLASSES)
    train = (a / "ucfTrainTestlist" / "trainlist01.txt").read_text().splitlines()
    test = (a / "ucfTrainTestlist" / "testlist01.txt").read_text().splitlines()
    assert len(train) == 16 and len(test) == 8 and all("_g01_" in t for t in test)
    first = {}
    for cls in motion_set.CLASSES:
        for g in (1, 2, 3):
            name = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
            frames_a = _frames(a / "UCF-101" / name)
            assert len(frames_a) == 4 and frames_a[0].shape == (48, 64, 3)
            np.testing.assert_array_equal(frames_a[0], _frames(b / "UCF-101" / name)[0])
            first[cls, g] = frames_a[0].astype(np.float32)
    # No two videos share a look: every pair of first frames differs by far more than the noise.
    looks = list(first.values())
    closest = min(np.abs(x - y).mean() for i, x in enumerate(looks) for y in looks[i + 1 :])
    assert closest > 10


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return out
        out.append(frame)


@pytest.mark.parametrize("cls", motion_set.CLASSES)
def test_each_class_moves_its_object_as_named(cls):
    t = np.arange(32.0)
    x, y, angle, scale = motion_set._pose(cls, t, 32, np.random.default_rng(0))
    vx, vy, spin, grow = np.diff(x), np.diff(y), np.diff(angle), np.diff(scale)
    moves = {
        "Slide": np.allclose(vx, vx[0]) and abs(vx[0]) > 0.5 and np.allclose(vy, 0),
        "Rise": np.allclose(vy, vy[0]) and vy[0] < -0.5 and np.allclose(vx, 0),
        "Fall": np.allclose(vy, vy[0]) and vy[0] > 0.5 and np.allclose(vx, 0),
        "Grow": np.all(grow > 0) and np.allclose(vx, 0) and np.allclose(vy, 0),
        "Shrink": np.all(grow < 0) and np.allclose(vx, 0) and np.allclose(vy, 0),
        "Spin": np.allclose(spin, spin[0]) and abs(spin[0]) > 0.05 and np.allclose(vx, 0),
        "Orbit": np.ptp(np.hypot(x - x.mean(), y - y.mean())) < 1.0 and np.hypot(vx, vy).min() > 0.5,
        "Shake": np.allclose(vy, 0) and (np.diff(np.sign(vx)) != 0).sum() >= 4,
    }
    assert [c for c, ok in moves.items() if ok] == [cls]  # its own motion, and no other class's
    # Every object stays in the frame: centres within 20 pixels of the middle.
    assert np.abs(x).max() < 20 and np.abs(y).max() < 20


def test_flip_paired_classes_draw_both_directions():
    """Slide, Spin and Orbit hold both directions, so a horizontal flip maps the class to itself."""
    t = np.arange(8.0)
    rng = np.random.default_rng(0)
    slides = {np.sign(np.diff(motion_set._pose("Slide", t, 8, rng)[0])[0]) for _ in range(20)}
    spins = {np.sign(np.diff(motion_set._pose("Spin", t, 8, rng)[2])[0]) for _ in range(20)}
    assert slides == {-1.0, 1.0} and spins == {-1.0, 1.0}


def test_motion_set_rejects_unknown_classes_and_too_few_groups(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        motion_set.generate(tmp_path, classes=("Slide", "Jump"))
    with pytest.raises(ValueError, match="groups"):
        motion_set.generate(tmp_path, groups=2)


def test_ucf_lists_name_every_video_once(tmp_path):
    names = {"A": [(1, "v_A_g01_c01.avi"), (2, "v_A_g02_c01.avi"), (3, "v_A_g03_c01.avi")]}
    synthetic.write_ucf_lists(tmp_path, ["A"], names, groups=3)
    for split in (1, 2, 3):
        lists = tmp_path / "ucfTrainTestlist"
        train = (lists / f"trainlist{split:02d}.txt").read_text().split()
        test = (lists / f"testlist{split:02d}.txt").read_text().split()
        assert test == [f"A/v_A_g{split:02d}_c01.avi"] and len(train) == 4 and train[1::2] == ["1", "1"]


def _field(fn, size=33):
    """(1, size, size, 2) flow fn(x, y) on a grid centred at 0."""
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    dx, dy = fn(xx.astype(np.float64), yy.astype(np.float64))
    return np.stack([dx, dy], axis=-1)[None]


def test_flow_statistics_of_analytic_fields():
    """Rotation (-y, x)/10 has curl 0.2 and no divergence, expansion (x, y)/10 the reverse; a
    translation of a quarter of the frame over a still background keeps its mean; a global motion
    added to every pixel (the camera) is removed by the median."""
    rotation = flow_statistics.frame_statistics(_field(lambda x, y: (-y / 10, x / 10)))[0]
    np.testing.assert_allclose(rotation[2:], [0.0, 0.2], atol=1e-12)
    expansion = flow_statistics.frame_statistics(_field(lambda x, y: (x / 10, y / 10)))[0]
    np.testing.assert_allclose(expansion[2:], [0.2, 0.0], atol=1e-12)
    patch = np.zeros((1, 32, 32, 2))
    patch[0, 8:24, 8:24, 0] = 2.0  # a quarter of the frame moves right by 2 pixels
    camera = patch + np.array([0.5, -0.3])
    np.testing.assert_allclose(flow_statistics.frame_statistics(camera)[0, :2], [0.5, 0.0], atol=1e-12)


def test_video_feature_is_the_mean_and_std_over_time():
    flows = np.concatenate([_field(lambda x, y, k=k: (-y / 10 * k, x / 10 * k)) for k in (1.0, 3.0)])
    feature = flow_statistics.video_feature(flows)
    np.testing.assert_allclose(feature[3], 0.4, atol=1e-12)  # mean curl of 0.2 and 0.6
    np.testing.assert_allclose(feature[7], 0.2, atol=1e-12)  # their std


def test_flow_statistics_round_trip_through_the_stored_jpegs():
    """The baseline reads flow as data_prep stores it (quantised JPEGs): within two quantisation
    steps (0.16 pixels each) of the flow itself for a smooth field (JPEG's chroma subsampling costs
    the second)."""
    from data_prep import video

    flow = _field(lambda x, y: (np.full_like(x, 1.5), y / 16))[0].astype(np.float32)
    jpeg = video.encode_flow_jpeg(video.quantize_flow(flow), quality=100)
    decoded = flow_statistics.decode_flow([jpeg])[0]
    assert np.abs(decoded - flow).max() < 2 * 40 / 255


def test_summary_gives_mean_and_spread_over_seeds():
    seeds = [{"flow": {"init": {"R@1": v}}} for v in (40.0, 50.0, 60.0)]
    row = fidelity.summarize(seeds)["flow"]["init"]["R@1"]
    assert row["mean"] == 50.0 and row["std"] == pytest.approx(10.0) and row["values"] == [40.0, 50.0, 60.0]
    assert fidelity.summarize(seeds[:1])["flow"]["init"]["R@1"]["std"] == 0.0
    assert "50.0 +- 10.0" in fidelity.format_summary(fidelity.summarize(seeds))


# The CI-size benchmark: 48 videos (32 train / 16 test) of 24 frames, 450 flow initialization
# steps, as the benchmark's command on one emulated device (tests/learning_runs.py). There, on
# 2026-12-07, initialization took R@1 from 12.5 to 43.8 with the test's training seed 0 (as on
# eight devices), from 25.0 to 25.0 with seed 1 and from 18.8 to 50.0 with seed 2 (docs/log.md):
# the recipe does not learn on every seed of this set (issue 44's question). The test asks seed 0
# for less than half its lift, two of the 16 test queries.
MARGIN = 12.5


@pytest.mark.slow
def test_learned_flow_beats_random_init_on_the_motion_set(tmp_path):
    cmd = [sys.executable, "bench/fidelity.py", f"--workdir={tmp_path}", "--seeds=0", "--train=init"]
    cmd += ["--views=flow", "--config.demo.groups=3", "--config.demo.num_frames=24"]
    cmd += ["--config.schedule.init_epochs=225"]  # 450 steps of 16 clips over 32 train videos
    cmd += ["--config.queue_size=48", "--config.train.retrieval_every_epochs=0"]  # the demo's queue
    env = {**os.environ, **learning_runs.ONE_DEVICE}
    proc = subprocess.run(cmd, cwd=learning_runs.REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "fidelity.json").read_text())
    row = result["tables"][0]["flow"]
    assert row["init"]["R@1"] >= row["random_init"]["R@1"] + MARGIN, row
    assert result["summary"]["flow"]["init"]["R@1"]["std"] == 0.0
    assert "flow_statistics" in row and "flow" in proc.stdout


def test_an_unknown_generated_set_or_view_fails_before_any_work(tmp_path):
    from configs import fidelity as fidelity_config
    from cvtcl_jax.modes.checks import ConfigError

    cfg = fidelity_config.get_config()
    with pytest.raises(ValueError, match="views"):
        fidelity.benchmark(cfg, tmp_path, seeds=[0], train="init", views=["depth"])
    cfg.demo.set = "ucf"
    with pytest.raises(ConfigError, match="demo.set"):
        fidelity.benchmark(cfg, tmp_path, seeds=[0])
    assert not (tmp_path / "set").exists()
