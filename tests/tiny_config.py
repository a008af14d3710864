"""The demo's small S3D sized for 8 emulated devices and the pattern datasets of the tests.

python main.py --config=tests/tiny_config.py --workdir=DIR --config.data.dir=DATA (a pattern dataset)
"""

from configs import default, demo
from cvtcl_jax.data.dataset_info import prepared_datasets
from tests.pattern_records import PATTERN_NAME


def get_config():
    cfg = demo.get_config()
    cfg.mode = "init"
    del cfg["demo"]
    # The paper's augmentations (the demo's are milder), colour in tf.data as in the demo, so the
    # tests run every augmentation, blur and brightness/contrast jitter included.
    cfg.data.aug = default.get_config().data.aug
    cfg.data.aug.on_device = "none"
    cfg.schedule.cotrain_lr = None  # optim.lr throughout, as the paper (the demo lowers co-training's)
    cfg.report = False  # the report's own tests make theirs
    cfg.global_batch = 8
    cfg.queue_size = 16
    cfg.data.update(shuffle_buffer=16, threads=2, prefetch=1, name=PATTERN_NAME)
    cfg.schedule.update(init_epochs=6, cotrain_cycles=1, cotrain_epochs=2, cotrain_decay_epochs=(1,))
    cfg.train.update(
        log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=3, retrieval_every_epochs=4
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
