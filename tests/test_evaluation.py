"""Evaluation modes end to end: retrieval, linear probe, finetuning, two-stream, results files,
device-count independence, resume, bad configs, and learned vs random features on motion classes."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from cvtcl_jax import checkpoints, modes
from cvtcl_jax.data import sampling
from cvtcl_jax.models import encoder_from_config, variable_shapes
from cvtcl_jax.modes.checks import ConfigError
from data_prep import build
from generated import synthetic
from tests import learning_runs, tiny, tiny_config
from tests.conftest import LENGTHS
from tests.learning_runs import eval_config
from tests.pattern_records import PATTERN_NAME, write_pattern_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory):
    """The pattern videos with labels video % 2, so both classes are in train and test."""
    root = tmp_path_factory.mktemp("two_class")
    write_pattern_dataset(root, LENGTHS, videos_per_shard=3, num_classes=2)
    return root


def _events(workdir) -> tuple[set[str], set[str]]:
    """(scalar tags, image tags) in a workdir's TensorBoard files."""
    scalars, images = set(), set()
    for path in glob.glob(str(Path(workdir) / "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                is_image = value.metadata.plugin_data.plugin_name == "images" or value.HasField("image")
                (images if is_image else scalars).add(value.tag)
    return scalars, images


def _metrics(workdir, protocol, view, dataset="pattern_videos_split1"):
    return json.loads((Path(workdir) / f"{protocol}_{dataset}_{view}.json").read_text())


# ---------------------------------------------------------------------- the schedule's table


def test_schedule_ends_with_the_evaluation_table(schedule_run):
    wd, summary = schedule_run
    table = summary["evaluation"]
    assert set(table) == {"rgb", "flow", "two_stream"}
    for view, stages in table.items():
        assert set(stages) == {"random_init", "init", "cotrain"}, view
        for row in stages.values():
            assert set(row) == {"R@1", "R@5", "linear_top1"}
            assert all(0 <= v <= 100 for v in row.values())
    record = _metrics(wd / "eval" / "cotrain", "retrieval", "two_stream")
    assert (
        record["sources"]["rgb"]["stage"] == "cotrain1_rgb"
        and record["sources"]["flow"]["kind"] == "checkpoint"
    )
    assert json.loads((wd / "schedule.json").read_text())["evaluation"] == table
    text = modes.evaluation.format_table(table)
    assert text.splitlines()[0].split() == ["view", "stage", "R@1", "R@5", "linear_top1"]
    assert len(text.splitlines()) == 1 + 9


# ---------------------------------------------------------------------- retrieval


def test_retrieval_from_checkpoints_and_exports_agree_and_record_everything(
    schedule_run, two_class_data, tmp_path
):
    wd, _ = schedule_run
    from_stages = modes.run(
        eval_config(two_class_data, "retrieval", rgb=wd / "cotrain1_rgb", flow=wd / "cotrain1_flow"),
        tmp_path / "a",
    )
    from_exports = modes.run(
        eval_config(two_class_data, "retrieval", rgb=wd / "export" / "rgb", flow=wd / "export" / "flow"),
        tmp_path / "b",
    )
    assert set(from_stages) == {"rgb", "flow", "two_stream"}
    for view in from_stages:
        assert from_stages[view]["metrics"] == from_exports[view]["metrics"], view
    for name in ("rgb_test_center.npz", "flow_train_center.npz"):
        np.testing.assert_allclose(
            np.load(tmp_path / "a" / "features" / name)["features"],
            np.load(tmp_path / "b" / "features" / name)["features"],
            rtol=1e-4,
            atol=1e-5,
        )
    record = _metrics(tmp_path / "a", "retrieval", "two_stream")
    assert set(record["metrics"]) == {"R@1", "R@5", "R@10", "R@20"}
    assert record["protocol"] == "retrieval" and record["dataset"] == PATTERN_NAME
    assert record["sources"]["rgb"]["batch"] == checkpoints.stage_info(wd / "cotrain1_rgb")["step"]
    assert record["settings"]["protocol"] == "dense" and record["date"].startswith("20")
    assert _metrics(tmp_path / "b", "retrieval", "flow")["sources"]["flow"]["kind"] == "export"
    scalars, images = _events(tmp_path / "a")
    assert {"retrieval/rgb/R@1", "retrieval/flow/R@5", "retrieval/two_stream/R@20"} <= scalars
    assert "retrieval/two_stream/nearest_neighbours" in images


@pytest.mark.slow
def test_padding_and_device_count_do_not_change_retrieval(two_class_data, tmp_path):
    # 8 devices, batch 8 vs batch 24 (the last batches padded differently) in this process ...
    eight = modes.run(eval_config(two_class_data, "retrieval", view="rgb"), tmp_path / "b8")
    padded = eval_config(two_class_data, "retrieval", view="rgb")
    padded.global_batch = 24
    wide = modes.run(padded, tmp_path / "b24")
    # ... and 1 device, CoCLR's protocol off and on, from the command line.
    env = {**os.environ, **learning_runs.ONE_DEVICE}
    cmd = _random_rgb_retrieval_command(two_class_data, tmp_path / "one")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^retrieval pattern_videos/split1: rgb R@1 [\d.]+ R@5", proc.stdout, re.M), proc.stdout
    one = _metrics(tmp_path / "one", "retrieval", "rgb")
    assert one["devices"] == 1 and eight["rgb"]["devices"] == 8
    assert eight["rgb"]["metrics"] == wide["rgb"]["metrics"] == one["metrics"]
    feats = {k: np.load(tmp_path / k / "features" / "rgb_train_center.npz") for k in ("b8", "b24", "one")}
    rows = feats["b8"]
    for k in ("b24", "one"):
        np.testing.assert_array_equal(feats[k]["video_index"], feats["b8"]["video_index"])
        np.testing.assert_allclose(feats[k]["features"], feats["b8"]["features"], rtol=1e-4, atol=1e-5)
    # every dense clip of every train video exactly once, whatever the padding
    train_videos = [v for v in range(len(LENGTHS)) if v % 3 != 2]
    expected = sorted(
        (v, int(start))
        for v in train_videos
        for start in sampling.dense_clip_starts(LENGTHS[v], 8, 8).numpy()
    )
    got = sorted(zip(rows["video_index"].tolist(), rows["clip_start"].tolist(), strict=True))
    assert got == expected


def _random_rgb_retrieval_command(data_dir, workdir) -> list[str]:
    """main.py's retrieval of a random-init RGB encoder with the tiny config's model and clips."""
    cmd = [sys.executable, "main.py", "--config=configs/retrieval.py:rgb", f"--workdir={workdir}"]
    cmd += [
        f"--config.data.dir={data_dir}",
        f"--config.data.name={PATTERN_NAME}",
        "--config.eval.rgb_source=random",
    ]
    cmd += ["--config.global_batch=8", "--config.data.eval_stride=8"]  # the tiny config's stride
    cmd += [f"--config.model.{k}={v}" for k, v in tiny.MODEL_SETTINGS.items()]
    return cmd + ["--config.data.num_frames=8", "--config.data.crop_size=32"]


def _sorted_rows(npz) -> dict:
    order = np.lexsort((npz["crop"], npz["clip_start"], npz["video_index"]))
    return {k: npz[k][order] for k in ("features", "video_index", "clip_start", "crop")}


@pytest.mark.slow
@pytest.mark.xdist_group("multi_host")
def test_two_hosts_give_the_one_host_retrieval(two_class_data, tmp_path):
    """main.py on two processes of 4 CPU devices each (jax.distributed on localhost, gloo
    collectives), started with --coordinator_address/--num_processes/--process_id. Each host reads
    its own shards (train: 2 + 1 of 3, test: 1 + 1 of 2 shards; host 1 runs out of batches first
    and feeds masked ones), and the result is the one host's: same metrics, same clip features."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"}
    logs = [tmp_path / f"host{i}.log" for i in range(2)]
    procs = []
    try:
        for i, log in enumerate(logs):
            cmd = _random_rgb_retrieval_command(two_class_data, tmp_path / "two")
            cmd += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
            with open(log, "w") as out:  # the child has its own copy of the descriptor
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            proc.kill()  # a host left waiting for a failed one
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log.read_text()[-3000:]
    one = modes.run(eval_config(two_class_data, "retrieval", view="rgb"), tmp_path / "one")
    two = _metrics(tmp_path / "two", "retrieval", "rgb")
    assert (two["processes"], two["devices"]) == (2, 8)
    assert (one["rgb"]["processes"], one["rgb"]["devices"]) == (1, 8)
    assert two["metrics"] == one["rgb"]["metrics"]
    for subset in ("train", "test"):
        rows = {
            k: _sorted_rows(np.load(tmp_path / k / "features" / f"rgb_{subset}_center.npz"))
            for k in ("one", "two")
        }
        for key in ("video_index", "clip_start", "crop"):
            np.testing.assert_array_equal(rows["two"][key], rows["one"][key], err_msg=f"{subset} {key}")
        np.testing.assert_allclose(rows["two"]["features"], rows["one"]["features"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_coclr_protocol_is_recorded_and_reuses_the_cached_features(two_class_data, tmp_path):
    dense = modes.run(eval_config(two_class_data, "retrieval", view="flow"), tmp_path)
    mtime = (tmp_path / "features" / "flow_train_center.npz").stat().st_mtime
    coclr = modes.run(
        eval_config(two_class_data, "retrieval", view="flow", eval__coclr_protocol=True), tmp_path
    )
    assert (tmp_path / "features" / "flow_train_center.npz").stat().st_mtime == mtime  # cache hit
    assert _metrics(tmp_path, "retrieval", "flow")["settings"]["protocol"] == "coclr"
    assert set(coclr["flow"]["metrics"]) == set(dense["flow"]["metrics"])


# ---------------------------------------------------------------------- classifiers


@pytest.mark.slow
def test_linear_probe_cached_two_stream_averages_the_views(two_class_data, tmp_path):
    cfg = eval_config(two_class_data, "linear_probe", linear__cached=True)
    results = modes.run(cfg, tmp_path)
    preds = {
        v: np.load(tmp_path / f"linear_probe_{v}_predictions.npz") for v in ("rgb", "flow", "two_stream")
    }
    np.testing.assert_allclose(
        preds["two_stream"]["probs"], (preds["rgb"]["probs"] + preds["flow"]["probs"]) / 2
    )
    for view, p in preds.items():
        assert len(p["videos"]) == 4  # every test video once
        top1 = 100 * np.mean(p["probs"].argmax(1) == p["labels"])
        assert results[view]["metrics"]["top1"] == pytest.approx(top1)
    record = _metrics(tmp_path, "linear_probe", "two_stream")
    assert record["settings"]["variant"].startswith("cached") and record["settings"]["epochs"] == 4
    scalars, _ = _events(tmp_path)
    assert {
        "linear_probe/rgb/train/loss",
        "linear_probe/flow/train/lr",
        "linear_probe/two_stream/top1",
    } <= scalars


@pytest.mark.slow
def test_linear_probe_on_clips_trains_the_head_only(two_class_data, tmp_path, caplog):
    cfg = eval_config(
        two_class_data, "linear_probe", view="rgb", data__eval_crops="ten", linear__cached=False
    )
    cfg.data.aug.on_device = "color"  # training clips coloured on the devices
    results = modes.run(cfg, tmp_path)
    assert "data.aug.on_device augments on CPU devices" in caplog.text
    assert set(results) == {"rgb"} and results["rgb"]["settings"]["test_crops"] == "ten"
    steps = results["rgb"]["settings"]["epochs"] * (8 // 8)
    assert (
        checkpoints.manager(
            tmp_path / "linear_probe_rgb", read_only=True, item_names=checkpoints.CLASSIFIER_ITEMS
        ).latest_step()
        == steps
    )
    assert np.load(tmp_path / "features" / "rgb_test_ten.npz")["features"].shape[0] % 10 == 0


@pytest.mark.slow
def test_finetune_resumes_to_the_same_result(two_class_data, tmp_path):
    cfg = eval_config(
        two_class_data, "finetune", view="flow", train__checkpoint_every_steps=1, train__keep_checkpoints=5
    )
    first = modes.run(cfg, tmp_path / "full")
    assert first["flow"]["settings"]["dropout"] == 0.9
    # A crash after batch 1: only that checkpoint survives; the re-run resumes and ends the same.
    shutil.copytree(tmp_path / "full", tmp_path / "crashed")
    for result in [*(tmp_path / "crashed").glob("*.json"), *(tmp_path / "crashed").glob("*.npz")]:
        result.unlink()
    shutil.rmtree(tmp_path / "crashed" / "finetune_flow" / "checkpoints" / "2")
    again = modes.run(cfg, tmp_path / "crashed")
    assert again["flow"]["metrics"] == first["flow"]["metrics"]
    a, b = (np.load(tmp_path / d / "finetune_flow_predictions.npz")["probs"] for d in ("full", "crashed"))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    scalars, _ = _events(tmp_path / "full")
    assert {"finetune/flow/train/loss", "finetune/flow/train/top1", "finetune/flow/top1"} <= scalars


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def rgb_stage(tmp_path_factory, two_class_data):
    """A stage workdir holding the tiny RGB encoder, as an import writes one (its variables
    zeros, by their shapes: the checks read a stage's config and progress before any weight)."""
    wd = tmp_path_factory.mktemp("rgb_stage")
    cfg = tiny_config.run_config(two_class_data, "init", view="rgb")
    shapes = variable_shapes(encoder_from_config(cfg.model), (8, 32, 32))
    encoder = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
    progress = {"stage": "init_rgb", "view": "rgb", "done": True}
    checkpoints.save_encoders(wd, encoder, encoder, checkpoints.config_json(cfg), progress)
    return wd


@pytest.mark.parametrize(
    "mode, change, message",
    [
        ("retrieval", dict(view="depth"), r"eval.view='depth'; use one of"),
        ("retrieval", dict(rgb=None), r"eval.rgb_source is unset"),
        ("retrieval", dict(rgb="/no/such/run"), r"/no/such/run does not exist"),
        (
            "retrieval",
            dict(view="flow", flow="RGB_STAGE"),
            r"holds a 'rgb' encoder, but it is given as the 'flow'",
        ),
        ("retrieval", dict(data__eval_crops="five"), r"eval crops 'five' unknown; use one of"),
        ("linear_probe", dict(linear__momentum=1.0), r"linear.momentum=1.0 must be in \[0, 1\)"),
        ("finetune", dict(finetune__dropout=1.0), r"finetune.dropout=1.0 must be in \[0, 1\)"),
        ("finetune", dict(finetune__epochs=0), r"finetune.epochs=0 must be > 0"),
    ],
    ids=["view", "no-source", "missing", "wrong-view", "crops", "momentum", "dropout", "epochs"],
)
def test_bad_evaluation_configs_fail_before_any_work(
    rgb_stage, two_class_data, tmp_path, mode, change, message
):
    change = {k: (str(rgb_stage) if v == "RGB_STAGE" else v) for k, v in change.items()}
    cfg = eval_config(two_class_data, mode, **change)
    with pytest.raises(ConfigError, match=message):
        modes.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- learned vs random


@pytest.fixture(scope="module")
def pattern_rgb_data(tmp_path_factory):
    """synthetic's kind 'pattern' (4 surface patterns, a camera panning over one background), 4
    classes x 9 groups x 2 clips of 16 frames at 48x64, RGB only, prepared at short side 48."""
    root = tmp_path_factory.mktemp("pattern")
    sizes = dict(num_classes=4, groups=9, clips_per_group=2, num_frames=16, height=48, width=64)
    synthetic.generate(root / "raw", kind="pattern", square_size=0.3, **sizes)
    argv = ["--dataset=ucf101", f"--raw_dir={root / 'raw'}", f"--out_dir={root / 'data'}", "--splits=1"]
    assert build.main([*argv, "--quiet", "--short_side=48", "--workers=2", "--no_flow"]) == 0
    return root / "data"


def _assert_learned_wins(scores, mean_margin=20, least_margin=12.5):
    """24 test videos, 4 classes (chance 25%): learned features must win by a wide margin, on
    average over retrieval R@1 and the linear probe, and clearly (3 videos) on each."""
    margins = [
        scores["learned"][protocol][metric] - scores["random"][protocol][metric]
        for protocol, metric in (("retrieval", "R@1"), ("linear_probe", "top1"))
    ]
    assert sum(margins) / len(margins) >= mean_margin and min(margins) >= least_margin, (margins, scores)


# The flow view's learned-vs-random check is tests/test_fidelity.py's, on the motion set: on the
# demo's speed classes random flow features already classify speed (linear probe 58-79 of 100),
# leaving the learned ones too little room to be told apart on 24 test videos.


@pytest.mark.slow
def test_learned_rgb_features_beat_random_init_on_pattern_classes(pattern_rgb_data, tmp_path):
    # On one emulated device (tests/learning_runs.py), the demo's RGB recipe for its 150 epochs.
    # Over training seeds 0-2 there (2026-12-07, the smallest network) learning lifted R@1 by
    # 70.8 / 66.7 / 62.5 and the linear probe by 37.5 / 29.2 / 37.5 points (docs/log.md). On the
    # demo's marked set (shared looks) RGB sat at the knee of its curve: learned R@1 25-46 against
    # random 17-38.
    scores = learning_runs.on_one_device("rgb_patterns", pattern_rgb_data, tmp_path)
    _assert_learned_wins(scores)
