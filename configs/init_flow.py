"""Initialization of the flow view: InfoNCE + LTCL for schedule.init_epochs (300) epochs.

python main.py --config=configs/init_flow.py --workdir=runs/init_flow --config.data.dir=data \
    --config.data.name=cvtcl_ucf101/split1
"""

from configs import default


def get_config():
    cfg = default.get_config()
    cfg.mode = "init"
    cfg.train.view = "flow"
    return cfg
