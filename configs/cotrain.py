"""Co-training of one view with the other view frozen (L_RF + LTCL; 100 epochs, lr x0.1 at 80).

RGB (LTCL on), starting from the RGB init and mining positives with the initialized flow network:

    python main.py --config=configs/cotrain.py --workdir=runs/cotrain1_rgb --config.data.dir=data \
        --config.data.name=cvtcl_ucf101/split1 \
        --config.train.init_from=runs/init_rgb --config.train.other_from=runs/init_flow

Flow (LTCL weight schedule.cotrain_flow_beta = 0, docs/method.md §3; the mode decides it from the view, so
`--config.train.view=flow` does the same), with the RGB network just co-trained:

    python main.py --config=configs/cotrain.py:flow --workdir=runs/cotrain1_flow \
        --config.data.dir=data --config.data.name=cvtcl_ucf101/split1 \
        --config.train.init_from=runs/init_flow --config.train.other_from=runs/cotrain1_rgb

The second cycle starts from the first cycle's workdirs. configs/schedule.py runs all of it.
"""

from configs import default


def get_config(view: str = "rgb"):
    cfg = default.get_config()
    cfg.mode = "cotrain"
    cfg.train.view = view
    return cfg
