"""The paper's whole schedule as resumable stages in one workdir: init RGB, init flow, then
schedule.cotrain_cycles cycles of co-training RGB (flow frozen) and flow (RGB frozen); then both
views' encoders are exported to WORKDIR/export/{rgb,flow}.

    python main.py --config=configs/schedule.py --workdir=runs/cvtcl --config.data.dir=data \
        --config.data.name=cvtcl_ucf101/split1

Stages live in WORKDIR/init_rgb, WORKDIR/init_flow, WORKDIR/cotrain1_rgb, ...; run the same command
again after an interruption and finished stages are skipped, the current one resumes.
"""

from configs import default


def get_config():
    cfg = default.get_config()
    cfg.mode = "schedule"
    return cfg
