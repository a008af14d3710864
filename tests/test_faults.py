"""Runs that cannot hurt each other: the workdir lock, resume checking its config and length,
preemption, damaged checkpoints and shards, and the bad inputs that used to get through
(docs/training.md, "What survives what")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cvtcl_jax import checkpoints, modes
from cvtcl_jax.data.records import DamagedRecordError
from cvtcl_jax.modes import workdir_lock
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.training import resume
from data_prep import build, layouts
from tests import tiny_config
from tests.conftest import LENGTHS
from tests.pattern_records import PATTERN_NAME, write_pattern_dataset
from tests.test_data_prep import examples_of, tiny_video
from tests.test_main import _restore_items

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- one run per workdir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(workdir: Path, age_s: float = 0.0, **holder) -> Path:
    path = workdir / workdir_lock.LOCK_FILE
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"started": "2026-12-06T00:00:00+00:00", "command": "main.py", **holder}))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_lock_names_a_live_holder_and_takes_over_a_dead_ones(tmp_path, capsys):
    here = socket.gethostname()
    _write_lock(tmp_path / "live", host=here, pid=os.getppid())
    with pytest.raises(
        workdir_lock.WorkdirBusy, match=f"in use by another run: process {os.getppid()} on {here}"
    ):
        workdir_lock.acquire(tmp_path / "live")
    _write_lock(tmp_path / "elsewhere", host="node-7", pid=1, age_s=10)
    with pytest.raises(workdir_lock.WorkdirBusy, match="process 1 on node-7"):
        workdir_lock.acquire(tmp_path / "elsewhere")

    for name, holder, age in (
        ("dead", dict(host=here, pid=_dead_pid()), 0.0),  # its process is gone
        ("reused", dict(host=here, pid=os.getpid(), process_start="1"), 0.0),  # its pid runs another process
        ("silent", dict(host="node-7", pid=1), workdir_lock.STALE_S + 60),  # no heartbeat for too long
    ):
        _write_lock(tmp_path / name, age_s=age, **holder)
        me = workdir_lock.acquire(tmp_path / name)
        assert "taking over the lock" in capsys.readouterr().err
        assert json.loads((tmp_path / name / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
        workdir_lock.release(tmp_path / name, me)
        assert not (tmp_path / name / workdir_lock.LOCK_FILE).exists(), (name, holder, age)


# ---------------------------------------------------------------------- resume


def test_what_a_resume_may_change():
    saved = {
        "optim": {"lr": 1e-3},
        "train": {"log_every_steps": 50},
        "eval": {"view": "rgb"},
        "model": {"embed_dim": 128},
    }
    new = {
        "optim": {"lr": 2e-3},
        "train": {"log_every_steps": 5},
        "eval": {"view": "flow"},
        "model": {"embed_dim": 64},
    }
    new["model"]["bn_epsilon"] = 1e-5  # a key the saved config (an older version) does not have
    assert resume.differences(saved, new) == {"model.embed_dim": (128, 64), "optim.lr": (1e-3, 2e-3)}
    with pytest.raises(resume.ResumeError, match="model.embed_dim fix the checkpoint's shapes"):
        resume.check("s", "w", saved, new, "optim,model")
    del new["model"]["embed_dim"]
    assert resume.check("s", "w", saved, new, "optim") == {"optim.lr": [1e-3, 2e-3]}
    with pytest.raises(resume.ResumeError, match=r"optim.lr +0.001 -> 0.002\n.*allow_changes=optim.lr"):
        resume.check("s", "w", saved, new, "optim.lrr,seed")
    # The co-training stages' own settings are free for an initialization, and the other way round.
    saved = {"schedule": {"cotrain_lr": None, "cotrain_decay_epochs": [80]}, "optim": {"decay_epochs": []}}
    new = {"schedule": {"cotrain_lr": 5e-4, "cotrain_decay_epochs": []}, "optim": {"decay_epochs": [250]}}
    assert resume.differences(saved, new, cotrain=False) == {"optim.decay_epochs": ([], [250])}
    assert resume.differences(saved, new, cotrain=True) == {
        "schedule.cotrain_decay_epochs": ([80], []),
        "schedule.cotrain_lr": (None, 5e-4),
    }


def _half_done_copy(schedule_run, tmp_path) -> Path:
    """The schedule's finished init_rgb stage, its last checkpoint removed: a run stopped after
    batch 4 of 6."""
    reference, _ = schedule_run
    wd = tmp_path / "init_rgb"
    shutil.copytree(reference / "init_rgb", wd)
    shutil.rmtree(wd / checkpoints.CHECKPOINT_DIR / "6")
    (wd / "metrics.json").unlink()
    assert checkpoints.stage_info(wd)["step"] == 4
    return wd


def _init(data, **changes):
    cfg = tiny_config.run_config(data, "init")
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


@pytest.mark.slow
def test_resume_refuses_a_changed_config_unless_allowed_and_records_it(schedule_run, data, tmp_path):
    wd = _half_done_copy(schedule_run, tmp_path)
    with pytest.raises(ConfigError) as e:
        modes.run(_init(data, optim__lr=0.05, contrast__tau=0.5), wd)
    assert "init_rgb in" in str(e.value) and "contrast.tau" in str(e.value) and "optim.lr" in str(e.value)
    assert "--config.resume.allow_changes=contrast.tau,optim.lr" in str(e.value)
    with pytest.raises(ConfigError, match="model.embed_dim fix the checkpoint's shapes"):
        modes.run(_init(data, model__embed_dim=16, resume__allow_changes="model"), wd)
    assert checkpoints.stage_info(wd)["step"] == 4  # nothing ran

    # Logging, cadences and paths may differ; an allowed change is recorded. (A change outside the
    # train step, so that the resumed run compiles the schedule's step again, not another.)
    buffer = tiny_config.get_config().data.shuffle_buffer
    changed = _init(data, data__shuffle_buffer=2 * buffer, train__log_every_steps=3)
    changed.resume.allow_changes = "data.shuffle_buffer"
    modes.run(changed, wd)
    info = checkpoints.stage_info(wd)
    assert info["step"] == 6 and info["config"]["data"]["shuffle_buffer"] == 2 * buffer
    (entry,) = info["progress"]["history"]
    assert entry["batch"] == 4 and entry["changes"] == {"data.shuffle_buffer": [buffer, 2 * buffer]}


@pytest.mark.slow
def test_a_finished_stage_asked_for_more_epochs_continues_and_never_shortens(schedule_run, data, tmp_path):
    reference, _ = schedule_run
    wd = tmp_path / "init_rgb"
    shutil.copytree(reference / "init_rgb", wd)
    epochs = tiny_config.get_config().schedule.init_epochs
    with pytest.raises(ConfigError, match=f"finished {epochs} epochs; the config asks for {epochs - 1}"):
        modes.run(_init(data, schedule__init_epochs=epochs - 1), wd)
    summary = modes.run(_init(data, schedule__init_epochs=epochs + 2), wd)
    info = checkpoints.stage_info(wd)
    assert summary["batches"] == info["step"] == epochs + 2 and info["progress"]["done"]
    assert info["progress"]["history"][-1]["epochs"] == [epochs, epochs + 2]
    # The schedule refuses to extend an initialization its co-training stages started from.
    cfg = tiny_config.run_config(data, "schedule")
    cfg.schedule.init_epochs = epochs + 1
    with pytest.raises(ConfigError, match="cotrain1_rgb, cotrain1_flow already trained from it"):
        modes.run(cfg, reference)


# ---------------------------------------------------------------------- preemption


def _launch(workdir, data_dir, *flags):
    """main.py on the tiny config's init_rgb stage, in a process of its own (stderr piped)."""
    # JAX_NUM_CPU_DEVICES (not XLA_FLAGS, which is part of the compilation cache key) so the
    # subprocess reuses the steps this session compiled.
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        _command(workdir, data_dir, *flags),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _command(workdir, data_dir, *flags) -> list[str]:
    """main.py's command line for the tiny config on `data_dir`, with extra --config flags."""
    cmd = [sys.executable, "main.py", "--config=tests/tiny_config.py", f"--workdir={workdir}"]
    return [*cmd, f"--config.data.dir={data_dir}", *flags]


def _wait_until(proc, done, what: str, timeout_s: float = 300) -> None:
    """Polls done() while proc runs; fails with its stderr if it ends first."""
    deadline = time.time() + timeout_s
    while not done():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_refused_killed_and_preempted_resumes_to_the_uninterrupted_parameters(
    schedule_run, data, tmp_path
):
    """One init_rgb run through what stops runs, each launch the same command: a second launch on
    its workdir stops and leaves it alone; SIGKILL loses only the batches since the last
    checkpoint; SIGTERM saves at the next batch and exits 75; the last launch finishes with the
    parameters of the schedule's uninterrupted init_rgb (same stage name, hence seed, same numbers;
    its retrieval checks only read the encoder)."""
    reference, _ = schedule_run
    epochs = tiny_config.get_config().schedule.init_epochs
    wd = tmp_path / "run"
    ckpts = wd / checkpoints.CHECKPOINT_DIR
    # Checkpoints at every batch (a cadence a resume may change) tell when training has begun;
    # orbax renames a finished save into place.
    every_batch = "--config.train.checkpoint_every_steps=1"
    first = _launch(wd, data, every_batch)
    _wait_until(first, (wd / workdir_lock.LOCK_FILE).exists, "lock file")
    second = subprocess.run(
        _command(wd, data, "--config.seed=7", "--config.optim.lr=0.01"),
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by another run: process {first.pid} on {socket.gethostname()}" in second.stderr

    _wait_until(first, (ckpts / "1").is_dir, "checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = checkpoints.stage_info(wd)["step"]
    assert killed_at < epochs and not (wd / "metrics.json").exists()  # it really was interrupted

    preempted = _launch(wd, data, every_batch)
    _wait_until(preempted, (ckpts / str(killed_at + 1)).is_dir, "checkpoint after the resume")
    preempted.send_signal(signal.SIGTERM)
    _, err = preempted.communicate(timeout=300)
    assert preempted.returncode == 75, err[-3000:]
    assert f"resumed init_rgb from its checkpoint at batch {killed_at}" in err
    stopped_at = checkpoints.stage_info(wd)["step"]
    assert killed_at + 1 < stopped_at < epochs and f"stopped it after batch {stopped_at} of {epochs}" in err

    last = _launch(wd, data)
    _, err = last.communicate(timeout=600)
    assert last.returncode == 0, err[-3000:]
    assert f"resumed init_rgb from its checkpoint at batch {stopped_at}" in err
    step_a, a = _restore_items(reference / "init_rgb")
    step_b, b = _restore_items(wd)
    assert step_a == step_b == epochs
    close = lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)  # noqa: E731
    jax.tree.map(close, a, b)
    saved = checkpoints.stage_info(wd)["config"]  # the refused launch's seed and rate never arrived
    assert saved["seed"] == 0 and saved["optim"]["lr"] == tiny_config.get_config().optim.lr
    assert not (wd / workdir_lock.LOCK_FILE).exists()


# ---------------------------------------------------------------------- damaged files


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_used(schedule_run, data, tmp_path):
    reference, _ = schedule_run
    wd = _half_done_copy(schedule_run, tmp_path)
    damaged = max(
        (wd / checkpoints.CHECKPOINT_DIR / "4" / "encoder").rglob("*"), key=lambda p: p.stat().st_size
    )
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    modes.run(_init(data), wd)
    aside = wd / checkpoints.CHECKPOINT_DIR / f"4{checkpoints.UNREADABLE}"
    assert (aside / damaged.relative_to(wd / checkpoints.CHECKPOINT_DIR / "4")).is_file()  # kept
    with checkpoints.manager(wd, read_only=True) as mngr:  # 4 trained again from 2, then 5 and 6
        assert mngr.latest_step() == 6
    _, a = _restore_items(reference / "init_rgb")
    _, b = _restore_items(wd)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7), a, b
    )


def _copy_dataset(tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "data"
    write_pattern_dataset(root, LENGTHS, videos_per_shard=3)
    return root, sorted((root / PATTERN_NAME).rglob("*-train.tfrecord-*"))


def test_a_truncated_shard_is_named_before_any_work(tmp_path):
    root, shards = _copy_dataset(tmp_path)
    shards[1].write_bytes(shards[1].read_bytes()[:-100])
    with pytest.raises(
        ConfigError,
        match=rf"{shards[1].name} holds 2 complete records where .* says 3, and it ends inside record 3",
    ):
        modes.run(tiny_config.run_config(root, "init"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_record_that_fails_to_read_mid_run_names_its_file_and_video(tmp_path):
    root, _ = _copy_dataset(tmp_path)
    shard = sorted((root / PATTERN_NAME).rglob("*-test.tfrecord-*"))[0]
    raw = bytearray(shard.read_bytes())
    (first,) = np.frombuffer(bytes(raw[:8]), "<u8")
    second = 12 + int(first) + 4  # the second record's header, its data after it
    raw[second + 12 + 40] ^= 0xFF  # a flipped byte inside the second record: its CRC fails
    shard.write_bytes(bytes(raw))
    cfg = tiny_config.run_config(root, "retrieval")
    cfg.eval.update(view="rgb", rgb_source="random")
    with pytest.raises(
        DamagedRecordError, match=rf"{shard.name}: record 2 \(after video video002\) cannot be read"
    ):
        modes.run(cfg, tmp_path / "eval")


# ---------------------------------------------------------------------- bad inputs


def test_a_crop_larger_than_the_stored_frames_is_refused(tmp_path):
    root = tmp_path / "data"
    write_pattern_dataset(root, LENGTHS, videos_per_shard=3, short_side=24)
    with pytest.raises(
        ConfigError, match="data.crop_size=32 is larger than the short side of the frames stored"
    ):
        modes.run(tiny_config.run_config(root, "init"), tmp_path / "run")
    cfg = tiny_config.run_config(root, "retrieval")
    cfg.eval.update(view="rgb", rgb_source="random", clip_from_source=False)
    with pytest.raises(ConfigError, match="rgb evaluation clip's crop=32 is larger"):
        modes.run(cfg, tmp_path / "eval")


def test_an_unknown_config_key_exits_2_with_the_nearest_key(tmp_path):
    cmd = [sys.executable, "main.py", "--config=configs/init_rgb.py", f"--workdir={tmp_path / 'wd'}"]
    proc = subprocess.run(
        [*cmd, "--config.optim.lrr=1"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "the config has no key optim.lrr; did you mean optim.lr" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "wd").exists()


def test_split_lists_keep_file_names_with_spaces(tmp_path):
    ucf = tmp_path / "ucf"
    (ucf / "ucfTrainTestlist").mkdir(parents=True)
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("1 Wave Hands\n")
    (ucf / "ucfTrainTestlist" / "trainlist01.txt").write_text("Wave Hands/v_Wave Hands_g01_c01.avi 1\n")
    (ucf / "ucfTrainTestlist" / "testlist01.txt").write_text("Wave Hands/v_Wave Hands_g02_c01.avi\n")
    layout = layouts.ucf101(str(ucf), 1, videos_required=False)
    assert layout.classes == ["Wave Hands"] and layout.subsets == {
        "train": ["v_Wave Hands_g01_c01"],
        "test": ["v_Wave Hands_g02_c01"],
    }
    hmdb = tmp_path / "hmdb"
    (hmdb / "splits").mkdir(parents=True)
    (hmdb / "splits" / "wave_test_split1.txt").write_text("my wave.avi 1 \nyour wave.avi\t2\n")
    assert layouts.hmdb51(str(hmdb), 1, videos_required=False).subsets == {
        "train": ["my wave"],
        "test": ["your wave"],
    }
    own = tmp_path / "own"
    tiny_video(own / "a" / "my video.avi", size=(32, 40))
    tiny_video(own / "a" / "other one.avi", size=(32, 40), seed=1)
    (own / "splits").mkdir()
    (own / "splits" / "trainlist01.txt").write_text("a/my video.avi\n")
    (own / "splits" / "testlist01.txt").write_text("a/other one.avi 0\n")
    assert (
        build.main(
            [
                f"--raw_dir={own}",
                f"--out_dir={tmp_path / 'out'}",
                "--dataset=folder",
                "--no_flow",
                "--short_side=32",
                "--workers=1",
                "--quiet",
            ]
        )
        == 0
    )
    name = "cvtcl_folder/split1_32px_q90_rgb"
    assert [r["video_id"] for r in examples_of(tmp_path / "out", name, "train")] == ["my video"]


def test_overwrite_builds_beside_and_other_parameters_are_refused(tmp_path, capsys):
    raw = tmp_path / "raw"
    for name in ("a0", "b0", "a1", "b1"):
        tiny_video(raw / name[0] / f"{name}.avi", size=(32, 40), seed=int(name[1]))
    (raw / "splits").mkdir()
    (raw / "splits" / "trainlist01.txt").write_text("a/a0.avi\nb/b0.avi\n")
    (raw / "splits" / "testlist01.txt").write_text("a/a1.avi\nb/b1.avi\n")
    out, name = tmp_path / "out", "cvtcl_folder/split1_32px_q90_rgb"
    flags = [
        f"--raw_dir={raw}",
        f"--out_dir={out}",
        "--dataset=folder",
        "--no_flow",
        "--short_side=32",
        "--workers=1",
        "--quiet",
    ]
    assert build.main(flags) == 0
    before = examples_of(out, name, "train")
    capsys.readouterr()
    assert build.main([*flags, "--num_shards=2"]) == 2
    assert "exists with 1 shard(s) per split, not --num_shards=2" in capsys.readouterr().err
    # A rebuild that fails halfway (every training video unreadable now) leaves the old dataset.
    for video in ("a0", "b0"):
        (raw / video[0] / f"{video}.avi").write_bytes(b"not a video")
    with pytest.raises(Exception, match="0 for split train"):
        build.main([*flags, "--overwrite", "--num_shards=2"])
    assert examples_of(out, name, "train") == before
    for video in ("a0", "b0"):
        tiny_video(raw / video[0] / f"{video}.avi", size=(32, 40), seed=0)
    assert build.main([*flags, "--overwrite", "--num_shards=2"]) == 0
    info = json.loads(next((out / name).glob("*/dataset_info.json")).read_text())
    assert [int(s["shardLengths"].__len__()) for s in info["splits"]] == [2, 2]
    assert not (out / ".overwrite_staging").exists()
