"""`python -m data_prep.build --rgb_from/--flow_from`: datasets built from frames and TV-L1 flow that
CoCLR/MemDPC, CoCLR's LMDB converter and mmaction2's denseflow extracted (tests/extracted_layouts.py
writes them from generated videos with OpenCV's TV-L1), checked against the files as the tools
stored them."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_prep import build, layouts
from data_prep.builders import dataset_name
from data_prep.extracted import detect
from data_prep.video import VideoError, dequantize_flow
from generated import synthetic
from tests import extracted_layouts as tools
from tests.test_data_prep import examples_of, metadata_of

UCF = dataset_name("ucf101", 1, short_side=32)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A UCF101-layout raw set (6 videos, 8 frames, 32x40) and its frames and flow in each
    tool's layout; the raw videos are moved away, so a build can only read the extracted files."""
    root = tmp_path_factory.mktemp("extracted")
    raw = synthetic.generate(
        root / "raw", num_classes=2, groups=3, clips_per_group=1, num_frames=8, height=32, width=40
    )
    videos = tools.videos_of(raw)
    tools.write_coclr(videos, root / "frame", root / "flow")
    tools.write_lmdb(root / "frame", root / "ucf101_frame.lmdb", legacy_msgpack=True)
    tools.write_lmdb(root / "flow", root / "ucf101_flow.lmdb", legacy_msgpack=False)
    tools.write_mmaction(videos, root / "rawframes", bound=20.0)
    tools.write_mmaction(videos, root / "rawframes_b15", bound=15.0)
    shutil.move(raw / "UCF-101", root / "videos_elsewhere")
    return root, raw, videos


def run_build(raw, out, *flags, dataset="ucf101") -> int:
    argv = [f"--dataset={dataset}", f"--raw_dir={raw}", f"--out_dir={out}", "--workers=2", "--quiet"]
    return build.main([*argv, "--short_side=32", *flags])


def by_id(out, name=UCF):
    return {r["video_id"]: r for subset in ("train", "test") for r in examples_of(out, name, subset)}


def decode_flow(jpeg: bytes) -> np.ndarray:
    """Our stored flow JPEG (RGB = dx, dy, 128) -> (H, W, 2) uint8 (dx, dy)."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return np.stack([bgr[..., 2], bgr[..., 1]], axis=-1)


def given_coclr_flow(folder: Path) -> list[np.ndarray]:
    """CoCLR's flow files as stored: OpenCV wrote (dx, dy, 128), so B is dx and G is dy."""
    return [cv2.imread(str(p))[..., :2] for p in sorted(folder.glob("flow_*.jpg"))]


def check_against_given(records, root, videos, given_flow):
    """Frames are the given frames as decoded, JPEG-encoded at the stored quality (32x40 frames
    are stored at their size); flows the given 8-bit flows (mean absolute difference <= 0.7
    levels) and, dequantised, the TV-L1 flow they came from."""
    for name, (_, flows) in videos.items():
        record = records[name.split("/")[1]]
        assert (record["num_frames"], record["num_flow"]) == (8, 7) and record["fps"] == 0.0
        given = [cv2.imread(str(p)) for p in sorted((root / "frame" / name).glob("image_*.jpg"))]
        for jpeg, frame in zip(record["rgb"], given, strict=True):
            assert jpeg == cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        stored = np.stack([decode_flow(jpeg) for jpeg in record["flow"]])
        assert np.abs(stored.astype(int) - np.stack(given_flow(name))).mean() <= 0.7, name
        # dx and dy in their places: the stored values are the motion TV-L1 found.
        assert np.abs(dequantize_flow(stored) - np.clip(np.stack(flows), -20, 20)).mean() < 0.25


def test_coclr_folders_build_the_given_frames_and_flow_without_any_video(extracted, tmp_path, capsys):
    root, raw, videos = extracted
    assert run_build(raw, tmp_path, f"--rgb_from={root / 'frame'}", f"--flow_from={root / 'flow'}") == 0
    check_against_given(by_id(tmp_path), root, videos, lambda n: given_coclr_flow(root / "flow" / n))
    meta = metadata_of(tmp_path, UCF)
    assert meta["failures"] == [] and meta["num_prepared"] == 6
    assert meta["parameters"]["frames"] == {"layout": "coclr", "path": str(root / "frame")}
    flow = meta["parameters"]["flow"]
    assert flow["backend"] == "given" and flow["source"] == {
        "layout": "coclr",
        "path": str(root / "flow"),
        "bound_pixels": 20.0,
    }
    # Resumable as a build from videos: a second run finds every video prepared.
    capsys.readouterr()
    assert run_build(raw, tmp_path, f"--rgb_from={root / 'frame'}", f"--flow_from={root / 'flow'}") == 0
    assert "6 videos, 6 already prepared, 0 to do" in capsys.readouterr().out


def test_lmdbs_in_both_msgpack_variants_store_what_the_folders_store(extracted, tmp_path):
    root, raw, _ = extracted
    flags = [f"--rgb_from={root / 'ucf101_frame.lmdb'}", f"--flow_from={root / 'ucf101_flow.lmdb'}"]
    assert run_build(raw, tmp_path / "lmdb", *flags) == 0
    assert (
        run_build(raw, tmp_path / "folders", f"--rgb_from={root / 'frame'}", f"--flow_from={root / 'flow'}")
        == 0
    )
    from_lmdb, from_folders = by_id(tmp_path / "lmdb"), by_id(tmp_path / "folders")
    for vid, record in from_folders.items():
        assert from_lmdb[vid]["rgb"] == record["rgb"] and from_lmdb[vid]["flow"] == record["flow"]
    assert metadata_of(tmp_path / "lmdb", UCF)["parameters"]["frames"]["layout"] == "coclr_lmdb"


def test_a_beam_runner_builds_from_frames_what_the_local_pool_builds(extracted, tmp_path):
    """With --beam_pipeline_options the builder's Beam pipeline reads the frames itself."""
    root, raw, _ = extracted
    flags = [f"--rgb_from={root / 'rawframes'}", f"--flow_from={root / 'rawframes'}"]
    assert run_build(raw, tmp_path / "pool", *flags) == 0
    assert run_build(raw, tmp_path / "beam", *flags, "--beam_pipeline_options=runner=DirectRunner") == 0
    pool, beam = by_id(tmp_path / "pool"), by_id(tmp_path / "beam")
    assert sorted(pool) == sorted(beam)
    for vid, record in pool.items():
        assert beam[vid]["rgb"] == record["rgb"] and beam[vid]["flow"] == record["flow"]


@pytest.mark.parametrize("folder, bound", [("rawframes", 20.0), ("rawframes_b15", 15.0)])
def test_mmaction_rawframes_with_their_bound(extracted, tmp_path, folder, bound):
    root, raw, videos = extracted
    source = root / folder
    assert (
        run_build(raw, tmp_path, f"--rgb_from={source}", f"--flow_from={source}", f"--flow_bound={bound}")
        == 0
    )

    def given(name):  # the grayscale files as denseflow wrote them, re-quantised to b = 20
        xs = sorted((source / name).glob("flow_x_*.jpg"))
        pairs = [
            np.stack([cv2.imread(str(x), 0), cv2.imread(str(x).replace("flow_x", "flow_y"), 0)], -1)
            for x in xs
        ]
        flows = [p.astype(np.float64) * (2 * bound / 255) - bound for p in pairs]
        return [np.rint((np.clip(f, -20, 20) + 20) * 255 / 40).astype(np.uint8) for f in flows]

    records = by_id(tmp_path)
    for name in videos:
        stored = np.stack([decode_flow(jpeg) for jpeg in records[name.split("/")[1]]["flow"]])
        assert np.abs(stored.astype(int) - np.stack(given(name))).mean() <= 0.7, name
    assert metadata_of(tmp_path, UCF)["parameters"]["flow"]["source"]["bound_pixels"] == bound


def test_given_frames_without_flow_get_tvl1_computed_from_them(extracted, tmp_path):
    root, raw, videos = extracted
    assert run_build(raw, tmp_path, f"--rgb_from={root / 'frame'}", "--flow_backend=opencv") == 0
    records = by_id(tmp_path)
    for name in videos:
        given = [cv2.imread(str(p)) for p in sorted((root / "frame" / name).glob("image_*.jpg"))]
        for jpeg, flow in zip(records[name.split("/")[1]]["flow"], tools.tvl1(given), strict=True):
            assert np.abs(dequantize_flow(decode_flow(jpeg)) - np.clip(flow, -20, 20)).mean() < 0.25
    meta = metadata_of(tmp_path, UCF)
    assert meta["parameters"]["flow"]["backend"] == "opencv"
    assert meta["parameters"]["frames"]["layout"] == "coclr"


def test_missing_short_and_damaged_videos_are_skipped_and_reported(extracted, tmp_path):
    root, raw, _ = extracted
    frames, flow = tmp_path / "frame", tmp_path / "flow"
    shutil.copytree(root / "frame", frames)
    shutil.copytree(root / "flow", flow)
    shutil.rmtree(frames / "MoveRight" / "v_MoveRight_g02_c01")  # missing frames
    sorted((flow / "MoveLeft" / "v_MoveLeft_g03_c01").glob("*.jpg"))[-1].unlink()  # a short flow folder
    (frames / "MoveLeft" / "v_MoveLeft_g01_c01" / "image_00003.jpg").write_bytes(b"\xff\xd8 cut")
    tools.write_lmdb(
        frames, tmp_path / "frame.lmdb", legacy_msgpack=True, truncate="MoveRight/v_MoveRight_g03_c01"
    )
    out = tmp_path / "out"
    assert run_build(raw, out, f"--rgb_from={tmp_path / 'frame.lmdb'}", f"--flow_from={flow}") == 1
    meta = metadata_of(out, UCF)
    reasons = {f["video_id"]: f["reason"] for f in meta["failures"]}
    assert sorted(reasons) == [
        "v_MoveLeft_g01_c01",
        "v_MoveLeft_g03_c01",
        "v_MoveRight_g02_c01",
        "v_MoveRight_g03_c01",
    ]
    assert "its rgb is not in" in reasons["v_MoveRight_g02_c01"]
    assert "8 frames but 6 flows" in reasons["v_MoveLeft_g03_c01"]
    assert "frame 3 is not a readable JPEG" in reasons["v_MoveLeft_g01_c01"]
    assert "LMDB value is damaged" in reasons["v_MoveRight_g03_c01"]
    assert meta["num_prepared"] == 2 and meta["num_per_split"] == {"train": 1, "test": 1}


@pytest.mark.parametrize(
    "flags, message",
    [
        (lambda r: [f"--rgb_from={r / 'raw'}"], "not a recognised rgb layout"),
        (lambda r: [f"--rgb_from={r / 'flow'}"], "that is coclr flow, not rgb"),
        (
            lambda r: [f"--rgb_from={r / 'frame'}", f"--flow_from={r / 'frame'}"],
            "not a recognised flow layout",
        ),
        (lambda r: [f"--rgb_from={r / 'frame' / 'MoveLeft'}"], "not a recognised rgb layout"),
        (lambda r: [f"--rgb_from={r / 'absent'}"], "does not exist"),
    ],
    ids=["no_frames", "flow_as_rgb", "frames_as_flow", "one_level_too_deep", "absent"],
)
def test_unrecognised_sources_stop_before_any_work(extracted, tmp_path, capsys, flags, message):
    root, raw, _ = extracted
    assert run_build(raw, tmp_path, *flags(root)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cvtcl_ucf101").exists()


def test_a_source_of_another_dataset_stops_before_any_work(extracted, tmp_path, capsys):
    root, raw, _ = extracted
    other = tmp_path / "other"
    shutil.copytree(root / "frame" / "MoveLeft", other / "Juggling")
    for video in (other / "Juggling").iterdir():
        video.rename(video.with_name(video.name.replace("MoveLeft", "Juggling")))
    assert run_build(raw, tmp_path, f"--rgb_from={other}") == 2
    assert "holds none of the 6 videos the split lists name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_build(raw, tmp_path, f"--flow_from={root / 'flow'}")
    assert e.value.code == 2


def test_layouts_without_videos_take_their_classes_from_the_lists(tmp_path):
    """HMDB51 and a folder dataset whose videos are elsewhere: the split files name the classes."""
    hmdb = tmp_path / "hmdb"
    (hmdb / "splits").mkdir(parents=True)
    (hmdb / "splits" / "wave_test_split1.txt").write_text("w1.avi 1\nw2.avi 2\n")
    (hmdb / "splits" / "clap_test_split1.txt").write_text("c1.avi 1\nc2.avi 0\n")
    layout = layouts.hmdb51(str(hmdb), 1, videos_required=False)
    assert layout.classes == ["clap", "wave"] and layout.subsets == {"train": ["c1", "w1"], "test": ["w2"]}
    with pytest.raises(layouts.LayoutError, match="no <class>/\\*.avi folders"):
        layouts.hmdb51(str(hmdb), 1)
    own = tmp_path / "own"
    (own / "splits").mkdir(parents=True)
    (own / "splits" / "trainlist01.txt").write_text("b/x.mp4\na/y.mp4\n")
    (own / "splits" / "testlist01.txt").write_text("a/z.mp4\n")
    layout = layouts.folder(str(own), 1, videos_required=False)
    assert layout.classes == ["a", "b"] and [v.label for v in layout.videos] == [0, 0, 1]


def test_frame_files_numbered_with_a_gap_are_refused(tmp_path):
    video = tmp_path / "Wave" / "w1"
    video.mkdir(parents=True)
    frame = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    for i in (1, 2, 4):
        (video / f"image_{i:05d}.jpg").write_bytes(frame)
    source = detect(str(tmp_path), "rgb")
    assert source.layout == "coclr" and source.locate("Wave", "w1") == str(video)
    with pytest.raises(VideoError, match="skip number 3"):
        source.rgb_frames(str(video))


def test_kinetics_frames_in_train_and_val_trees_set_absent_videos_aside(tmp_path, capsys):
    """mmaction2 rawframes of Kinetics as <subset>/<class_with_underscores>/<clip>/: found by clip
    stem; a listed clip without frames is missing (as an absent video is), not a failure."""
    raw, frames = tmp_path / "raw", tmp_path / "rawframes"
    (raw / "annotations").mkdir(parents=True)
    rows = {
        "train": [("juggling balls", "aaa", 0, 10), ("abseiling", "bbb", 5, 15)],
        "val": [("abseiling", "ccc", 1, 11)],
    }
    rng = np.random.default_rng(0)
    for subset, items in rows.items():
        lines = ["label,youtube_id,time_start,time_end,split"]
        for label, yid, start, end in items:
            lines.append(f"{label},{yid},{start},{end},{subset}")
            if yid != "bbb":
                clip = [
                    cv2.GaussianBlur(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8), (5, 5), 0)
                    for _ in range(5)
                ]
                name = f"{subset}/{label.replace(' ', '_')}/{yid}_{start:06d}_{end:06d}"
                tools.write_mmaction({name: (clip, tools.tvl1(clip))}, frames, bound=20.0)
        (raw / "annotations" / f"{subset}.csv").write_text("\n".join(lines) + "\n")
    flags = [f"--rgb_from={frames}", f"--flow_from={frames}"]
    assert run_build(raw, tmp_path / "out", *flags, dataset="kinetics") == 0
    assert "1 video(s) listed in the annotations are missing" in capsys.readouterr().out
    name = dataset_name("kinetics", short_side=32)
    meta = metadata_of(tmp_path / "out", name)
    assert meta["missing"] == ["train/bbb_000005_000015.mp4"] and meta["failures"] == []
    train = examples_of(tmp_path / "out", name, "train")
    val = examples_of(tmp_path / "out", name, "validation")
    assert [(r["video_id"], r["num_frames"], r["num_flow"]) for r in train + val] == [
        ("aaa_000000_000010", 5, 4),
        ("ccc_000001_000011", 5, 4),
    ]
