"""Nearest-neighbour retrieval (docs/method.md §6): test videos query train videos; R@1/5/10/20.

From a stage workdir (its latest checkpoint) or an exported encoder, on UCF101 split 1:

    python main.py --config=configs/retrieval.py:flow --workdir=runs/eval/retrieval_ucf_flow \
        --config.data.dir=data \
        --config.data.name=cvtcl_ucf101/split1 --config.eval.flow_source=runs/export/flow

Both views fused (`:two_stream`, reports rgb, flow and two_stream) on HMDB51 split 2, with CoCLR's
protocol so the numbers compare with theirs:

    python main.py --config=configs/retrieval.py:two_stream --workdir=runs/eval/retrieval_hmdb \
        --config.data.dir=data --config.data.name=cvtcl_hmdb51/split2 \
        --config.eval.rgb_source=runs/cotrain2_rgb --config.eval.flow_source=runs/cotrain2_flow \
        --config.eval.coclr_protocol=True

`--config.eval.rgb_source=random` gives the random-init baseline.
"""

from configs import default


def get_config(view: str = "rgb"):
    cfg = default.get_config()
    cfg.mode = "retrieval"
    cfg.eval.view = view
    return cfg
