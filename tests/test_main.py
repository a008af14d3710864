"""main.py and its modes end to end with the tiny config on pattern datasets (8 emulated devices).

One schedule run (init RGB, init flow, one co-training cycle, export, evaluation; the session
fixture of conftest.py) is shared by most tests;
the persistent compilation cache (conftest) lets the other runs reuse its compiled steps.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from cvtcl_jax import checkpoints, modes, optim
from cvtcl_jax.models import (
    backbone_from_config,
    backbone_variables,
    encoder_from_config,
    load_torchvision_s3d,
    normalize_frames,
)
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import create_train_state, new_state
from cvtcl_jax.training import stage as training_stage
from cvtcl_jax.training.loop import TrainingDiverged
from tests import tiny_config
from tests.conftest import LENGTHS
from tests.pattern_records import write_pattern_dataset

REPO = Path(__file__).resolve().parents[1]


def _config(data_dir, mode="init", **train):
    return tiny_config.run_config(data_dir, mode, **train)


def _scalar_tags(workdir) -> set[str]:
    tags = set()
    for path in glob.glob(str(Path(workdir) / "events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


def _restore_items(workdir, step=None, items=("encoder", "ema_encoder", "queue", "optimizer")):
    with checkpoints.manager(workdir, read_only=True) as mngr:
        step = mngr.latest_step() if step is None else step
        args = ocp.args.Composite(**{k: ocp.args.StandardRestore() for k in items})
        return step, jax.device_get(dict(mngr.restore(step, args=args)))


# ---------------------------------------------------------------------- the schedule


def test_schedule_runs_every_stage_then_exports(schedule_run):
    wd, summary = schedule_run
    names = ["init_rgb", "init_flow", "cotrain1_rgb", "cotrain1_flow"]
    assert list(summary["stages"]) == names
    for name in names:
        metrics = json.loads((wd / name / "metrics.json").read_text())
        assert metrics["stage"] == name and np.isfinite(metrics["final"]["loss"])
        assert checkpoints.stage_info(wd / name)["progress"]["done"]
    assert {"loss_infonce", "loss_local", "loss_lt"} <= set(summary["stages"]["init_flow"]["final"])
    rgb = summary["stages"]["cotrain1_rgb"]["final"]
    assert {"loss_rf", "mined_positives", "loss_ltcl"} <= set(rgb)
    flow = summary["stages"]["cotrain1_flow"]["final"]
    assert "loss_rf" in flow and "loss_ltcl" not in flow  # docs/method.md §3: the flow run has beta = 0
    for view in ("rgb", "flow"):
        manifest = json.loads((wd / "export" / view / "manifest.json").read_text())
        assert manifest["view"] == view and manifest["source"]["stage"] == f"cotrain1_{view}"
    assert json.loads((wd / "schedule.json").read_text())["exports"]["flow"].endswith("export/flow")


def test_tensorboard_has_every_term(schedule_run):
    wd, _ = schedule_run
    init = _scalar_tags(wd / "init_rgb")
    expected = {
        "train/loss",
        "train/loss_infonce",
        "train/loss_local",
        "train/loss_lt",
        "train/loss_ltcl",
        "train/lr",
        "train/inst_top1",
        "train/embed_spread",
        "train/queue_fill",
        "train/grad_norm",
        "train/clips_per_sec",
        "train/eta_minutes",
        "train/padded_videos",
        "steps_per_sec",
        "retrieval/R@1",
        "retrieval/R@5",
    }
    assert expected <= init, expected - init
    assert any(t.startswith("_hparams_") for t in init)  # hyperparameters, written once
    cotrain = _scalar_tags(wd / "cotrain1_rgb")
    assert {"train/loss_rf", "train/mined_positives", "train/self_positive_dropped"} <= cotrain


def test_checkpoints_hold_named_items_and_keep_the_last_few(schedule_run):
    wd, _ = schedule_run
    ckpt = wd / "init_rgb" / checkpoints.CHECKPOINT_DIR
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6]  # every 2 batches, 6 batches in all (keep 3)
    assert {p.name for p in (ckpt / "4").iterdir()} >= set(checkpoints.ITEMS)
    info = checkpoints.stage_info(wd / "init_rgb")
    assert info["config"]["model"]["width_multiplier"] == 0.25 and info["progress"]["view"] == "rgb"


def test_rerun_skips_finished_stages(schedule_run, data, monkeypatch):
    wd, _ = schedule_run

    def built(*args, **kwargs):
        raise AssertionError("a finished stage built its mesh")

    monkeypatch.setattr(training_stage, "make_mesh", built)  # returned before any set-up
    before = {p: p.stat().st_mtime for p in wd.glob("*/checkpoints/*")}
    exported = {p: p.stat().st_mtime for p in wd.glob("export/*/*")}
    evaluated = {p: p.stat().st_mtime for p in wd.glob("eval/*/*.json")}
    start = time.perf_counter()
    modes.run(_config(data, "schedule"), wd)
    assert time.perf_counter() - start < 60  # nothing trains, is exported or evaluated again
    assert {p: p.stat().st_mtime for p in wd.glob("*/checkpoints/*")} == before
    assert {p: p.stat().st_mtime for p in wd.glob("export/*/*")} == exported
    assert (
        len(evaluated) == 3 * 2 * 3 and {p: p.stat().st_mtime for p in wd.glob("eval/*/*.json")} == evaluated
    )


def test_export_gives_the_models_features_and_torchvision_weights(schedule_run):
    wd, _ = schedule_run
    out = wd / "export" / "rgb"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["jax_version"] == jax.__version__ and manifest["input"]["dtype"] == "uint8"
    assert manifest["input"]["shape"] == ["batch", 8, 32, 32, 3]
    _, items = _restore_items(wd / "cotrain1_rgb", items=("encoder",))
    variables = backbone_variables(items["encoder"])
    cfg = tiny_config.get_config()
    backbone = backbone_from_config(cfg.model)
    exported = jax.export.deserialize((out / "feature_extractor.jax_export").read_bytes())
    features = jax.jit(lambda clips: backbone.apply(variables, normalize_frames(clips), train=False))
    for batch in (1, 3):  # the batch size is symbolic
        clips = np.random.default_rng(batch).integers(0, 256, (batch, 8, 32, 32, 3), dtype=np.uint8)
        want = features(jnp.asarray(clips))
        # Separately compiled float32 programs fuse differently: agreement to float32 rounding.
        np.testing.assert_allclose(np.asarray(exported.call(clips)), np.asarray(want), rtol=1e-4, atol=1e-4)
    back = load_torchvision_s3d(load_file(str(out / "s3d_torchvision.safetensors")))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, variables)
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(out / "params")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, variables)


def test_cotrain_and_export_modes_take_stage_workdirs(schedule_run, data, tmp_path, caplog):
    wd, _ = schedule_run
    cfg = _config(
        data, "cotrain", view="rgb", init_from=str(wd / "init_rgb"), other_from=str(wd / "init_flow")
    )
    # The training default (the tiny config inherits the demo's CPU setting): clips resized and
    # RGB clips coloured on the devices; the warning says the device path ran, on CPUs.
    cfg.data.aug.on_device = "resize"
    result = modes.run(cfg, tmp_path / "cotrain")
    assert result["other_view"] == "flow" and "loss_rf" in result["final"]
    assert cfg.schedule.cotrain_lr != cfg.optim.lr
    assert result["final"]["lr"] == pytest.approx(cfg.schedule.cotrain_lr)
    assert "data.aug.on_device augments on CPU devices" in caplog.text
    export = _config(data, "export")
    export.export.update(source=str(tmp_path / "cotrain"), encoder="ema_encoder")
    manifest = modes.run(export, tmp_path / "exported")
    assert manifest["source"]["encoder"] == "ema_encoder" and manifest["source"]["stage"] == "cotrain_rgb"
    assert (tmp_path / "exported" / "feature_extractor.jax_export").is_file()


@pytest.mark.parametrize("key_from, other_encoder", [("encoder", "encoder"), ("ema_encoder", "ema_encoder")])
def test_cotraining_starts_as_coclr_or_from_the_key_encoders(schedule_run, key_from, other_encoder, caplog):
    """By default (CoCLR) the key encoder starts as a copy of the query encoder and the other
    view's query encoder ranks; the option restores the previous stage's key encoders instead. The
    network's initialisation is never compiled, only the fresh optimiser and queue around them."""
    wd, _ = schedule_run
    stage = modes.training.cotrain_stage(
        _config(wd, "cotrain", key_from=key_from, other_encoder=other_encoder),
        "cotrain_rgb",
        "rgb",
        str(wd / "init_rgb"),
        str(wd / "init_flow"),
    )
    cfg = tiny_config.get_config()
    model = encoder_from_config(cfg.model)
    optimizer = optim.adam_l2(1e-3, 0.0)
    new = new_state(make_mesh(), model, optimizer, (8, 32, 32, 3), cfg.queue_size, cfg.global_batch, seed=0)
    with jax.log_compiles(True):
        state = training_stage.start_from(new, stage)
    compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert "jit(around)" in compiled and "jit(init)" not in compiled, compiled
    frozen = training_stage.frozen_encoder(state, stage)
    _, rgb = _restore_items(wd / "init_rgb", items=("encoder", "ema_encoder"))
    _, flow = _restore_items(wd / "init_flow", items=("encoder", "ema_encoder"))
    for items in (rgb, flow):  # else the test could not tell the two items apart
        pairs = zip(*(jax.tree.leaves(items[k]["params"]) for k in ("encoder", "ema_encoder")), strict=True)
        assert not all(np.allclose(a, b) for a, b in pairs)
    same = np.testing.assert_array_equal
    jax.tree.map(same, jax.device_get(state.params), rgb["encoder"]["params"])
    jax.tree.map(same, jax.device_get(state.ema_params), rgb[key_from]["params"])
    jax.tree.map(same, jax.device_get(state.ema_batch_stats), rgb[key_from]["batch_stats"])
    jax.tree.map(same, jax.device_get(frozen.params), flow[other_encoder]["params"])
    jax.tree.map(same, jax.device_get(frozen.batch_stats), flow[other_encoder]["batch_stats"])
    assert int(state.step) == 0 and int(state.queue.fill) == 0


# ---------------------------------------------------------------------- crash safety


@pytest.mark.slow
@pytest.mark.xdist_group("schedule")  # the schedule's init_rgb step: after the schedule, from the cache
def test_nan_loss_stops_with_the_last_good_checkpoint_kept(data, tmp_path):
    cfg = _config(data, retrieval_every_epochs=0)
    cfg.schedule.init_epochs = 6
    model = encoder_from_config(cfg.model)
    optimizer = optim.adam_l2(optim.step_decay_schedule(cfg.optim.lr, 1), cfg.optim.weight_decay)
    shapes = jax.eval_shape(
        lambda: create_train_state(model, optimizer, jax.random.key(0), (8, 32, 32, 3), cfg.queue_size, 8)
    )
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # no compile, no eager init
    state = state.replace(params=jax.tree.map(lambda p: jnp.full_like(p, jnp.inf), state.params))
    with checkpoints.manager(tmp_path) as mngr:  # a run whose state broke after batch 2
        progress = {"stage": "init_rgb", "view": "rgb", "done": False, "padded_videos": 0, "retrieval": []}
        checkpoints.save(mngr, 2, state, checkpoints.config_json(cfg), progress)
        mngr.wait_until_finished()
    with pytest.raises(
        TrainingDiverged, match=r"became NaN/Inf at batch 3.*last good checkpoint \(batch 2\)"
    ):
        modes.run(cfg, tmp_path)
    with checkpoints.manager(tmp_path, read_only=True) as mngr:
        assert mngr.all_steps() == [2]


# ---------------------------------------------------------------------- bad input


def _bad(data, tmp_path, change):
    cfg = _config(data)
    change(cfg, tmp_path)
    with pytest.raises(ConfigError) as err:
        modes.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was started
    return str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c, t: c.update(mode="pretrian"), "unknown mode 'pretrian'; the modes are"),
        (lambda c, t: c.update(global_batch=12), "global_batch=12 is not divisible by the 8 devices"),
        (
            lambda c, t: c.update(queue_size=20),
            "queue_size=20 must be a positive multiple of the global batch",
        ),
        (lambda c, t: c.data.update(dir=str(t / "nowhere")), "no dataset pattern_videos/split1 in .*nowhere"),
        (lambda c, t: c.data.update(dir=""), "data.dir is unset: set --config.data.dir"),
        (lambda c, t: c.data.update(name=None), "data.name is unset.*e.g. cvtcl_ucf101/split1"),
        (lambda c, t: c.train.update(view="depth"), "train.view='depth' is not a view"),
        (
            lambda c, t: (
                c.update(mode="cotrain") or c.train.update(init_from=str(t / "gone"), other_from=str(t))
            ),
            "train.init_from=.*gone does not exist",
        ),
        (lambda c, t: c.update(mode="export") or c.export.update(source=str(t)), "no checkpoints at"),
        (lambda c, t: c.data.update(num_frames=4), "too small for S3D"),
        (lambda c, t: c.data.aug.update(flip_prob=2.0), "flip_prob=2.0 is not in"),
        (lambda c, t: c.model.update(num_mixed_5=3), "model.num_mixed_5 must be in 1..2, got 3"),
        (lambda c, t: c.model.update(pool_grad="scatter"), "model.pool_grad='scatter' must be one of"),
        (lambda c, t: c.model.update(conv_lowering="2d"), "model.conv_lowering='2d' must be one of"),
        (lambda c, t: c.optim.update(lr=0.0), "optim.lr=0.0 must be > 0"),
        (
            lambda c, t: c.schedule.update(cotrain_lr=0.0),
            r"schedule.cotrain_lr=0.0 must be > 0, or None for optim.lr",
        ),
        (lambda c, t: c.train.update(key_from="query"), "train.key_from='query'; use 'encoder'"),
    ],
    ids=[
        "mode",
        "batch-devices",
        "queue",
        "data-dir",
        "no-data-dir",
        "no-data-name",
        "view",
        "checkpoint",
        "export",
        "clip",
        "aug",
        "mixed-blocks",
        "pool-grad",
        "conv-lowering",
        "lr",
        "cotrain-lr",
        "key-from",
    ],
)
def test_bad_config_fails_before_any_work(data, tmp_path, change, message):
    assert re.search(message, _bad(data, tmp_path, change))


def test_view_missing_from_the_data(tmp_path):
    rgb_only = tmp_path / "rgb_only"
    write_pattern_dataset(rgb_only, LENGTHS, views=("rgb",))
    cfg = _config(rgb_only)
    cfg.train.view = "flow"
    with pytest.raises(ConfigError, match="holds the views \\['rgb'\\], not 'flow'.*without --no_flow"):
        modes.run(cfg, tmp_path / "run")


def test_resize_on_device_needs_frame_sizes_in_the_metadata(tmp_path):
    other = tmp_path / "other"
    write_pattern_dataset(other, LENGTHS, metadata=False)  # a TFDS dataset not built by data_prep
    cfg = _config(other)
    cfg.data.aug.on_device = "resize"
    with pytest.raises(ConfigError, match="does not record its largest frame size.*on_device=color"):
        modes.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _run_init_rgb(workdir, *flags) -> subprocess.CompletedProcess:
    """main.py with configs/init_rgb.py and `flags`, on the CPU."""
    cmd = [sys.executable, "main.py", "--config=configs/init_rgb.py", f"--workdir={workdir}", *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_processes=2"], "missing --coordinator_address, --process_id"),
        (
            ["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
            "--process_id=2 must be below --num_processes=2",
        ),
    ],
)
def test_multi_host_flags_are_checked_before_any_work(tmp_path, flags, message):
    proc = _run_init_rgb(tmp_path / "wd", *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "wd").exists()


def test_command_line_reports_config_errors_and_exits_2(tmp_path):
    proc = _run_init_rgb(tmp_path, "--config.global_batch=7")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: global_batch=7 is not a multiple of model.bn_group_size=32" in proc.stderr
