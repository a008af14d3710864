"""Checkpoints and export of a tiny train state on 8 emulated devices, without training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from cvtcl_jax import checkpoints
from cvtcl_jax.export import export_backbone
from cvtcl_jax.models import backbone_from_config, backbone_variables, load_torchvision_s3d, normalize_frames
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import state_sharding
from tests import tiny, tiny_config


@pytest.fixture(scope="module")
def fresh():
    """A tiny train state placed with the 8-device shardings: random floats, zero counters, put on
    the devices directly (nothing to compile)."""
    return _moved(tiny.state_shapes(), 0)


def _moved(state, seed):
    """`state` (arrays or ShapeDtypeStructs) with new random floats, and counters advanced, on the
    8-device train-state shardings, so a restore cannot pass by luck."""
    rng = np.random.default_rng(seed)
    shardings = state_sharding(make_mesh(), state)

    def move(x, sharding):
        value = np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            value = rng.standard_normal(x.shape).astype(x.dtype)
        elif np.issubdtype(x.dtype, np.integer) and x.ndim == 0:
            value = value + 7
        return jax.device_put(value, sharding)

    return jax.tree.map(move, state, shardings)


def _equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_state_round_trips_with_its_shardings_and_keeps_the_last_few(fresh, tmp_path):
    config = {"model": {"width_multiplier": 0.25}, "seed": 3}
    saved = {}
    with checkpoints.manager(tmp_path, keep=2) as mngr:
        for n in (2, 4, 6):
            saved[n] = _moved(fresh, n)
            checkpoints.save(mngr, n, saved[n], config, {"stage": "init_rgb", "view": "rgb", "done": n == 6})
        mngr.wait_until_finished()
        assert sorted(mngr.all_steps()) == [4, 6]
        restored, progress = checkpoints.restore_state(mngr, fresh, step=4)
    _equal(restored, saved[4])
    assert progress == {"stage": "init_rgb", "view": "rgb", "done": False, "batches": 4}
    for r, f in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh), strict=True):
        assert r.sharding.is_equivalent_to(f.sharding, r.ndim)

    info = checkpoints.stage_info(tmp_path)
    assert info["step"] == 6 and info["config"] == config and info["progress"]["done"] is True
    template = {"params": fresh.params, "batch_stats": fresh.batch_stats}
    _equal(checkpoints.restore_encoder(tmp_path, template, "encoder")["params"], saved[6].params)
    ema = checkpoints.restore_encoder(tmp_path, template, "ema_encoder")
    _equal(ema, {"params": saved[6].ema_params, "batch_stats": saved[6].ema_batch_stats})


def test_missing_or_misfitting_checkpoints_name_the_problem(fresh, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints at"):
        checkpoints.stage_info(tmp_path / "nothing")
    with checkpoints.manager(tmp_path) as mngr:
        checkpoints.save(mngr, 1, fresh, {}, {})
    wider = jax.eval_shape(lambda: {"params": {"w": jnp.zeros((3, 3))}, "batch_stats": {}})
    with pytest.raises(checkpoints.CheckpointError, match="does not fit this model"):
        checkpoints.restore_encoder(tmp_path, wider, "encoder")
    with pytest.raises(ValueError, match="'encoder' or 'ema_encoder'"):
        checkpoints.restore_encoder(tmp_path, wider, "key")


def test_export_gives_the_backbones_features_and_torchvision_weights(fresh, tmp_path):
    state = _moved(fresh, 1)
    variables = jax.device_get(backbone_variables({"params": state.params, "batch_stats": state.batch_stats}))
    model_cfg = dict(tiny_config.get_config().model)
    manifest = export_backbone(variables, model_cfg, (8, 32, 32), "flow", tmp_path, {"workdir": "w"})
    assert manifest["view"] == "flow" and manifest["input"]["shape"] == ["batch", 8, 32, 32, 3]
    assert json.loads((tmp_path / "manifest.json").read_text())["source"] == {"workdir": "w"}
    exported = jax.export.deserialize((tmp_path / "feature_extractor.jax_export").read_bytes())
    clips = np.random.default_rng(0).integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    apply = jax.jit(lambda v, x: backbone_from_config(model_cfg).apply(v, normalize_frames(x), train=False))
    want = apply(variables, jnp.asarray(clips))
    np.testing.assert_allclose(np.asarray(exported.call(clips)), np.asarray(want), rtol=1e-4, atol=1e-4)
    _equal(load_torchvision_s3d(load_file(str(tmp_path / "s3d_torchvision.safetensors"))), variables)


def test_a_flow_network_that_centres_motion_ignores_the_camera_and_its_export_says_so(tmp_path):
    """With model.centre_flow a flow network sees each frame's flow relative to its median: its
    features are those of the plain network on flow centred by numpy's lower median, a global
    motion added to every frame (the camera) leaves them unchanged, and the export's manifest and
    torchvision metadata say so (an import reads it back: test_import_weights). An RGB network of
    the same config centres nothing."""
    model_cfg = {**tiny_config.get_config().model, "centre_flow": True}
    plain = backbone_from_config(model_cfg, "rgb")
    init = jax.jit(lambda key: plain.init(key, jnp.zeros((1, 8, 32, 32, 3), jnp.uint8), train=False))
    variables = jax.device_get(init(jax.random.key(0)))
    rng = np.random.default_rng(2)
    clips = rng.integers(60, 196, (2, 8, 32, 32, 3)).astype(np.uint8)
    clips[..., 2] = 128
    camera = rng.integers(-40, 41, (2, 8, 1, 1, 3)) * np.array([1, 1, 0])  # per frame, dx and dy
    shaken = (clips + camera).astype(np.uint8)
    median = np.percentile(clips.reshape(2, 8, -1, 3), 50, axis=2, method="lower")[:, :, None, None]
    centred = np.clip(clips.astype(int) - median + 128, 0, 255).astype(np.uint8)
    apply = jax.jit(plain.apply, static_argnames="train")
    want = np.asarray(apply(variables, jnp.asarray(centred), train=False))
    assert np.isfinite(want).all() and np.ptp(want) > 0

    manifest = export_backbone(variables, model_cfg, (8, 32, 32), "flow", tmp_path / "flow", {"workdir": "w"})
    exported = jax.export.deserialize((tmp_path / "flow" / "feature_extractor.jax_export").read_bytes())
    for x in (clips, shaken):
        np.testing.assert_allclose(np.asarray(exported.call(x)), want, rtol=1e-4, atol=1e-4)
    assert "median" in manifest["input"]["normalisation"]
    assert _metadata(tmp_path / "flow")["centre_flow"] == "true"

    manifest = export_backbone(variables, model_cfg, (8, 32, 32), "rgb", tmp_path / "rgb", {"workdir": "w"})
    exported = jax.export.deserialize((tmp_path / "rgb" / "feature_extractor.jax_export").read_bytes())
    assert np.abs(np.asarray(exported.call(clips)) - np.asarray(exported.call(shaken))).max() > 1e-3
    assert "median" not in manifest["input"]["normalisation"]
    assert _metadata(tmp_path / "rgb")["centre_flow"] == "false"


def _metadata(export_dir):
    with safe_open(str(export_dir / "s3d_torchvision.safetensors"), framework="numpy") as f:
        return f.metadata()
