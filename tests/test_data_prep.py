"""data_prep end to end: the TFDS builders and the real command on tiny AVIs in the official layouts."""

import contextlib
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvtcl_jax.data.dataset_info import load_dataset_info
from cvtcl_jax.data.records import read_examples
from data_prep import build as data_prep_build
from data_prep import layouts
from data_prep.builders import dataset_name
from data_prep.video import dequantize_flow, process_video, read_frames
from generated import synthetic

ROOT = Path(__file__).resolve().parents[1]
UCF = dataset_name("ucf101", 1, short_side=32)  # cvtcl_ucf101/split1_32px_q90


def build(raw, out, *extra, dataset="ucf101", check=True) -> subprocess.CompletedProcess:
    """`python -m data_prep.build` with these arguments, run in this process (the command is
    its main() with the console moved to a log file; starting one costs seconds of imports), its
    lines captured as the command's standard output and error."""
    argv = [f"--dataset={dataset}", f"--raw_dir={raw}", f"--out_dir={out}"]
    argv += ["--workers=2", "--quiet", "--short_side=32", *extra]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = data_prep_build.main(argv)
    proc = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"build failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def examples_of(out, name, subset):
    """The examples of one split of a built dataset, frames as JPEG bytes."""
    info = load_dataset_info(out, name)
    return read_examples(info.subset(subset).shards, info.features)


def metadata_of(out, name) -> dict:
    import tensorflow_datasets as tfds

    return dict(tfds.builder(name, data_dir=str(out)).info.metadata)


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
    proc = build(ucf_raw, tmp_path, "--splits=1,2")
    assert f"--config.data.name={UCF}" in proc.stdout
    lists = ucf_raw / "ucfTrainTestlist"
    for split in (1, 2):
        name = dataset_name("ucf101", split, short_side=32)
        info = load_dataset_info(tmp_path, name)
        meta = metadata_of(tmp_path, name)
        assert info.classes == ("MoveRight", "MoveLeft") and meta["num_listed"] == 6
        assert meta["failures"] == [] and info.views == ("rgb", "flow")
        assert meta["parameters"]["short_side"] == 32 and meta["dataset"] == "ucf101"
        for subset in ("train", "test"):
            listed = [
                ln.split()[0] for ln in (lists / f"{subset}list{split:02d}.txt").read_text().splitlines()
            ]
            recs = examples_of(tmp_path, name, subset)
            assert sorted(r["video_id"] for r in recs) == sorted(Path(x).stem for x in listed)
            assert info.subset(subset).num_videos == len(listed)
            for r in recs:
                class_name = info.classes[r["label"]]
                assert class_name in r["video_id"]
                assert (r["num_frames"], r["num_flow"]) == (6, 5) == (len(r["rgb"]), len(r["flow"]))
                assert (r["height"], r["width"]) == (32, 40)
                assert r["source"] == class_name + "_g" + r["video_id"].split("_g")[1][:2]
    # Split 1 tests on group 1 of each class; source ids are unique per (class, group).
    recs = examples_of(tmp_path, UCF, "test") + examples_of(tmp_path, UCF, "train")
    assert {r["video_id"] for r in examples_of(tmp_path, UCF, "test")} == {
        "v_MoveRight_g01_c01",
        "v_MoveLeft_g01_c01",
    }
    assert len({r["source_id"] for r in recs}) == 6
    assert sorted(r["video_index"] for r in recs) == list(range(6))
    # The stored frames are the raw video's (to JPEG's rounding, a few levels on these sharp
    # textures), frame for frame: far closer to their own than to another video's.
    raw = {}
    for r in recs:
        path = ucf_raw / "UCF-101" / info.classes[r["label"]] / f"{r['video_id']}.avi"
        raw[r["video_id"]] = read_frames(str(path))[0]
    for r in recs:
        for i, jpeg in enumerate(r["rgb"]):
            stored = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
            error = {vid: np.abs(stored - frames[i].astype(int)).mean() for vid, frames in raw.items()}
            own = error.pop(r["video_id"])
            assert own < 6 and own < min(error.values()) / 3, (r["video_id"], i, own, error)


def _hmdb_raw(raw: Path, corrupt: str | None = None) -> Path:
    for cls in ("brush_hair", "cartwheel"):
        lines = []
        for i, tag in enumerate((1, 1, 2, 0)):
            tiny_video(raw / cls / f"{cls}_{i}.avi", seed=i)
            lines.append(f"{cls}_{i}.avi {tag} ")
        split_dir = raw / "testTrainMulti_7030_splits"
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    if corrupt:
        (raw / corrupt).write_bytes(b"not a video" * 100)
    return raw


def test_hmdb51_layout_with_the_tfds_command(tmp_path):
    """`tfds build` itself (one process, Beam's default runner) on an HMDB51 layout with a corrupt
    video: it is skipped and listed, the others are stored."""
    raw = _hmdb_raw(tmp_path / "raw", corrupt="cartwheel/cartwheel_1.avi")
    # The console script pip installed beside this interpreter (or on the PATH).
    tfds = shutil.which("tfds", path=str(Path(sys.executable).parent)) or shutil.which("tfds")
    assert tfds, "the `tfds` command of tensorflow-datasets is not installed"
    cmd = [tfds, "build", "cvtcl_hmdb51", "--imports=data_prep.builders", "--config=split1"]
    cmd += [f"--manual_dir={raw}", f"--data_dir={tmp_path / 'out'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as the README runs it: PYTHONPATH=. tfds build ...
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = examples_of(tmp_path / "out", "cvtcl_hmdb51/split1", "train")
    test = examples_of(tmp_path / "out", "cvtcl_hmdb51/split1", "test")
    assert sorted(r["video_id"] for r in train) == ["brush_hair_0", "brush_hair_1", "cartwheel_0"]
    assert sorted((r["video_id"], r["label"]) for r in test) == [("brush_hair_2", 0), ("cartwheel_2", 1)]
    assert all(r["num_frames"] == 5 and (r["height"], r["width"]) == (128, 160) for r in train + test)
    meta = metadata_of(tmp_path / "out", "cvtcl_hmdb51/split1")
    assert [(f["video_id"], f["reason"].split(":")[0]) for f in meta["failures"]] == [
        ("cartwheel_1", "unreadable")
    ]
    assert meta["num_prepared"] == 5 and meta["num_per_split"] == {"train": 3, "test": 2}


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
    name = dataset_name("folder", 1, short_side=32, flow=False)
    assert name == "cvtcl_folder/split1_32px_q90_rgb"
    test = examples_of(tmp_path / "out", name, "test")
    assert sorted((r["video_id"], r["label"], r["num_flow"], "flow" in r) for r in test) == [
        ("a1", 0, 0, False),
        ("b1", 1, 0, False),
    ]
    info = load_dataset_info(tmp_path / "out", name)
    assert info.views == ("rgb",)
    # The largest stored frame of each split (on-device resizing pads to it), from the records.
    for subset in ("train", "test"):
        recs = examples_of(tmp_path / "out", name, subset)
        largest = (max(r["height"] for r in recs), max(r["width"] for r in recs))
        assert info.subset(subset).max_frame_size == largest
    assert info.subset("train").max_frame_size == (48, 40)
    assert info.subset("test").max_frame_size == (32, 64)


def _kinetics_raw(raw: Path) -> Path:
    """Two classes, train and val CSVs as the downloader writes them, two listed videos absent."""
    (raw / "annotations").mkdir(parents=True)
    rows = {
        "train": [
            ("juggling balls", "aaa", 0, 10),
            ("juggling balls", "bbb", 5, 15),
            ("abseiling", "aaa", 20, 30),
        ],
        "val": [("abseiling", "ccc", 1, 11), ("juggling balls", "ddd", 0, 10)],
    }
    absent = {("train", "bbb"), ("val", "ddd")}
    for subset, items in rows.items():
        with (raw / "annotations" / f"{subset}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            for i, (label, yid, start, end) in enumerate(items):
                writer.writerow([label, yid, start, end, subset])
                if (subset, yid) not in absent:
                    tiny_video(raw / subset / f"{yid}_{start:06d}_{end:06d}.mp4", seed=i)
    return raw


def test_kinetics_layout_lists_missing_videos(tmp_path):
    raw = _kinetics_raw(tmp_path / "raw")
    proc = build(raw, tmp_path / "out", dataset="kinetics", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 video(s) listed in the annotations are missing" in proc.stdout
    name = dataset_name("kinetics", short_side=32)
    assert name == "cvtcl_kinetics/k400_32px_q90"
    info = load_dataset_info(tmp_path / "out", name)
    assert info.classes == ("abseiling", "juggling balls") and set(info.subsets) == {"train", "validation"}
    train = examples_of(tmp_path / "out", name, "train")
    val = examples_of(tmp_path / "out", name, "validation")
    assert sorted((r["video_id"], r["label"], r["source"]) for r in train) == [
        ("aaa_000000_000010", 1, "aaa"),
        ("aaa_000020_000030", 0, "aaa"),
    ]
    assert len({r["source_id"] for r in train}) == 1  # two clips of one YouTube video are siblings
    assert [(r["video_id"], r["label"]) for r in val] == [("ccc_000001_000011", 0)]
    meta = metadata_of(tmp_path / "out", name)
    assert meta["missing"] == ["train/bbb_000005_000015.mp4", "val/ddd_000000_000010.mp4"]
    assert meta["num_listed"] == 5 and meta["failures"] == []
    # A layout error still stops the build before any work: the annotations are not optional.
    (raw / "annotations" / "val.csv").unlink()
    proc = build(raw, tmp_path / "again", dataset="kinetics", check=False)
    assert proc.returncode == 2 and "annotations/val.csv not found" in proc.stderr


def test_local_beam_runs_never_fetch_a_runner():
    """Beam's DirectRunner would download its Prism runner binary at run time; local builds run on
    the FnApiRunner instead (with their worker options), cluster runners stay as chosen."""
    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from data_prep.builders import offline_runner

    workers = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2"])
    for options in (None, PipelineOptions([]), workers):
        config = offline_runner(tfds.download.DownloadConfig(beam_options=options))
        assert isinstance(config.beam_runner, FnApiRunner) and config.beam_options is options
    dataflow = tfds.download.DownloadConfig(beam_options=PipelineOptions(["--runner=DataflowRunner"]))
    assert offline_runner(dataflow) is dataflow


def _beam_build(raw, data_dir, beam_options=None):
    """The builder's download_and_prepare with TFDS's manual_dir, as `tfds build` runs it."""
    import tensorflow_datasets as tfds

    from data_prep.builders import CvtclUcf101, config_for

    builder = CvtclUcf101(config=config_for("split1", 1, short_side=32), data_dir=str(data_dir))
    download = tfds.download.DownloadConfig(manual_dir=str(raw), beam_options=beam_options)
    builder.download_and_prepare(download_config=download)
    return builder


@pytest.mark.slow
def test_beam_with_two_local_workers_builds_what_one_process_builds(ucf_raw, tmp_path):
    """The builder's Beam pipeline on the DirectRunner with 2 worker processes and in this process:
    the same examples (per video id), the corrupt video reported both ways."""
    from apache_beam.options.pipeline_options import PipelineOptions

    raw = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(ucf_raw), str(raw)], check=True)
    (raw / "UCF-101" / "MoveLeft" / "v_MoveLeft_g02_c01.avi").write_bytes(b"not a video" * 100)
    one = _beam_build(raw, tmp_path / "one", PipelineOptions([]))
    workers = PipelineOptions(
        ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    )
    two = _beam_build(raw, tmp_path / "two", workers)
    for subset, count in (("train", 3), ("test", 2)):
        a, b = (
            {r["video_id"]: r for r in examples_of(d, UCF, subset)}
            for d in (tmp_path / "one", tmp_path / "two")
        )
        assert len(a) == count and a.keys() == b.keys()
        for vid in a:
            assert {k: v for k, v in a[vid].items()} == {k: v for k, v in b[vid].items()}, vid
    for builder in (one, two):
        failures = builder.info.metadata["failures"]
        assert [f["video_id"] for f in failures] == ["v_MoveLeft_g02_c01"] and "unreadable" in failures[0][
            "reason"
        ]


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
    meta = metadata_of(tmp_path / "out", UCF)
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert "unreadable" in reasons["v_MoveLeft_g02_c01"]
    assert "one frame" in reasons["v_MoveLeft_g03_c01"]
    ids = {r["video_id"] for s in ("train", "test") for r in examples_of(tmp_path / "out", UCF, s)}
    assert len(ids) == 4 and not ids & set(reasons)
    proc = build(raw, tmp_path / "out", "--allow_failures", check=False)
    assert proc.returncode == 0 and "v_MoveLeft_g02_c01" in proc.stderr


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
    assert not list((tmp_path / "out").rglob("*.json")), "nothing is prepared or cached"


@pytest.mark.slow
def test_jax_flow_backend_stores_what_the_opencv_backend_stores(ucf_raw, tmp_path):
    """Same examples but for the flow JPEGs, whose flows agree within the bounds of OpenCV's."""
    import tensorflow as tf

    build(ucf_raw, tmp_path / "cv", "--flow_backend=opencv")
    # A budget below one video: no decode starts while a video waits for its flow; none waits forever.
    build(ucf_raw, tmp_path / "jax", "--flow_backend=jax", "--flow_batch=4", "--flow_memory_gib=1e-6")
    meta = {b: metadata_of(tmp_path / b, UCF) for b in ("cv", "jax")}
    assert meta["cv"]["parameters"]["flow"]["backend"] == "opencv"
    assert meta["jax"]["parameters"]["flow"]["backend"] == "jax"
    assert meta["cv"]["max_frame_size"] == meta["jax"]["max_frame_size"]
    epe = []
    for subset in ("train", "test"):
        cv, jx = examples_of(tmp_path / "cv", UCF, subset), examples_of(tmp_path / "jax", UCF, subset)
        for a, b in zip(cv, jx, strict=True):
            assert {k: v for k, v in a.items() if k != "flow"} == {k: v for k, v in b.items() if k != "flow"}
            assert len(a["flow"]) == len(b["flow"]) == a["num_frames"] - 1
            for fa, fb in zip(a["flow"], b["flow"], strict=True):
                fa, fb = (tf.io.decode_jpeg(f, dct_method="INTEGER_ACCURATE").numpy() for f in (fa, fb))
                assert fa.shape == fb.shape == (32, 40, 3)
                epe.append(
                    np.linalg.norm(dequantize_flow(fa[..., :2]) - dequantize_flow(fb[..., :2]), axis=-1)
                )
    epe = np.concatenate([e.ravel() for e in epe])
    assert epe.mean() <= 0.1 and np.percentile(epe, 99) <= 1.0, (epe.mean(), np.percentile(epe, 99))
    # Each backend caches its videos apart, so a cache is never finished by another backend.
    caches = tmp_path / "jax" / "downloads" / "cvtcl_video_cache" / "cvtcl_ucf101"
    assert [p.name for p in caches.iterdir()] == ["32px_q90_jax"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["opencv", "jax"])
def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, backend):
    """Killed mid-run and run again: the same examples in the same shards and order as a build
    that was not interrupted (not the same bytes: protobuf writes an example's feature map in an
    order that varies from process to process)."""
    raw = synthetic.generate(
        tmp_path / "raw", num_classes=2, groups=6, clips_per_group=1, num_frames=12, height=32, width=40
    )
    # The third video the build takes gets 64 times the pixels of another (4x the frames, 16x the
    # frame size), so that the kill below, after two records, lands while it is prepared, however
    # busy the machine is.
    rng = np.random.default_rng(0)
    look = tuple(synthetic.texture(rng, 128, 160, rng.uniform(40, 215, 3)) for _ in range(2))
    frames = synthetic.render_clip(rng, synthetic.MOTIONS["MoveLeft"], look, 48, 128, 160)
    synthetic.write_avi(Path(layouts.ucf101(str(raw), 1).videos[2].path), frames)
    flags = [f"--flow_backend={backend}", "--flow_batch=4"]
    build(raw, tmp_path / "whole", *flags)
    cmd = [sys.executable, "-m", "data_prep.build", "--dataset=ucf101", f"--raw_dir={raw}", *flags]
    cmd += [f"--out_dir={tmp_path / 'resumed'}", "--workers=1", "--quiet", "--short_side=32"]
    # Eight devices, as in this process, so that JAX's TV-L1 program is the compilation cache's.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = tmp_path / "resumed" / "downloads" / "cvtcl_video_cache"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.rglob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.rglob("*.json")))
    assert 2 <= done < 12, f"kill should land mid-run, {done} of 12 videos were done"
    assert not list((tmp_path / "resumed").glob("cvtcl_ucf101/*/*/dataset_info.json"))
    resumed = build(raw, tmp_path / "resumed", *flags)
    assert f"12 videos, {done} already prepared, {12 - done} to do" in resumed.stdout

    def shards(out):
        return sorted(p.relative_to(out) for p in (out / UCF).glob("*/*.tfrecord*"))

    whole = shards(tmp_path / "whole")
    assert len(whole) == 2 and shards(tmp_path / "resumed") == whole
    features = load_dataset_info(tmp_path / "whole", UCF).features
    for shard in whole:
        expected = read_examples([tmp_path / "whole" / shard], features)
        assert read_examples([tmp_path / "resumed" / shard], features) == expected


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


def test_pattern_set_pans_the_look_and_marks_each_class_with_its_pattern(tmp_path):
    # The RGB check's set: the background a video shows changes from its first frames to its
    # last (the camera pans), the square's pattern, its class, does not.
    args = dict(num_classes=4, groups=3, clips_per_group=1, num_frames=16, kind="pattern", square_size=0.3)
    raw = synthetic.generate(tmp_path, **args)
    classes = (raw / "ucfTrainTestlist" / "classInd.txt").read_text().split()[1::2]
    assert classes == list(synthetic.PATTERN_CLASSES)
    for g in (1, 2, 3):
        plain = _read_avi(raw / "UCF-101" / "Plain" / f"v_Plain_g{g:02d}_c01.avi")
        # Most pixels are background: with a still camera their median change would be noise.
        change = np.median(np.abs(plain[0] - plain[-1]))
        assert change > 10, (g, change)
    # The grey square's texture: the plain class is smooth, the others carry a fine pattern; the
    # frame's high frequencies (horizontal differences over 1 pixel) tell them apart.
    fine = {
        cls: np.mean(
            [
                np.abs(np.diff(_read_avi(raw / "UCF-101" / cls / f"v_{cls}_g{g:02d}_c01.avi"), axis=2)).mean()
                for g in (1, 2, 3)
            ]
        )
        for cls in synthetic.PATTERN_CLASSES
    }
    assert all(fine[cls] > 1.5 * fine["Plain"] for cls in ("Checker", "Dots", "Grain")), fine
    for extra in ("shared_looks", "patterns"):
        with pytest.raises(ValueError, match="drop shared_looks and patterns"):
            synthetic.generate(tmp_path / "bad", kind="pattern", num_classes=2, **{extra: True})
    with pytest.raises(ValueError, match="'pattern'"):
        synthetic.generate(tmp_path / "bad", kind="texture")
