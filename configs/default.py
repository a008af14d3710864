"""Defaults shared by every mode: every number of SPEC section 2 lives here.

Mode configs (added per mode) start from `get_config()` and override what differs; any value can
also be overridden on the command line, e.g. `--config.contrast.top_k=10`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    # S3D + projection head g (SPEC 2, 4). bn_group_size: clips per BN statistics group.
    cfg.model = ml_collections.ConfigDict(
        dict(
            width_multiplier=1.0,
            num_mixed_4=5,
            bn_group_size=32,
            head_hidden_dim=1024,
            embed_dim=128,
            dtype="float32",
        )
    )

    # The objective (SPEC 3): temperature, EMA momentum, loss weights, top-K, self-positive dropout.
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

    # Clips (SPEC 2, 5): T x H x W and the LTCL segments (S segments of L frames).
    cfg.data = ml_collections.ConfigDict(dict(num_frames=32, crop_size=128, num_segments=4, segment_len=8))

    # Adam with L2 weight decay added to the gradient; lr x decay_factor at each decay epoch.
    cfg.optim = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=1e-4, decay_epochs=(), decay_factor=0.1))

    # The paper's schedule: 300 init epochs per view; 2 co-training cycles of RGB 100 + flow 100
    # epochs, each run's lr x0.1 at epoch 80.
    cfg.schedule = ml_collections.ConfigDict(
        dict(init_epochs=300, cotrain_cycles=2, cotrain_epochs=100, cotrain_decay_epochs=(80,))
    )
    return cfg
