"""CoCLR's and torchvision's S3D checkpoints imported (configs/import_weights.py), against PyTorch's
own computation of their networks (tests/fixtures/make_torch_fixtures.py, coclr_reference.npz):
CoCLR's network with its BatchNorm epsilon 1e-5 on flow as CoCLR reads it, torchvision's stock
s3d() with its epsilon 1e-3."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from configs import import_weights as import_config
from cvtcl_jax import checkpoints, modes, optim
from cvtcl_jax.models import encoder_from_config
from cvtcl_jax.models.imported_weights import (
    WeightsError,
    coclr_to_torchvision_names,
    import_checkpoint,
    import_state_dict,
)
from cvtcl_jax.modes.checks import ConfigError
from cvtcl_jax.sharding import make_mesh
from cvtcl_jax.state import new_state
from cvtcl_jax.training import stage as training_stage
from tests import coclr_reference as ref
from tests import tiny_config, torch_files
from tests.conftest import LENGTHS
from tests.pattern_records import write_pattern_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "coclr_reference.npz"
CASE = {name: (seed, clip_fn, clip_seed) for name, seed, clip_fn, clip_seed in ref.CASES}


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


def rel_err(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def import_config_for(path, view, workdir_clip=(16, 64), **weights):
    cfg = import_config.get_config()
    cfg.weights.update(path=str(path), view=view, **weights)
    cfg.data.update(num_frames=workdir_clip[0], crop_size=workdir_clip[1])
    return cfg


def extractor(workdir):
    return jax.export.deserialize((Path(workdir) / "feature_extractor.jax_export").read_bytes())


def test_coclr_names_are_the_ones_pytorch_loads_module_by_module(reference):
    """The torchvision key of every CoCLR tensor, as PyTorch paired the two networks' modules."""
    table = dict(zip(reference["torchvision/coclr_keys"], reference["torchvision/keys"], strict=True))
    table = {k: v for k, v in table.items() if not k.endswith("num_batches_tracked")}
    assert coclr_to_torchvision_names() == table


@pytest.fixture(scope="module")
def flow_state():
    return ref.pretrain_state(CASE["flow"][0])


def _edited(state, drop=(), add=None, change=None):
    drop = set(drop)
    out = {k: v for k, v in state.items() if k not in drop}
    out.update(add or {})
    out.update(change or {})
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            dict(add={"encoder_q.0.Mixed_3b.gating_b0.fc.weight": np.zeros((64, 64), np.float32)}),
            "S3D-G",
        ),
        (
            dict(drop=(f"encoder_q.0.{m}.branch2.1.conv2.weight" for m in ("Mixed_4e", "block4.4"))),
            "lacks 1 tensors",
        ),
        (
            dict(
                change={
                    f"encoder_q.0.{m}.conv.weight": np.zeros((64, 32, 1, 1, 1))
                    for m in ("Conv_2b", "block2.1")
                }
            ),
            "Conv_2b.conv.weight is (64, 32",
        ),
        (dict(add={"encoder_q.0.Mixed_6a.branch0.0.conv.weight": np.zeros(1, np.float32)}), "Mixed_6a"),
        (dict(change={"encoder_q.0.block2.1.bn.bias": np.ones(64, np.float32)}), "different values"),
        (dict(drop=("encoder_q.4.weight",)), "projection head"),
    ],
    ids=["gating", "missing", "misshapen", "foreign", "duplicate_differs", "no_head"],
)
def test_what_is_not_a_coclr_s3d_is_refused_naming_what_differs(flow_state, edit, message):
    with pytest.raises(WeightsError, match=message.replace("(", r"\(")):
        import_state_dict(_edited(flow_state, **edit), "flow")


def test_other_networks_and_files_are_refused():
    resnet = {"encoder_q.0.conv1.weight": np.zeros((64, 3, 3, 7, 7), np.float32), "queue": np.zeros((128, 8))}
    with pytest.raises(WeightsError, match="not CoCLR's S3D"):
        import_state_dict(resnet, "rgb")
    with pytest.raises(WeightsError, match="holds fc, layer1"):
        import_state_dict({"fc.weight": np.zeros(2), "layer1.0.weight": np.zeros(2)}, "rgb")


def test_evaluation_checkpoints_and_dataparallel_prefixes_import_the_same_backbone(flow_state):
    pretrain = import_state_dict(flow_state, "flow")
    prefix = "encoder_q.0."
    evaluation = {
        f"module.backbone.{k[len(prefix) :]}": v for k, v in flow_state.items() if k.startswith(prefix)
    }
    evaluation["module.final_fc.1.weight"] = np.zeros((101, 1024), np.float32)
    imported = import_state_dict(evaluation, "flow")
    assert imported.format == "coclr_eval" and imported.head_dims is None and imported.key_encoder is None
    assert pretrain.format == "coclr_pretrain" and pretrain.head_dims == (1024, 128)
    assert imported.reverse_input_channels and imported.bn_epsilon == 1e-5
    jax.tree.map(
        np.testing.assert_array_equal,
        imported.encoder["params"]["backbone"],
        pretrain.encoder["params"]["backbone"],
    )


def _import(tmp_path, name, save, **weights):
    seed = CASE[name][0] if name in CASE else CASE["rgb"][0]
    path = tmp_path / f"{name}.pth.tar"
    save(ref.checkpoint(seed), path)
    wd = tmp_path / f"imported_{name}"
    modes.run(import_config_for(path, "flow" if name == "flow" else "rgb", **weights), wd)
    return path, wd


def test_coclr_flow_checkpoint_computes_coclrs_features_on_our_flow_layout(tmp_path, reference):
    """A legacy-format CoCLR flow checkpoint: the exported extractor on our (dx, dy, 128) clips
    gives CoCLR's network's features on (128, dy, dx), and the stage checkpoint holds its head and
    key encoder."""
    path, wd = _import(tmp_path, "flow", torch_files.save_legacy)
    _, clip_fn, clip_seed = CASE["flow"]
    clip = clip_fn(clip_seed)
    assert rel_err(extractor(wd).call(clip), reference["flow/features"]) < 1e-4

    manifest = json.loads((wd / "manifest.json").read_text())
    assert manifest["source"]["path"] == str(path) and manifest["source"]["format"] == "coclr_pretrain"
    assert manifest["source"]["epoch"] == 199 and len(manifest["source"]["sha256"]) == 64
    assert manifest["batchnorm_epsilon"] == 1e-5 and manifest["model"]["reverse_input_channels"] is True
    with safe_open(str(wd / "s3d_torchvision.safetensors"), "numpy") as f:
        assert f.metadata()["bn_epsilon"] == "1e-05" and f.metadata()["reverse_input_channels"] == "true"

    info = checkpoints.stage_info(wd)
    assert info["progress"]["view"] == "flow" and info["progress"]["done"]
    model = encoder_from_config(info["config"]["model"])
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), clip[:1], train=False))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    query = checkpoints.restore_encoder(wd, dict(shapes), "encoder")
    features, embeddings = apply(query, clip)
    assert rel_err(embeddings, reference["flow/embeddings"]) < 1e-4
    assert rel_err(features, reference["flow/features"]) < 1e-4
    key_features, _ = apply(checkpoints.restore_encoder(wd, dict(shapes), "ema_encoder"), clip)
    assert rel_err(key_features, reference["flow/key_features"]) < 1e-4


def test_an_import_never_writes_over_a_stage_and_bad_configs_stop_first(tmp_path):
    stage = tmp_path / "stage"
    (stage / checkpoints.CHECKPOINT_DIR).mkdir(parents=True)
    path = tmp_path / "w.pth"
    torch_files.save_zip({"features.0.0.0.weight": np.zeros(1, np.float32)}, path)
    with pytest.raises(ConfigError, match="holds a training stage"):
        modes.run(import_config_for(path, "rgb"), stage)
    with pytest.raises(ConfigError, match="lacks 384 tensors of torchvision's s3d"):
        modes.run(import_config_for(path, "rgb"), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    for change, message in [
        (dict(view=None), "weights.view=None"),
        (dict(path=str(tmp_path / "absent.pth")), "is not a file"),
        (dict(bn_epsilon=0.0), "weights.bn_epsilon=0.0"),
    ]:
        cfg = import_config_for(path, "rgb")
        cfg.weights.update(change)
        with pytest.raises(ConfigError, match=message):
            modes.run(cfg, tmp_path / "out")


@pytest.mark.slow
def test_torchvision_weights_run_with_their_epsilon_and_round_trip_through_our_export(tmp_path, reference):
    """torchvision's state dict (zip format, eps 1e-3 travels with it) computes torchvision's stock
    s3d(); forcing CoCLR's 1e-5 does not; our export's safetensors imports back as it was."""
    coclr = ref.backbone_state(CASE["rgb"][0])
    table = dict(zip(reference["torchvision/keys"], reference["torchvision/coclr_keys"], strict=True))
    state = {str(tv): coclr[str(c)] for tv, c in table.items()}
    state["classifier.1.weight"] = np.zeros((400, 1024, 1, 1, 1), np.float32)
    path = tmp_path / "s3d-d76dad2f.pth"
    torch_files.save_zip(state, path)
    _, clip_fn, clip_seed = CASE["rgb"]
    clip = clip_fn(clip_seed)
    modes.run(import_config_for(path, "rgb"), tmp_path / "tv")
    assert rel_err(extractor(tmp_path / "tv").call(clip), reference["torchvision/features"]) < 1e-4
    again, _ = import_checkpoint(tmp_path / "tv" / "s3d_torchvision.safetensors", "rgb")
    assert again.bn_epsilon == 1e-3 and not again.reverse_input_channels and not again.centre_flow
    # A flow export of a network that centres its input says so, and the import keeps it.
    centred = tmp_path / "centred.safetensors"
    exported = load_file(str(tmp_path / "tv" / "s3d_torchvision.safetensors"))
    save_file(exported, str(centred), {"centre_flow": "true"})
    assert import_checkpoint(centred, "flow")[0].centre_flow
    first, _ = import_checkpoint(path, "rgb")
    jax.tree.map(np.testing.assert_array_equal, again.encoder, first.encoder)

    # Imported again into the same directory with CoCLR's epsilon forced: CoCLR's features.
    modes.run(import_config_for(path, "rgb", bn_epsilon=1e-5), tmp_path / "tv")
    assert rel_err(extractor(tmp_path / "tv").call(clip), reference["torchvision/features"]) > 0.05
    assert rel_err(extractor(tmp_path / "tv").call(clip), reference["rgb/features"]) < 1e-4
    assert checkpoints.stage_info(tmp_path / "tv")["config"]["model"]["bn_epsilon"] == 1e-5


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A two-class pattern dataset and CoCLR's RGB and flow checkpoints imported for its 8x32x32
    clips (the full S3D)."""
    root = tmp_path_factory.mktemp("imported_everywhere")
    write_pattern_dataset(root / "data", LENGTHS, videos_per_shard=3, num_classes=2)
    out = {}
    for view, save in (("rgb", torch_files.save_zip), ("flow", torch_files.save_legacy)):
        path = root / f"coclr_{view}.pth.tar"
        save(ref.checkpoint(CASE[view][0]), path)
        out[view] = root / f"imported_{view}"
        modes.run(import_config_for(path, view, workdir_clip=(8, 32)), out[view])
    return root / "data", out


def full_size(cfg):
    """The tiny test config with CoCLR's network (the imported weights' shapes)."""
    cfg.model.update(width_multiplier=1.0, num_mixed_3=2, num_mixed_4=5, num_mixed_5=2)
    cfg.model.update(head_hidden_dim=1024, embed_dim=128)
    cfg.train.retrieval_every_epochs = 1
    return cfg


@pytest.mark.slow
def test_imported_encoders_evaluate_train_and_re_export_like_ours(imported, tmp_path):
    """Evaluation in both retrieval protocols, the linear probe, finetuning and two streams;
    co-training of flow from both imports (the flow network with its channels reversed, the
    frozen RGB one without); an initialization continued; re-export."""
    data, sources = imported
    evaluation = tiny_config.run_config(data, "retrieval")
    evaluation.eval.update(
        view="two_stream", rgb_source=str(sources["rgb"]), flow_source=str(sources["flow"])
    )
    for coclr_protocol in (False, True):
        evaluation.eval.coclr_protocol = coclr_protocol
        results = modes.run(evaluation, tmp_path / f"retrieval_{coclr_protocol}")
        assert set(results) == {"rgb", "flow", "two_stream"}
        assert results["flow"]["sources"]["flow"]["trained"]["kind"] == "imported"
    evaluation.mode = "linear_probe"
    evaluation.linear.update(epochs=2, decay_epochs=(1,), cached=True)
    assert set(modes.run(evaluation, tmp_path / "linear")) == {"rgb", "flow", "two_stream"}
    evaluation.mode, evaluation.eval.view = "finetune", "flow"
    evaluation.finetune.update(epochs=1, decay_epochs=())
    assert 0 <= modes.run(evaluation, tmp_path / "finetune")["flow"]["metrics"]["top1"] <= 100

    cotrain = full_size(
        tiny_config.run_config(
            data, "cotrain", view="flow", init_from=str(sources["flow"]), other_from=str(sources["rgb"])
        )
    )
    cotrain.schedule.update(cotrain_epochs=1, cotrain_decay_epochs=())
    summary = modes.run(cotrain, tmp_path / "cotrain_flow")
    assert summary["retrieval"] and np.isfinite(summary["final"]["loss"])
    model = checkpoints.stage_info(tmp_path / "cotrain_flow")["config"]["model"]
    assert model["reverse_input_channels"] is True and model["bn_epsilon"] == 1e-5
    stage = modes.training.cotrain_stage(
        cotrain, "cotrain_flow", "flow", cotrain.train.init_from, cotrain.train.other_from
    )
    assert training_stage.other_model_config(cotrain, stage)["reverse_input_channels"] is False

    export = import_config.get_config()
    export.mode = "export"
    export.export.source = str(tmp_path / "cotrain_flow")
    manifest = modes.run(export, tmp_path / "re_exported")
    assert manifest["model"]["reverse_input_channels"] is True and manifest["batchnorm_epsilon"] == 1e-5
    with safe_open(str(tmp_path / "re_exported" / "s3d_torchvision.safetensors"), "numpy") as f:
        assert f.metadata()["reverse_input_channels"] == "true"

    # An initialization continued from CoCLR's RGB weights starts from them exactly (query and,
    # as CoCLR, key encoder), with a fresh optimiser and queue.
    init = full_size(tiny_config.run_config(data, "init", view="rgb", init_from=str(sources["rgb"])))
    modes.MODES["init"].check(init)
    stage = modes.training.init_stage(init, "rgb", init.train.init_from)
    model = encoder_from_config(training_stage.stage_config(init, stage).model)
    optimizer = optim.adam_l2(1e-3, 0.0)
    new = new_state(make_mesh(), model, optimizer, (8, 32, 32, 3), 16, 8, seed=0)
    state = training_stage.start_from(new, stage)  # the full network's initialisation never compiled
    coclr, _ = import_checkpoint(sources["rgb"].parent / "coclr_rgb.pth.tar", "rgb")
    for params in (state.params, state.ema_params):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), coclr.encoder["params"])
    assert int(state.step) == 0 and int(state.queue.fill) == 0
    init.train.init_from = str(sources["flow"])
    with pytest.raises(ConfigError, match="holds a 'flow' encoder"):
        modes.MODES["init"].check(init)
