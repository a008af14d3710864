"""The default config carries every number of docs/method.md §2 and builds the core objects."""

import dataclasses

import pytest

from configs.default import get_config
from cvtcl_jax.models import encoder_from_config
from cvtcl_jax.queue import check_queue_size
from cvtcl_jax.steps import ContrastConfig


def test_defaults_are_the_papers_numbers():
    cfg = get_config()
    assert cfg.contrast.momentum == 0.999 and cfg.contrast.tau == 0.07
    assert cfg.queue_size == 2048 and cfg.contrast.top_k == 5
    assert cfg.contrast.alpha == 1 and cfg.contrast.beta == 1
    assert (cfg.data.num_frames, cfg.data.crop_size) == (32, 128)
    assert (cfg.data.num_segments, cfg.data.segment_len) == (4, 8)
    assert cfg.global_batch == 64
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 1e-4)
    assert cfg.schedule.init_epochs == 300 and cfg.schedule.cotrain_cycles == 2
    assert cfg.schedule.cotrain_epochs == 100 and tuple(cfg.schedule.cotrain_decay_epochs) == (80,)
    assert (cfg.model.head_hidden_dim, cfg.model.embed_dim) == (1024, 128)
    check_queue_size(cfg.queue_size, cfg.global_batch)


def test_config_builds_model_and_objective():
    cfg = get_config()
    model = encoder_from_config(cfg.model)
    assert model.embed_dim == 128 and model.bn_group_size == 32
    assert ContrastConfig(**cfg.contrast).use_ltcl
    cfg.model.dtype = "bfloat16"
    assert str(encoder_from_config(cfg.model).dtype) == "bfloat16"
    with pytest.raises(ValueError, match="unknown model config keys"):
        encoder_from_config({**cfg.model, "with_gating": True})


def test_centre_flow_makes_flow_networks_alone_centre_their_input_and_must_be_a_bool():
    from cvtcl_jax.models import backbone_from_config
    from cvtcl_jax.modes.checks import ConfigError, check_weight_settings

    cfg = get_config()
    assert not cfg.model.centre_flow and not encoder_from_config(cfg.model, "flow").centre_motion
    cfg.model.centre_flow = True
    assert encoder_from_config(cfg.model, "flow").centre_motion
    assert backbone_from_config(cfg.model, "flow").centre_motion
    for view in ("rgb", None):
        assert not encoder_from_config(cfg.model, view).centre_motion
        assert not backbone_from_config(cfg.model, view).centre_motion
    with pytest.raises(ConfigError, match="model.centre_flow='yes' must be True or False"):
        check_weight_settings({**cfg.model, "centre_flow": "yes"})


def test_augmentation_defaults_are_spec_5():
    from cvtcl_jax.data.augment import AugmentConfig

    aug = AugmentConfig(**get_config().data.aug)
    assert aug.area_range == (0.2, 1.0) and aug.aspect_range == (0.75, 4 / 3)
    assert (aug.color_jitter_prob, aug.grayscale_prob, aug.blur_prob, aug.flip_prob) == (0.8, 0.2, 0.5, 0.5)
    assert (aug.brightness, aug.contrast, aug.saturation, aug.hue) == (0.4, 0.4, 0.4, 0.1)
    assert aug.blur_sigma == (0.1, 2.0) and not aug.flow_color
    # The dataclass defaults and the config agree, except where the tail of the augmentation runs:
    # the trainer's default is the accelerators, the pipeline's on its own is tf.data.
    assert aug.on_device == "resize" and AugmentConfig().on_device == "none"
    assert aug == dataclasses.replace(AugmentConfig(), on_device="resize")


@pytest.mark.parametrize("flow_beta", [0.0, 0.5])
def test_the_flow_cotraining_runs_take_cotrain_flow_beta_however_the_view_is_chosen(
    tmp_path, monkeypatch, flow_beta
):
    """docs/method.md §3: LTCL on the RGB co-training run only, decided by the view trained: the cotrain mode
    (from configs/cotrain.py:flow, or its RGB file with --config.train.view=flow) and the schedule."""
    from configs import cotrain
    from cvtcl_jax import modes
    from cvtcl_jax.training.stage import contrast_config

    monkeypatch.setattr(
        modes.training, "train_stage", lambda config, workdir, stage, evaluate: stage
    )  # the stage run
    flow_file, view_flag, rgb_file = cotrain.get_config("flow"), cotrain.get_config(), cotrain.get_config()
    view_flag.train.view = "flow"
    for cfg, beta in ((flow_file, flow_beta), (view_flag, flow_beta), (rgb_file, 1.0)):
        cfg.schedule.cotrain_flow_beta = flow_beta
        assert contrast_config(cfg, modes.training.run_cotrain(cfg, tmp_path).beta).beta == beta
    cfg = get_config()
    cfg.schedule.cotrain_flow_beta = flow_beta
    betas = {s.name: contrast_config(cfg, s.beta).beta for s in modes.training.schedule_stages(cfg, tmp_path)}
    assert betas == {
        "init_rgb": 1.0,
        "init_flow": 1.0,
        **{f"cotrain{c}_{v}": 1.0 if v == "rgb" else flow_beta for c in (1, 2) for v in ("rgb", "flow")},
    }


def test_cotrain_lr_sets_the_cotraining_runs_only(tmp_path):
    from cvtcl_jax.modes.training import schedule_stages

    cfg = get_config()
    assert all(stage.lr is None for stage in schedule_stages(cfg, tmp_path))  # optim.lr throughout
    cfg.schedule.cotrain_lr = 5e-4
    lrs = {stage.name: stage.lr for stage in schedule_stages(cfg, tmp_path)}
    assert lrs == {
        "init_rgb": None,
        "init_flow": None,
        **{f"cotrain{c}_{v}": 5e-4 for c in (1, 2) for v in ("rgb", "flow")},
    }


def test_every_protocol_is_one_record_that_the_modes_checks_and_table_read():
    """PROTOCOLS: each protocol a mode, its checks naming settings of its own section, its
    table columns in the schedule's column order."""
    from cvtcl_jax import modes
    from cvtcl_jax.eval.protocols import PROTOCOLS
    from cvtcl_jax.modes import evaluation

    cfg = get_config()
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and name in modes.MODES
        if protocol.section is None:
            assert not (protocol.positive or protocol.non_negative or protocol.fractions)
        for key in (*protocol.positive, *protocol.non_negative, *protocol.fractions):
            assert key in cfg[protocol.section], (name, key)
    table = {"rgb": {"init": {"finetune_top1": 1.0, "R@5": 2.0, "linear_top1": 3.0, "R@1": 4.0}}}
    header = evaluation.format_table(table).splitlines()[0].split()
    assert header == ["view", "stage", "R@1", "R@5", "linear_top1", "finetune_top1"]
