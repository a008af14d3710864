"""The tests' own config: a small S3D sized for 8 emulated devices and the pattern datasets of the
tests, with the paper's augmentations. Its own numbers, so tuning the demo changes no test.

python main.py --config=tests/tiny_config.py --workdir=DIR --config.data.dir=DATA (a pattern dataset)
"""

from configs import default
from cvtcl_jax.data.dataset_info import prepared_datasets
from tests.pattern_records import PATTERN_NAME
from tests.tiny import MODEL_SETTINGS


def get_config():
    cfg = default.get_config()
    cfg.mode = "init"
    cfg.report = False  # the report's own tests make theirs
    cfg.model.update(MODEL_SETTINGS)
    cfg.data.update(
        name=PATTERN_NAME,
        num_frames=8,
        crop_size=32,
        num_segments=2,
        segment_len=8,
        eval_stride=8,
        shuffle_buffer=16,
        threads=2,
        prefetch=1,
    )
    # The paper's augmentations, colour in tf.data, so the tests run every augmentation, blur and
    # brightness/contrast jitter included.
    cfg.data.aug.on_device = "none"
    cfg.global_batch = 8
    cfg.queue_size = 16
    cfg.contrast.update(tau=0.2, momentum=0.9, top_k=3)  # a softer objective for a few videos
    cfg.optim.lr = 3e-3
    cfg.schedule.update(
        init_epochs=6,
        cotrain_cycles=1,
        cotrain_epochs=2,
        # A rate of co-training's own (the paper keeps optim.lr, the default): test_main's cotrain
        # mode run checks that it arrives, and compiles the schedule's step again instead of another.
        cotrain_decay_epochs=(),
        cotrain_lr=5e-4,
        eval_stages=("random_init", "init", "cotrain"),
        eval_protocols=("retrieval", "linear_probe"),
    )
    cfg.linear.cached = True
    cfg.train.update(
        log_every_steps=1,
        checkpoint_every_steps=2,
        keep_checkpoints=3,
        retrieval_every_epochs=4,
        retrieval_max_videos=None,
    )
    return cfg


def run_config(data_dir, mode: str = "init", **train):
    """The tiny config for `mode` on the one dataset in the data_dir `data_dir` (a pattern set, or
    a set data_prep built; the pattern name when it holds none), with train.* overrides."""
    cfg = get_config()
    cfg.mode = mode
    cfg.data.dir = str(data_dir)
    found = prepared_datasets(data_dir)
    if len(found) == 1:  # else the pattern set's name (some tests pass a dir without data)
        cfg.data.name = found[0]
    cfg.train.update(train)
    return cfg
