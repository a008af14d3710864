"""data_prep end to end: the real command on tiny AVIs in the official layouts."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvtcl_jax.data.records import read_records
from data_prep import layouts, synthetic
from data_prep.video import dequantize_flow, process_video

ROOT = Path(__file__).resolve().parents[1]


def build(raw, out, *extra, dataset="ucf101", check=True):
    cmd = [
        sys.executable,
        "-m",
        "data_prep.build",
        f"--dataset={dataset}",
        f"--raw_dir={raw}",
        f"--out_dir={out}",
    ]
    cmd += ["--workers=2", "--quiet", "--short_side=32", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def records_of(out, split, subset):
    meta = json.loads((Path(out) / "metadata.json").read_text())
    return read_records(str(Path(out) / s) for s in meta["splits"][split][subset]["shards"])


def tiny_video(path, frames=5, size=(32, 40), seed=0):
    rng = np.random.default_rng(seed)
    synthetic.write_avi(Path(path), [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(frames)])


@pytest.fixture(scope="module")
def ucf_raw(tmp_path_factory):
    return synthetic.generate(
        tmp_path_factory.mktemp("ucf"),
        num_classes=2,
        groups=3,
        clips_per_group=1,
        num_frames=6,
        height=32,
        width=40,
    )


def test_ucf101_records_match_the_inputs(ucf_raw, tmp_path):
    build(ucf_raw, tmp_path, "--splits=1,2")
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["classes"] == ["MoveRight", "MoveLeft"] and meta["num_videos"] == 6
    assert meta["failures"] == [] and meta["views"] == ["rgb", "flow"]
    assert meta["parameters"]["short_side"] == 32
    lists = ucf_raw / "ucfTrainTestlist"
    for split in (1, 2):
        for subset in ("train", "test"):
            listed = [
                ln.split()[0] for ln in (lists / f"{subset}list{split:02d}.txt").read_text().splitlines()
            ]
            recs = records_of(tmp_path, f"split{split}", subset)
            assert sorted(r["video_id"] for r in recs) == sorted(Path(x).stem for x in listed)
            assert meta["splits"][f"split{split}"][subset]["num_videos"] == len(listed)
            for r in recs:
                assert r["label"] == ["MoveRight", "MoveLeft"].index(r["class_name"])
                assert r["class_name"] in r["video_id"]
                assert (r["num_frames"], r["num_flow"]) == (6, 5) == (len(r["frames"]), len(r["flows"]))
                assert (r["height"], r["width"]) == (32, 40)
                assert r["source"] == r["class_name"] + "_g" + r["video_id"].split("_g")[1][:2]
    # Split 1 tests on group 1 of each class; source ids are unique per (class, group).
    recs = records_of(tmp_path, "split1", "test") + records_of(tmp_path, "split1", "train")
    assert {r["video_id"] for r in records_of(tmp_path, "split1", "test")} == {
        "v_MoveRight_g01_c01",
        "v_MoveLeft_g01_c01",
    }
    assert len({r["source_id"] for r in recs}) == 6


def test_hmdb51_layout(tmp_path):
    raw = tmp_path / "raw"
    for cls in ("brush_hair", "cartwheel"):
        lines = []
        for i, tag in enumerate((1, 1, 2, 0)):
            tiny_video(raw / cls / f"{cls}_{i}.avi", seed=i)
            lines.append(f"{cls}_{i}.avi {tag} ")
        split_dir = raw / "testTrainMulti_7030_splits"
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    build(raw, tmp_path / "out", dataset="hmdb51")
    train = records_of(tmp_path / "out", "split1", "train")
    test = records_of(tmp_path / "out", "split1", "test")
    assert sorted(r["video_id"] for r in train) == [
        "brush_hair_0",
        "brush_hair_1",
        "cartwheel_0",
        "cartwheel_1",
    ]
    assert sorted((r["video_id"], r["label"]) for r in test) == [("brush_hair_2", 0), ("cartwheel_2", 1)]
    assert all(r["num_frames"] == 5 for r in train + test)


def test_folder_layout(tmp_path):
    raw = tmp_path / "raw"
    # Frames of three shapes (landscape, portrait, wider landscape): short side 32 when stored.
    sizes = {"a0": (32, 40), "b0": (48, 32), "a1": (32, 40), "b1": (32, 64)}
    for name, size in sizes.items():
        tiny_video(raw / name[0] / f"{name}.avi", size=size, seed=int(name[1]))
    (raw / "splits").mkdir()
    (raw / "splits" / "trainlist01.txt").write_text("a/a0.avi\nb/b0.avi\n")
    (raw / "splits" / "testlist01.txt").write_text("a/a1.avi\nb/b1.avi\n")
    build(raw, tmp_path / "out", "--no_flow", dataset="folder")
    test = records_of(tmp_path / "out", "split1", "test")
    assert sorted((r["video_id"], r["label"], r["num_flow"]) for r in test) == [("a1", 0, 0), ("b1", 1, 0)]
    # The largest stored frame of each subset (on-device resizing pads to it), from the records.
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    for subset in ("train", "test"):
        recs = records_of(tmp_path / "out", "split1", subset)
        largest = [max(r["height"] for r in recs), max(r["width"] for r in recs)]
        assert meta["splits"]["split1"][subset]["max_frame_size"] == largest
    assert meta["splits"]["split1"]["train"]["max_frame_size"] == [48, 40]
    assert meta["splits"]["split1"]["test"]["max_frame_size"] == [32, 64]


@pytest.mark.parametrize("velocity", [(2, 0), (-2, 0), (0, 1)])
def test_flow_recovers_a_known_motion(tmp_path, velocity):
    """A texture translating by (vx, vy) px/frame: stored flow, decoded, gives that motion.

    Tolerance: median over the interior within 0.35 px (quantisation step is 0.16 px).
    """
    import tensorflow as tf

    vx, vy = velocity
    rng = np.random.default_rng(0)
    small = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    import cv2

    tex = cv2.resize(small, (128, 128), interpolation=cv2.INTER_CUBIC)
    frames = [np.clip(np.roll(tex, (vy * t, vx * t), axis=(0, 1)), 0, 255).astype(np.uint8) for t in range(5)]
    synthetic.write_avi(tmp_path / "v.avi", frames)
    _, flows, _, size = process_video(str(tmp_path / "v.avi"), short_side=128, jpeg_quality=95)
    assert size == (128, 128) and len(flows) == 4
    for jpeg in flows:
        rgb = tf.io.decode_jpeg(jpeg).numpy()  # channels (dx, dy, 128) as the pipeline sees them
        flow = dequantize_flow(rgb[16:-16, 16:-16, :2])
        assert abs(np.median(flow[..., 0]) - vx) < 0.35, np.median(flow[..., 0])
        assert abs(np.median(flow[..., 1]) - vy) < 0.35, np.median(flow[..., 1])
        assert abs(np.median(rgb[..., 2]) - 128) <= 1


@pytest.mark.slow
def test_bad_videos_are_skipped_and_reported(ucf_raw, tmp_path):
    raw = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(ucf_raw), str(raw)], check=True)
    (raw / "UCF-101" / "MoveLeft" / "v_MoveLeft_g02_c01.avi").write_bytes(b"not a video" * 100)
    tiny_video(raw / "UCF-101" / "MoveLeft" / "v_MoveLeft_g03_c01.avi", frames=1)
    proc = build(raw, tmp_path / "out", check=False)
    assert proc.returncode == 1
    assert "v_MoveLeft_g02_c01" in proc.stderr and "v_MoveLeft_g03_c01" in proc.stderr
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert "unreadable" in reasons["v_MoveLeft_g02_c01"]
    assert "one frame" in reasons["v_MoveLeft_g03_c01"]
    ids = {r["video_id"] for s in ("train", "test") for r in records_of(tmp_path / "out", "split1", s)}
    assert len(ids) == 4 and not ids & set(reasons)
    assert build(raw, tmp_path / "out", "--allow_failures", check=False).returncode == 0


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("rm ucfTrainTestlist/testlist01.txt", "testlist01.txt is missing"),
        ("rm UCF-101/MoveLeft/v_MoveLeft_g01_c01.avi", "videos named in the split lists are missing"),
        (
            "sed -i s/MoveLeft/Jump/ ucfTrainTestlist/classInd.txt",
            "classes that the class list does not contain",
        ),
    ],
)
def test_layout_errors_stop_before_any_work(ucf_raw, tmp_path, breakage, message):
    raw = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(ucf_raw), str(raw)], check=True)
    subprocess.run(breakage, shell=True, cwd=raw, check=True)
    proc = build(raw, tmp_path / "out", check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_jax_flow_backend_stores_what_the_opencv_backend_stores(ucf_raw, tmp_path):
    """Same records but for the flow JPEGs, whose flows agree within the bounds of OpenCV's."""
    import tensorflow as tf

    build(ucf_raw, tmp_path / "cv", "--flow_backend=opencv")
    # A budget below one video: no decode starts while a video waits for its flow; none waits forever.
    build(ucf_raw, tmp_path / "jax", "--flow_backend=jax", "--flow_batch=4", "--flow_memory_gib=1e-6")
    meta = {b: json.loads((tmp_path / b / "metadata.json").read_text()) for b in ("cv", "jax")}
    assert meta["cv"]["parameters"]["flow"]["backend"] == "opencv"
    assert meta["jax"]["parameters"]["flow"]["backend"] == "jax"
    assert meta["cv"]["splits"] == meta["jax"]["splits"]
    epe = []
    for subset in ("train", "test"):
        cv, jx = records_of(tmp_path / "cv", "split1", subset), records_of(tmp_path / "jax", "split1", subset)
        for a, b in zip(cv, jx, strict=True):
            assert {k: v for k, v in a.items() if k != "flows"} == {
                k: v for k, v in b.items() if k != "flows"
            }
            assert len(a["flows"]) == len(b["flows"]) == a["num_frames"] - 1
            for fa, fb in zip(a["flows"], b["flows"], strict=True):
                fa, fb = (tf.io.decode_jpeg(f, dct_method="INTEGER_ACCURATE").numpy() for f in (fa, fb))
                assert fa.shape == fb.shape == (32, 40, 3)
                epe.append(
                    np.linalg.norm(dequantize_flow(fa[..., :2]) - dequantize_flow(fb[..., :2]), axis=-1)
                )
    epe = np.concatenate([e.ravel() for e in epe])
    assert epe.mean() <= 0.1 and np.percentile(epe, 99) <= 1.0, (epe.mean(), np.percentile(epe, 99))
    # A work directory started with one backend is not finished with another.
    proc = build(ucf_raw, tmp_path / "jax", "--flow_backend=opencv", check=False)
    assert proc.returncode == 2 and "--flow_backend=jax" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["opencv", "jax"])
def test_interrupted_build_resumes_to_the_same_records(tmp_path, backend):
    raw = synthetic.generate(
        tmp_path / "raw", num_classes=2, groups=6, clips_per_group=1, num_frames=12, height=32, width=40
    )
    # The third video the build takes gets 64 times the pixels of another (4x the frames, 16x the
    # frame size), so that the kill below, after two records, lands while it is prepared, however
    # busy the machine is.
    rng = np.random.default_rng(0)
    look = tuple(synthetic.texture(rng, 128, 160, rng.uniform(40, 215, 3)) for _ in range(2))
    frames = synthetic.render_clip(rng, synthetic.MOTIONS["MoveLeft"], look, 48, 128, 160)
    synthetic.write_avi(Path(layouts.ucf101(str(raw), [1]).videos[2].path), frames)
    flags = [f"--flow_backend={backend}", "--flow_batch=4"]
    build(raw, tmp_path / "whole", *flags)
    cmd = [sys.executable, "-m", "data_prep.build", "--dataset=ucf101", f"--raw_dir={raw}", *flags]
    cmd += [f"--out_dir={tmp_path / 'resumed'}", "--workers=1", "--quiet", "--short_side=32"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "resumed" / "work"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.glob("*.tfrecord"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(work.glob("*.tfrecord")))
    assert 2 <= done < 12, f"kill should land mid-run, {done} of 12 videos were done"
    assert not (tmp_path / "resumed" / "metadata.json").exists()
    build(raw, tmp_path / "resumed", *flags)
    for shard in sorted((tmp_path / "whole").glob("split1/*.tfrecord")):
        assert (
            shard.read_bytes() == (tmp_path / "resumed" / shard.relative_to(tmp_path / "whole")).read_bytes()
        )


def _read_avi(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (frame := cap.read())[0]:
        frames.append(frame[1].astype(np.float32))
    return np.stack(frames)


def test_speed_set_shares_each_look_across_classes(tmp_path):
    # The demo's set: a look (background + square pattern) is one group's setting in every class,
    # so appearance never tells the class; only the square's speed does.
    raw = synthetic.generate(
        tmp_path, num_classes=4, groups=3, clips_per_group=1, num_frames=16, kind="speed", shared_looks=True
    )
    video = {
        (cls, g): _read_avi(raw / "UCF-101" / cls / f"v_{cls}_g{g:02d}_c01.avi")
        for cls in synthetic.SPEEDS
        for g in (1, 2, 3)
    }
    # Pixels away from the square are the background; its median colour is the look's.
    background = {key: np.median(v.reshape(-1, 3), axis=0) for key, v in video.items()}
    for g in (1, 2, 3):
        same = [np.abs(background["Slow", g] - background[cls, g]).max() for cls in synthetic.SPEEDS]
        assert max(same) < 8, (g, same)
    assert np.abs(background["Slow", 1] - background["Slow", 2]).max() > 8
    # The frame-to-frame change grows with the class's speed.
    motion = [
        np.mean([np.abs(np.diff(video[cls, g], axis=0)).mean() for g in (1, 2, 3)])
        for cls in synthetic.SPEEDS
    ]
    assert motion == sorted(motion), motion


def test_patterns_mark_each_class_square_and_change_nothing_else(tmp_path):
    # The demo's set: with --patterns the plain class is the set without them, byte for byte (the
    # marks draw from their own generator), and the other classes' squares carry their pattern.
    args = dict(num_classes=4, groups=3, clips_per_group=1, num_frames=8, kind="speed", shared_looks=True)
    plain = synthetic.generate(tmp_path / "plain", square_size=0.3, **args)
    marked = synthetic.generate(tmp_path / "marked", square_size=0.3, patterns=True, **args)
    for cls in synthetic.SPEEDS:
        name = f"{cls}/v_{cls}_g01_c01.avi"
        if cls == "Slow":  # 'plain'
            assert (plain / "UCF-101" / name).read_bytes() == (marked / "UCF-101" / name).read_bytes()
        else:
            a, b = _read_avi(plain / "UCF-101" / name), _read_avi(marked / "UCF-101" / name)
            changed = np.abs(a - b).max(axis=-1) > 20  # (T, H, W): where the pattern shows
            # In every frame, within the square (side 2 x 0.3 x 64 = 38 pixels of the 64 x 80
            # frame; JPEG's 8x8 blocks may spill a little) and over a good part of it.
            for frame in changed:
                rows, cols = np.nonzero(frame.any(axis=1))[0], np.nonzero(frame.any(axis=0))[0]
                assert np.ptp(rows) < 38 + 8 and np.ptp(cols) < 38 + 8, (cls, rows, cols)
                assert frame.mean() > 0.1, (cls, frame.mean())
    with pytest.raises(ValueError, match="kind='speed'"):
        synthetic.generate(tmp_path / "bad", num_classes=2, kind="direction", patterns=True)
