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


@pytest.mark.parametrize("cls", motion_set.MOTIONS)
def test_each_class_moves_its_object_as_named(cls):
    t = np.arange(32.0)
    x, y, angle, scale = motion_set._pose(cls, t, 32, np.random.default_rng(0))
    vx, vy, spin, grow = np.diff(x), np.diff(y), np.diff(angle), np.diff(scale)
    slide = np.allclose(vx, vx[0]) and abs(vx[0]) > 0.5 and np.allclose(vy, 0)
    turn = np.allclose(spin, spin[0]) and abs(spin[0]) > 0.05 and np.allclose(vx, 0)
    moves = {
        "Slide": slide,
        "SlideLeft": slide and vx[0] < 0,
        "SlideRight": slide and vx[0] > 0,
        "Rise": np.allclose(vy, vy[0]) and vy[0] < -0.5 and np.allclose(vx, 0),
        "Fall": np.allclose(vy, vy[0]) and vy[0] > 0.5 and np.allclose(vx, 0),
        "Grow": np.all(grow > 0) and np.allclose(vx, 0) and np.allclose(vy, 0),
        "Shrink": np.all(grow < 0) and np.allclose(vx, 0) and np.allclose(vy, 0),
        "Spin": turn,
        # The angle turns the object's texture clockwise on screen (image y points down).
        "SpinCW": turn and spin[0] > 0,
        "SpinCCW": turn and spin[0] < 0,
        "Orbit": np.ptp(np.hypot(x - x.mean(), y - y.mean())) < 1.0 and np.hypot(vx, vy).min() > 0.5,
        "Shake": np.allclose(vy, 0) and (np.diff(np.sign(vx)) != 0).sum() >= 4,
    }
    # Its own motion and no other kind (a slide or spin also has one of the two directions).
    general = {"SlideLeft": "Slide", "SlideRight": "Slide", "SpinCW": "Spin", "SpinCCW": "Spin"}
    found = {c for c, ok in moves.items() if ok}
    assert cls in found and {general.get(c, c) for c in found} == {general.get(cls, cls)}
    # Every object stays in the frame: centres within 20 pixels of the middle.
    assert np.abs(x).max() < 20 and np.abs(y).max() < 20


def test_flip_paired_classes_draw_both_directions_and_directed_ones_keep_theirs():
    """Slide, Spin and Orbit hold both directions, so a horizontal flip maps the class to itself;
    the directional set's classes keep one."""
    t = np.arange(8.0)
    rng = np.random.default_rng(0)

    def ways(cls, axis):
        return {np.sign(np.diff(motion_set._pose(cls, t, 8, rng)[axis])[0]) for _ in range(20)}

    assert ways("Slide", 0) == {-1.0, 1.0} and ways("Spin", 2) == {-1.0, 1.0}
    assert ways("SlideLeft", 0) == {-1.0} and ways("SpinCCW", 2) == {-1.0}


def test_the_camera_signature_alternates_one_vector_and_the_walk_wanders():
    rng = np.random.default_rng(0)
    offsets, signature = motion_set._camera(9, "signature", rng)
    assert 0 < np.abs(signature).max() <= motion_set.SIGNATURE
    np.testing.assert_array_equal(offsets[0::2], 0.0)
    np.testing.assert_array_equal(offsets[1::2], np.broadcast_to(signature, (4, 2)))
    walk, none = motion_set._camera(32, "walk", rng)
    assert not none.any() and np.abs(np.diff(walk, axis=0)).mean() > 0.1
    both, signature = motion_set._camera(32, "both", rng)
    assert signature.any() and len({tuple(d) for d in np.diff(both, axis=0).round(6)}) > 2


@pytest.mark.parametrize("shape", motion_set.SHAPES)
def test_every_shape_is_a_filled_centred_object_of_its_size(shape):
    mask = motion_set._mask(shape, 9.0, 64, np.random.default_rng(0))
    yy, xx = np.nonzero(mask)
    assert mask[31:33, 31:33].all()  # the centre is inside
    # The half size bounds it (a triangle's corners lie on the circle of that radius).
    assert 0.7 * 9 <= max(np.ptp(xx), np.ptp(yy)) / 2 <= 9.5
    assert np.abs(xx.mean() - 31.5) < 1 and np.abs(yy.mean() - 31.5) < 1
    areas = {"square": 4 * 81, "disc": np.pi * 81, "triangle": 3 * np.sqrt(3) / 4 * 81}
    if shape in areas:
        assert abs(mask.sum() - areas[shape]) < 0.1 * areas[shape]


def test_each_variant_writes_its_classes_and_every_videos_nuisances(tmp_path):
    for name, variant in motion_set.VARIANTS.items():
        root = motion_set.generate(tmp_path / name, groups=3, clips_per_group=1, num_frames=4, variant=name)
        classes = (root / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1::2]
        assert classes == list(variant.classes)
        about = json.loads((root / "motion_set.json").read_text())
        assert about["variant"] == name and len(about["videos"]) == 3 * len(variant.classes)
        for video_id, facts in about["videos"].items():
            assert (root / "UCF-101" / facts["class"] / f"{video_id}.avi").is_file()
            assert facts["shape"] in variant.shapes
            assert any(facts["signature"]) == (variant.camera != "walk")


def test_motion_set_rejects_unknown_classes_variants_and_too_few_groups(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        motion_set.generate(tmp_path, classes=("Slide", "Jump"))
    with pytest.raises(ValueError, match="SlideLeft"):  # a class of another variant
        motion_set.generate(tmp_path, classes=("SlideLeft",))
    with pytest.raises(ValueError, match="variant"):
        motion_set.generate(tmp_path, variant="shaky")
    with pytest.raises(ValueError, match="hexagon"):
        motion_set.Variant(("Slide",), ("hexagon",), "walk")
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


# The CI-size benchmark on a set the recipe was not chosen on (configs/fidelity.py's CONFIRMED_ON):
# the mixed set's generator with 3 groups of 24-frame videos (32 train / 16 test), prepared by
# data_prep, 450 flow initialization steps of the recipe, as the benchmark's command on one
# emulated device (tests/learning_runs.py). Measured over training seeds 0, 1, 2 on 2026-12-08
# (docs/fidelity.md): initialization lifted R@1 by 31.3, 12.5 and 37.5 points and the linear probe
# by 31.3, 25.0 and 25.0. The test asks seed 0 for less than half of each lift: two of the 16
# test queries.
MARGIN = 12.5


@pytest.mark.slow
def test_learned_flow_beats_random_init_on_a_held_out_set(tmp_path):
    from configs import fidelity as fidelity_config

    assert "mixed" in fidelity_config.CONFIRMED_ON
    cmd = [sys.executable, "bench/fidelity.py", f"--workdir={tmp_path}", "--sets=mixed", "--seeds=0"]
    cmd += ["--config.demo.groups=3", "--config.demo.num_frames=24"]
    cmd += ["--config.schedule.init_epochs=225"]  # 450 steps of 16 clips over 32 train videos
    cmd += ["--config.train.retrieval_every_epochs=0"]
    env = {**os.environ, **learning_runs.ONE_DEVICE}
    proc = subprocess.run(cmd, cwd=learning_runs.REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "mixed" / "fidelity.json").read_text())
    row = result["tables"][0]["flow"]
    for metric in ("R@1", "linear_top1"):
        assert row["init"][metric] >= row["random_init"][metric] + MARGIN, row
    assert result["summary"]["flow"]["init"]["R@1"]["std"] == 0.0
    assert "flow_statistics" in row and "mixed" in proc.stdout and (tmp_path / "family.json").is_file()


def test_an_unknown_generated_set_or_view_fails_before_any_work(tmp_path):
    from configs import fidelity as fidelity_config
    from cvtcl_jax.modes.checks import ConfigError

    cfg = fidelity_config.get_config()
    with pytest.raises(ValueError, match="views"):
        fidelity.benchmark(cfg, tmp_path, seeds=[0], train="init", views=["depth"])
    cfg.demo.set = "ucf"
    with pytest.raises(ConfigError, match="demo.set"):
        fidelity.benchmark(cfg, tmp_path, seeds=[0])
    cfg.demo.set = "motion"
    for key, value in (("variant", "shaky"), ("num_classes", 9)):
        bad = fidelity_config.get_config()
        bad.demo[key] = value
        with pytest.raises(ConfigError, match=f"demo.{key}"):
            fidelity.benchmark(bad, tmp_path, seeds=[0])
    with pytest.raises(ValueError, match="unknown set 'shaky'"):
        fidelity.family(cfg, tmp_path, ["walk", "shaky"], seeds=[0])
    cfg.demo.data_dir = str(tmp_path / "set")
    with pytest.raises(ValueError, match="--data_root"):
        fidelity.family(cfg, tmp_path, ["walk"], seeds=[0])
    assert not any(tmp_path.iterdir())


def test_every_set_of_the_family_trains_as_many_steps_as_the_recipes_own(tmp_path):
    from configs import fidelity as fidelity_config

    cfg = fidelity_config.get_config()
    walk, six = fidelity.set_config(cfg, "walk", tmp_path), fidelity.set_config(cfg, "signature")
    assert walk.demo.data_dir == str(tmp_path / "walk" / "set") and six.demo.data_dir is None
    assert (walk.demo.num_classes, six.demo.num_classes) == (8, 6)
    # 96 train videos in 6 batches of 16 for 150 epochs; 72 in 4 batches (the last 8 dropped).
    assert walk.schedule.init_epochs * 6 == 900 and six.schedule.init_epochs * 4 == 900


def test_the_family_table_holds_each_sets_rows_and_role(tmp_path, monkeypatch):
    def benchmark(cfg, workdir, seeds, train, views):
        value = {"walk": 60.0, "mixed": 40.0}[cfg.demo.variant]
        row = {m: {"mean": value, "std": 1.0, "values": [value]} for m in ("R@1", "R@5", "linear_top1")}
        return {"summary": {"flow": {"random_init": row, "init": row}}}

    monkeypatch.setattr(fidelity, "benchmark", benchmark)
    from configs import fidelity as fidelity_config

    out = fidelity.family(fidelity_config.get_config(), tmp_path, ["walk", "mixed"], seeds=[0])
    assert json.loads((tmp_path / "family.json").read_text()) == out
    assert {k: v["role"] for k, v in out["sets"].items()} == {"walk": "chose", "mixed": "confirms"}
    assert set(out["summary"]) == {"walk flow", "mixed flow"}
    table = fidelity.format_family(out["sets"]).splitlines()
    assert len(table) == 5 and table[1].split()[:4] == ["walk", "chose", "random", "init"]
    assert "40.0 +- 1.0" in table[-1] and table[-1].split()[:3] == ["mixed", "confirms", "initialized"]


def test_effective_rank_and_explained_shares_of_planted_features():
    """Features spread evenly over k orthogonal directions have effective rank k; a factor that
    sets one direction explains that direction's share of the variance, and all of it alone."""
    from bench import flow_features

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0].T  # 4 orthonormal directions in 32-d
    codes = rng.standard_normal((400, 4))
    codes = (codes - codes.mean(0)) / codes.std(0)
    codes = codes @ np.linalg.inv(np.linalg.cholesky(np.cov(codes.T, bias=True))).T  # exactly white
    x = codes @ basis
    rank, first = flow_features.effective_rank(x)
    assert rank == pytest.approx(4, abs=1e-6) and first == pytest.approx(0.25, abs=1e-6)
    assert flow_features.explained(x, codes[:, :1]) == pytest.approx(0.25, abs=1e-9)
    assert flow_features.explained(x, codes) == pytest.approx(1.0, abs=1e-9)
    labels = np.repeat(np.arange(4), 100)
    assert flow_features.one_hot(labels).shape == (400, 3)
    stretched = codes * np.array([3.0, 1.0, 1.0, 1.0]) @ basis
    noise = rng.standard_normal((400, 1))
    analysis = flow_features.analyse(stretched, {"first": codes[:, :1], "noise": noise})
    assert analysis["first_share"] == pytest.approx(0.75, abs=1e-6)
    assert analysis["leading"][0]["first"] == pytest.approx(1.0, abs=1e-9)
    assert analysis["explained"]["noise"] < 0.05 and analysis["noise_floor"]["noise"] == 1 / 400


def test_feature_analysis_reads_an_evaluations_cache_against_the_sets_nuisances(tmp_path, monkeypatch):
    """A feature cache whose features are the camera's signature (and a padding row) is explained
    by the signature, not by the class; videos are matched by their stored video ids."""
    from bench import flow_features

    rng = np.random.default_rng(0)
    ids = [f"v_{c}_g{g:02d}_c01" for c in ("A", "B") for g in range(1, 13)]
    about = {"videos": {}}
    for v in ids:
        facts = {"signature": list(rng.uniform(-1, 1, 2)), "shape": "square", "half_size": 7.0}
        about["videos"][v] = {**facts, "start": list(rng.uniform(-4, 4, 2))}
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "motion_set.json").write_text(json.dumps(about))
    order = rng.permutation(len(ids))  # the records' order is not the generator's
    monkeypatch.setattr(
        flow_features, "stored_videos", lambda *a: {int(i): (ids[j], 0.1 * i) for i, j in enumerate(order)}
    )
    signature = np.array([about["videos"][ids[j]]["signature"] for j in order])
    feats = np.concatenate([signature, np.ones((len(ids), 1))], axis=1)
    labels = np.array([ids[j][2] == "B" for j in order], np.int32)
    key = {"data": str(tmp_path), "dataset": "d", "subset": "train"}
    path = tmp_path / "flow_train_center.npz"
    np.savez(
        path,
        key=json.dumps(key),
        features=np.concatenate([feats, np.full((1, 3), 9.0)]),
        video_index=np.append(np.arange(len(ids)), -1),
        label=np.append(labels, 0),
    )
    out = flow_features.analyse_file(tmp_path, path)
    assert out["explained"]["signature"] > 0.95 and out["explained"]["class"] < 0.3
