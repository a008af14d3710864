"""Defaults shared by every mode: every number of docs/method.md §2 lives here.

Mode configs (added per mode) start from `get_config()` and override what differs; any value can
also be overridden on the command line, e.g. `--config.contrast.top_k=10`.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    # Set by each mode's config file: init, cotrain, schedule, export, demo, retrieval,
    # linear_probe, finetune.
    cfg.mode = placeholder(str)
    cfg.seed = 0
    # WORKDIR/report.html at the end of a run (and after each stage of a schedule):
    # cvtcl_jax/report.py, `python -m cvtcl_jax.report WORKDIR` for any workdir.
    cfg.report = True

    # S3D + projection head g (docs/method.md §2, 4). bn_group_size: clips per BN statistics group.
    # dtype "bfloat16": bf16 convolutions, float32 parameters, BN statistics, head and losses.
    # remat: recompute activations in the backward pass (less memory, about 1/3 more compute).
    # pool_grad: how max pooling runs, all with the same values and gradient: "separable_slices"
    # (1D pools along W, H, T as elementwise maxima of views, compare-and-pad gradient; fastest on
    # the CPU, half the memory), "separable" (1D reduce-windows), "slices" (the 3D window's views)
    # or "autodiff" (XLA's 3D reduce-window and SelectAndScatter).
    # conv_lowering: "fold" (separable kernels as 2D convs and matmuls), "fold_s2d" (the same with
    # the stem's strided conv by space-to-depth) or "xla3d" (3D convs).
    # bn_epsilon and reverse_input_channels belong to the weights (docs/coming_from_coclr.md): a
    # stage started from other weights, an export and an evaluation take them from those weights.
    # bn_epsilon: 1e-5 (PyTorch's default, CoCLR's); torchvision's s3d weights use 1e-3.
    # reverse_input_channels: reverse the uint8 channels before normalising (CoCLR's flow
    # networks saw the stored (dx, dy, 128) as (128, dy, dx)).
    # centre_flow: flow networks subtract each frame's median flow (the camera's motion where the
    # background fills most of the frame) from their input; RGB networks ignore it (docs/method.md §5).
    cfg.model = ml_collections.ConfigDict(
        dict(
            width_multiplier=1.0,
            num_mixed_3=2,  # Mixed blocks kept per stage: 2, 5, 2 is the paper's network
            num_mixed_4=5,
            num_mixed_5=2,
            bn_group_size=32,
            bn_epsilon=1e-5,
            reverse_input_channels=False,
            centre_flow=False,
            head_hidden_dim=1024,
            embed_dim=128,
            dtype="float32",
            remat=False,
            pool_grad="separable_slices",
            conv_lowering="fold",
        )
    )

    # The objective (docs/method.md §3): temperature, EMA momentum, loss weights, top-K,
    # self-positive dropout.
    # Table 1 ablation: local_weight / lt_weight; Table 2: beta; Table 3: top_k.
    cfg.contrast = ml_collections.ConfigDict(
        dict(
            tau=0.07,
            momentum=0.999,
            alpha=1.0,
            beta=1.0,
            local_weight=1.0,
            lt_weight=1.0,
            top_k=5,
            self_pos_dropout=0.9,
        )
    )
    cfg.queue_size = 2048  # a multiple of the global batch
    cfg.global_batch = 64

    # Data (docs/method.md §5): a TFDS dataset built by data_prep, clips of T x crop^2, LTCL
    # segments (S of L frames).
    cfg.data = ml_collections.ConfigDict(
        dict(
            dir=placeholder(str),  # the TFDS data_dir: the --out_dir of `python -m data_prep.build`
            name=placeholder(str),  # the TFDS dataset <builder>/<config>, e.g. cvtcl_ucf101/split1
            num_frames=32,
            crop_size=128,
            num_segments=4,
            segment_len=8,
            shuffle_buffer=256,  # records; the files are also shuffled every epoch
            threads=placeholder(int),  # tf.data thread pool size; None: one per core
            prefetch=2,  # batches transferred to the devices ahead of the step
            eval_stride=16,  # dense evaluation clips every eval_stride frames (docs/method.md §6)
            eval_crops="center",  # or "ten": five windows and their flips
            ten_crop_scale=0.875,  # side of the ten-crop windows / short side of the frame
        )
    )
    # Augmentations (docs/method.md §5), drawn once per clip; see cvtcl_jax/data/augment.py AugmentConfig.
    cfg.data.aug = ml_collections.ConfigDict(
        dict(
            area_range=(0.2, 1.0),
            aspect_range=(3 / 4, 4 / 3),
            color_jitter_prob=0.8,
            brightness=0.4,
            contrast=0.4,
            saturation=0.4,
            hue=0.1,
            grayscale_prob=0.2,
            blur_prob=0.5,
            blur_sigma=(0.1, 2.0),
            blur_kernel_size=13,
            flip_prob=0.5,
            flow_color=False,  # flow gets crop and flip only
            # What the accelerators do (cvtcl_jax/data/device_augment.py): "resize" (the CPUs only
            # decode each crop window; resize, flip, colour and uint8 rounding on the devices),
            # "color" (colour jitter, grayscale and blur only) or "none" (everything in tf.data:
            # for CPU-only machines such as the demo's, where the devices are the same cores and
            # XLA's code for these is slower than tf.data's). docs/input_pipeline.md.
            on_device="resize",
        )
    )

    # Adam with L2 weight decay added to the gradient; lr x decay_factor at each decay epoch.
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=1e-4, decay_epochs=(), decay_factor=0.1))

    # The paper's schedule: 300 init epochs per view; 2 co-training cycles of RGB 100 + flow 100
    # epochs, each run's lr x0.1 at epoch 80.
    cfg.schedule = ml_collections.ConfigDict(
        dict(
            init_epochs=300,
            cotrain_cycles=2,
            cotrain_epochs=100,
            cotrain_decay_epochs=(80,),
            # The co-training runs' learning rate; None: optim.lr (the paper's single rate).
            cotrain_lr=placeholder(float),
            cotrain_flow_beta=0.0,  # docs/method.md §3: LTCL on the RGB co-training run only
            # Initializations trained elsewhere (a stage workdir, or imported weights such as
            # CoCLR's InfoNCE checkpoints): the schedule skips that view's init stage.
            init_from_rgb=placeholder(str),
            init_from_flow=placeholder(str),
            # Evaluation at the end: of which encoders (random_init, init, cotrain = the last
            # cycle) and with which protocols (retrieval, linear_probe, finetune), on data.name.
            eval_stages=("cotrain",),
            eval_protocols=("retrieval", "linear_probe"),
        )
    )

    # One training run (init / cotrain modes; the schedule mode sets view and sources itself).
    cfg.train = ml_collections.ConfigDict(
        dict(
            view="rgb",  # the view trained
            # cotrain: workdir of this view's previous stage (init or last cycle); init: optional,
            # the encoders to continue from (a stage's, or imported weights).
            init_from=placeholder(str),
            other_from=placeholder(str),  # cotrain: workdir of the other view's stage (its network is frozen)
            # Co-training's start, as CoCLR: the key encoder a copy of the query encoder ("encoder";
            # "ema_encoder": init_from's key encoder), the frozen ranking network the other view's
            # query encoder ("encoder"; "ema_encoder": its key encoder).
            key_from="encoder",
            other_encoder="encoder",
            log_every_steps=50,
            checkpoint_every_steps=500,
            keep_checkpoints=3,
            retrieval_every_epochs=10,  # R@k on a held-out subset (paper Fig. 3); 0 = off
            retrieval_max_videos=512,  # videos per subset for that check (None: all)
        )
    )
    # Resuming a stage with another config (cvtcl_jax/training/resume.py): the keys or sections,
    # comma-separated, allowed to differ from the saved config (e.g. "optim.lr,seed"); logging,
    # evaluation and paths may always differ. The stage's history records what changed.
    cfg.resume = ml_collections.ConfigDict(dict(allow_changes=""))
    # Export of a trained backbone (export mode, and the end of the schedule).
    cfg.export = ml_collections.ConfigDict(
        dict(
            source=placeholder(str),  # a stage's workdir; its latest checkpoint is exported
            encoder="encoder",  # "encoder" (query f_q, used downstream) or "ema_encoder" (key f_k)
        )
    )

    # Evaluation (docs/method.md §6): which encoders, which view; see cvtcl_jax/eval/.
    cfg.eval = ml_collections.ConfigDict(
        dict(
            view="rgb",  # rgb, flow or two_stream (both views fused)
            rgb_source=placeholder(str),  # a stage workdir, an export directory, or "random" (random init)
            flow_source=placeholder(str),
            encoder="encoder",  # of a stage checkpoint: "encoder" (query) or "ema_encoder" (key)
            clip_from_source=True,  # evaluate at the clip size the encoder was trained on
            coclr_protocol=False,  # retrieval: CoCLR's variant (one random gallery clip, mean centring)
            num_pictures=4,  # retrieval: queries pictured with their top-3 neighbours in TensorBoard
        )
    )
    # Linear probe (docs/method.md §6): SGD momentum 0.9, lr 0.1, wd 1e-3, 100 epochs, lr x0.1 at 60 and 80.
    cfg.linear = ml_collections.ConfigDict(
        dict(
            epochs=100,
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-3,
            decay_epochs=(60, 80),
            cached=False,  # True: train on cached dense centre-clip features (fast, for sweeps)
        )
    )
    # Finetuning (docs/method.md §6): Adam 1e-3, backbone lr x0.1, wd 1e-3, dropout 0.9. The epoch count and
    # decay are the linear probe's unless set (docs/method.md leaves them to the config).
    cfg.finetune = ml_collections.ConfigDict(
        dict(epochs=100, lr=1e-3, backbone_lr_mult=0.1, weight_decay=1e-3, dropout=0.9, decay_epochs=(60, 80))
    )
    return cfg
