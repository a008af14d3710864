"""Finetuning (docs/method.md §6): the whole network, dropout 0.9 before the classifier, Adam 1e-3 with the
backbone at x0.1, wd 1e-3; training clips augmented as in pretraining; the linear probe's test
protocol (softmax averaged over dense clips, centre or ten crops).

    python main.py --config=configs/finetune.py:rgb --workdir=runs/eval/finetune_hmdb_rgb \
        --config.data.dir=data \
        --config.data.name=cvtcl_hmdb51/split1 --config.eval.rgb_source=runs/export/rgb \
        --config.finetune.epochs=100

`:two_stream` finetunes both views and averages their softmax. An interrupted run resumes from
WORKDIR/finetune_<view>/checkpoints.
"""

from configs import default


def get_config(view: str = "rgb"):
    cfg = default.get_config()
    cfg.mode = "finetune"
    cfg.eval.view = view
    return cfg
