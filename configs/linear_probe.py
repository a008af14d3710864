"""Linear probe (docs/method.md §6): frozen backbone, L2-normalised feature, BN, linear classifier; SGD
momentum 0.9, lr 0.1, wd 1e-3, 100 epochs, lr x0.1 at 60 and 80; test = softmax averaged over the
dense clips of each video (centre crop; `--config.data.eval_crops=ten` for ten crops). The last
epoch is reported.

    python main.py --config=configs/linear_probe.py:rgb --workdir=runs/eval/linear_ucf_rgb \
        --config.data.dir=data --config.data.name=cvtcl_ucf101/split1 --config.eval.rgb_source=runs/export/rgb

Two-stream (`:two_stream`) trains a probe per view and averages their softmax. The fast variant
for sweeps trains on cached features of the dense centre clips (no augmentation); re-runs in the
same workdir reuse the cache, so only the classifier is trained:

    python main.py --config=configs/linear_probe.py:flow --workdir=runs/eval/linear_sweep \
        --config.data.dir=data \
        --config.data.name=cvtcl_ucf101/split1 --config.eval.flow_source=runs/export/flow \
        --config.linear.cached=True --config.linear.lr=0.05
"""

from configs import default


def get_config(view: str = "rgb"):
    cfg = default.get_config()
    cfg.mode = "linear_probe"
    cfg.eval.view = view
    return cfg
